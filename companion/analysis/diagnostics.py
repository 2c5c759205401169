"""Glued numbers of the diagnostics the paper does not have: the hidden states' RMS norm, scale-free
KNN (ours), the bucket estimator's bins and plug-in bias, Rényi's spread against its noise, the model's
parameter shares, and the bytes-per-token view of decoding speed. Torch-free, like the other analysis
modules; each function returns plain values keyed by their glue names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from companion.analysis import tables, verdicts
from companion.method.orders import compression_stage
from companion.model.embedded import EMBEDDED_MODELS, describe_model

NAN = float("nan")
SPEED_SETTINGS = ("device", "dtype", "batch_size", "prompt_len", "new_tokens", "warmup", "repeats", "num_layers")


def model_numbers(scores: dict) -> dict[str, Any]:
    """``model_description`` (the registry's words, with parameter shares when counted),
    ``embedding_share_pct`` and ``layer_share_pct`` (of all parameters; NaN when not counted), and
    ``description_{spec}`` of every embedded model (spec with ``-`` as ``_``) for the book's introduction."""
    provenance = scores["model"]
    counts = provenance.get("parameters")
    shares = {k: 100 * counts[k] / counts["total"] if counts else NAN for k in ("embedding", "layer")}
    return {"model_description": describe_model(provenance["spec"], counts),
            "embedding_share_pct": shares["embedding"], "layer_share_pct": shares["layer"],
            **{f"description_{spec.replace('-', '_')}": entry.description for spec, entry in EMBEDDED_MODELS.items()}}


def norm_numbers(scores: dict) -> dict[str, Any]:
    """``rms_first``/``rms_last`` (RMS norm at the embeddings and after the last layer), ``rms_growth``
    (their ratio), ``rms_knn_spearman`` (rank correlation of the RMS and KNN profiles over boundaries),
    and for scale-free KNN: ``knn_unit_stage_layers``, ``knn_unit_two_stage``, ``knn_unit_knn_spearman_layer``
    (rank correlation of whole-layer ΔH with KNN's)."""
    rms = np.asarray(scores["norms"]["rms"])
    profiles = scores["profiles"]
    return {"rms_first": rms[0], "rms_last": rms[-1], "rms_growth": rms[-1] / rms[0],
            "rms_knn_spearman": tables.rank_correlation(rms, profiles["knn"])["spearman"],
            "knn_unit_stage_layers": compression_stage(profiles["knn_unit"]),
            "knn_unit_two_stage": verdicts.two_stage_verdict(profiles["knn_unit"]),
            "knn_unit_knn_spearman_layer": tables.method_correlation(scores, "knn", "knn_unit", "layer")["spearman"]}


def bucket_numbers(scores: dict) -> dict[str, Any]:
    """``bucket_tokens_per_bin`` (window tokens / bins), ``bucket_bias_mean`` (mean plug-in bias over
    boundaries, nats, negative), ``bucket_bias_range`` (its max − min over boundaries: what it can shift
    a ΔH by) and ``bucket_spread`` (max − min of the plug-in profile)."""
    bias = tables.bucket_bias(scores)
    return {"bucket_tokens_per_bin": tables.tokens_per_bin(scores), "bucket_bias_mean": bias["bias"].mean(),
            "bucket_bias_range": np.ptp(bias["bias"]), "bucket_spread": np.ptp(bias["bucket"])}


def noise_numbers(scores: dict, estimator: str = "renyi") -> dict[str, Any]:
    """``{e}_spread`` (max − min of the mean profile), ``{e}_sem_max`` (largest standard error of a
    boundary's mean), ``{e}_std_median`` (median std over windows) and ``{e}_noise_verdict``."""
    table = tables.spread_vs_noise(scores, estimator)
    spread, sem, std = float(table["spread"].iloc[0]), float(table["sem"].max()), float(table["std"].median())
    return {f"{estimator}_spread": spread, f"{estimator}_sem_max": sem, f"{estimator}_std_median": std,
            f"{estimator}_noise_verdict": verdicts.noise_verdict(spread, sem, std)}


def decode_bytes_numbers(speed: pd.DataFrame, prefix: str = "") -> dict[str, Any]:
    """``{prefix}{g}_decode_bytes_expected``: the decode speedup the bytes read per token predict
    (:func:`~companion.analysis.tables.decode_bytes_speedup`) at the largest K, for attn and layer;
    ``{prefix}dense_gb_per_token`` (weights + KV cache of the dense model, GB) and
    ``{prefix}dense_decode_gbs`` (that times the dense decode rate: the memory traffic achieved, GB/s)."""
    expected = tables.decode_bytes_speedup(speed)
    k_max = speed["K"].max()
    dense = speed[speed["K"] == 0].iloc[0]
    per_token = float(dense["weights_bytes"] + dense["kv_cache_bytes"]) / 1e9
    numbers = {f"{prefix}dense_gb_per_token": per_token, f"{prefix}dense_decode_gbs": per_token * dense["decode_tps"]}
    for g in ("attn", "layer"):
        rows = expected[(speed["granularity"] == g) & (speed["K"] == k_max)]
        numbers[f"{prefix}{g}_decode_bytes_expected"] = float(rows.iloc[0]) if len(rows) else NAN
    return numbers


def speed_setting_numbers(settings: Mapping[str, Any], speed: pd.DataFrame, prefix: str = "gpu_") -> dict[str, Any]:
    """The timing settings of a stored speed file (``settings`` of ``speed.json``) as glue values:
    ``{prefix}device``, ``dtype``, ``batch_size``, ``prompt_len``, ``new_tokens``, ``warmup``, ``repeats``,
    and ``num_layers`` (counted from the KV cache, :func:`~companion.analysis.tables.cache_layers`)."""
    numbers = {key: settings[key] for key in SPEED_SETTINGS if key in settings}
    dtype = str(settings["dtype"]).replace("torch.", "")
    numbers["dtype"] = {"bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)
    numbers["num_layers"] = tables.cache_layers(speed)
    return {f"{prefix}{key}": numbers[key] for key in SPEED_SETTINGS}


def unmeasured(numbers: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The keys of ``numbers`` (with ``prefix``) marked as not measured: NaN for floats, text otherwise,
    so pages citing them still build when a measurement is missing."""
    return {f"{prefix}{key}": NAN if isinstance(value, float) else "not measured" for key, value in numbers.items()}
