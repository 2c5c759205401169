"""The key numbers each notebook publishes, and :func:`glue_values`, which publishes them with
``myst_nb.glue`` (as plain Python values) for the book's prose and summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from companion.analysis.tables import (
    dense_accuracy,
    drop_set_overlap,
    layer_scores,
    lookup,
    mean_retention,
    method_correlation,
    rank_correlation,
    speedup_efficiency,
)
from companion.analysis.verdicts import (
    compare,
    ranking,
    speed_verdict,
    threshold_verdict,
    trend_verdict,
    two_stage_verdict,
    versus,
)
from companion.method.orders import compression_stage, drop_order, headline_k
from companion.names import PERPLEXITY_TASK

HEADLINE_RETENTION = 95.0  # the paper's headline: "95%+" of the dense accuracy kept
STANDARD_ENTROPY = ("knn", "bucket", "renyi")
STANDARD_METHODS = ("knn", "bucket", "renyi", "cosine")
STANDARD_GRANULARITIES = ("attn", "layer")
NAMES = {"knn": "KNN", "bucket": "bucket", "renyi": "Rényi", "cosine": "cosine", "angular": "angular"}


class RunDescription(Protocol):
    """What :func:`run_numbers` reads of a run (a :class:`companion.analysis.runs.Run` has it all); a
    protocol rather than ``Run`` itself, so that the findings import no model code (torch)."""

    model: str
    profile: str
    calibration: str
    calibrations: list[str]
    samples: int
    seqlen: int
    seed: int
    tasks: list[str]
    limit: int | None
    drops: list[int]
    max_drop: int


def run_numbers(run: RunDescription) -> dict[str, Any]:
    """What a run was: model, profile, calibration, sizes, tasks and limits (strings and integers)."""
    return {"model": run.model, "profile": run.profile, "calibration": run.calibration,
            "calibrations": ", ".join(run.calibrations), "samples": run.samples, "seqlen": run.seqlen,
            "seed": run.seed, "tasks": ", ".join(t for t in run.tasks if t != PERPLEXITY_TASK),
            "limit": "all" if run.limit is None else str(run.limit), "drops": ", ".join(map(str, run.drops)),
            "k_max": run.max_drop}


def profile_numbers(scores: dict, estimators: Sequence[str]) -> dict[str, Any]:
    """Entropy-by-depth numbers. Per estimator ``e`` of knn/bucket/renyi: ``{e}_stage_layers`` (layers in
    the compression stage), ``{e}_two_stage`` (verdict), ``{e}_rise`` (H at the last boundary minus the
    minimum, in units of the profile's range), ``{e}_expansion_positive_pct`` (% of expansion-stage layers
    with ΔH > 0), and the depth trend of whole-layer ΔH over the expansion stage: ``{e}_depth_rho``,
    ``{e}_depth_p``, ``{e}_depth_verdict`` (Spearman of ΔH against layer index)."""
    numbers: dict[str, Any] = {"num_layers": scores["num_layers"]}
    for e in STANDARD_ENTROPY:
        if e not in estimators or e not in scores["profiles"]:
            numbers.update({f"{e}_stage_layers": float("nan"), f"{e}_two_stage": "not measured",
                            f"{e}_rise": float("nan"), f"{e}_expansion_positive_pct": float("nan"),
                            f"{e}_depth_rho": float("nan"), f"{e}_depth_p": float("nan"),
                            f"{e}_depth_verdict": "not measured"})
            continue
        prof = scores["profiles"][e]
        stage = compression_stage(prof)
        delta = layer_scores(scores, e, "layer")
        expansion = np.arange(stage, scores["num_layers"])
        trend = rank_correlation(expansion, delta[expansion])
        span = max(prof) - min(prof)
        numbers.update({
            f"{e}_stage_layers": stage, f"{e}_two_stage": two_stage_verdict(prof),
            f"{e}_rise": (prof[-1] - prof[stage]) / span if span > 0 else float("nan"),
            f"{e}_expansion_positive_pct": 100 * float(np.mean(delta[expansion] > 0)),
            f"{e}_depth_rho": trend["spearman"], f"{e}_depth_p": trend["spearman_p"],
            f"{e}_depth_verdict": trend_verdict(trend["spearman"], trend["spearman_p"]),
        })
    return numbers


def accuracy_numbers(acc: pd.DataFrame, ppl: pd.DataFrame, num_layers: int) -> dict[str, Any]:
    """Accuracy-vs-pruning numbers: ``dense_accuracy`` (and ``_stderr``), ``dense_perplexity``, ``k_max``;
    per method ``m`` and granularity ``g`` (knn/bucket/renyi/cosine × attn/layer): ``{m}_{g}_accuracy_max``,
    ``{m}_{g}_retention_max`` (at the largest K), ``{m}_{g}_retention_mean`` (over K > 0),
    ``{m}_{g}_ppl_max``; per granularity ``{g}_knn_vs_cosine`` and ``{g}_bucket_vs_cosine`` (retention at
    the largest K, 2 s.e. rule); the headline: ``headline_k`` (largest K ≤ 37.5% of the layers),
    ``headline_pct``, ``{m}_attn_retention_headline`` and ``{m}_headline_verdict`` (≥ 95%?)."""
    dense, dense_se = dense_accuracy(acc)
    k_max = int(acc["K"].max())
    ks = sorted(acc["K"].unique())
    head = headline_k(ks, num_layers)
    dense_ppl = ppl.loc[ppl["K"] == 0, "perplexity"]
    numbers: dict[str, Any] = {
        "dense_accuracy": dense, "dense_accuracy_stderr": dense_se,
        "dense_perplexity": float(dense_ppl.iloc[0]) if len(dense_ppl) else float("nan"), "k_max": k_max,
        "k_max_pct": 100 * k_max / num_layers, "num_layers": num_layers, "headline_k": head,
        "headline_pct": 100 * head / num_layers, "n_tasks": int(acc["n_tasks"].max()),
    }
    for m in STANDARD_METHODS:
        for g in STANDARD_GRANULARITIES:
            where = {"method": m, "granularity": g, "K": k_max}
            numbers[f"{m}_{g}_accuracy_max"] = lookup(acc, "mean", **where)
            numbers[f"{m}_{g}_retention_max"] = lookup(acc, "retention", **where)
            numbers[f"{m}_{g}_retention_mean"] = mean_retention(acc, m, g)
            numbers[f"{m}_{g}_ppl_max"] = lookup(ppl, "perplexity", **where) if len(ppl) else float("nan")
        numbers[f"{m}_attn_retention_headline"] = lookup(acc, "retention", method=m, granularity="attn", K=head)
        numbers[f"{m}_headline_verdict"] = threshold_verdict(numbers[f"{m}_attn_retention_headline"],
                                                             HEADLINE_RETENTION)
    for g in STANDARD_GRANULARITIES:
        cos = {"method": "cosine", "granularity": g, "K": k_max}
        for m in ("knn", "bucket"):
            where = {"method": m, "granularity": g, "K": k_max}
            numbers[f"{g}_{m}_vs_cosine"] = versus(
                lookup(acc, "retention", **where), lookup(acc, "retention_stderr", **where),
                lookup(acc, "retention", **cos), lookup(acc, "retention_stderr", **cos), NAMES[m], "cosine")
    return numbers


def criteria_numbers(scores: dict, granularities: Sequence[str], k_max: int, method_a: str = "knn",
                     method_b: str = "cosine", protect: str = "auto") -> dict[str, Any]:
    """Entropy-vs-cosine numbers per granularity ``g``: ``spearman_{g}``, ``spearman_p_{g}``, ``kendall_{g}``
    (all layers), ``spearman_prunable_{g}`` (layers outside the entropy's compression stage),
    ``jaccard_{g}_kmax`` (drop sets at the sweep's largest K) and ``jaccard_{g}_mean`` (over all K)."""
    numbers: dict[str, Any] = {}
    for g in granularities:
        order_a, order_b = drop_order(scores, method_a, g, protect), drop_order(scores, method_b, g, protect)
        full = method_correlation(scores, method_a, method_b, g)
        prunable = method_correlation(scores, method_a, method_b, g, layers=order_a.order)
        overlap = drop_set_overlap(order_a, order_b)
        at_max = overlap.loc[overlap["K"] == k_max, "jaccard"]
        numbers.update({f"spearman_{g}": full["spearman"], f"spearman_p_{g}": full["spearman_p"],
                        f"kendall_{g}": full["kendall"], f"spearman_prunable_{g}": prunable["spearman"],
                        f"jaccard_{g}_kmax": float(at_max.iloc[0]) if len(at_max) else float("nan"),
                        f"jaccard_{g}_mean": float(overlap["jaccard"].mean()) if len(overlap) else float("nan")})
    return numbers


def estimator_numbers(scores: dict, acc: pd.DataFrame, estimators: Sequence[str], granularities: Sequence[str],
                      k_max: int, protect: str = "auto") -> dict[str, Any]:
    """Estimator-comparison numbers per granularity ``g``: ``estimator_ranking_{g}`` (by retention averaged
    over K > 0, best first), ``best_estimator_{g}``, ``renyi_last_{g}`` (yes/no), pairwise
    ``spearman_{a}_{b}_{g}`` and ``jaccard_{a}_{b}_{g}_kmax`` for the pairs of knn/bucket/renyi."""
    numbers: dict[str, Any] = {}
    for g in granularities:
        retention = {e: mean_retention(acc, e, g) for e in estimators}
        order = ranking(retention)
        numbers[f"estimator_ranking_{g}"] = order.replace("knn", "KNN").replace("renyi", "Rényi")
        names = order.split(" > ")
        numbers[f"best_estimator_{g}"] = NAMES.get(names[0], names[0])
        numbers[f"renyi_last_{g}"] = ("not measured" if "renyi" not in names
                                      else "yes" if names[-1] == "renyi" else "no")
        for i, a in enumerate(STANDARD_ENTROPY):
            for b in STANDARD_ENTROPY[i + 1:]:
                if a in estimators and b in estimators:
                    numbers[f"spearman_{a}_{b}_{g}"] = method_correlation(scores, a, b, g)["spearman"]
                    overlap = drop_set_overlap(drop_order(scores, a, g, protect), drop_order(scores, b, g, protect),
                                               [k_max])
                    numbers[f"jaccard_{a}_{b}_{g}_kmax"] = (float(overlap["jaccard"].iloc[0]) if len(overlap)
                                                           else float("nan"))
                else:
                    numbers[f"spearman_{a}_{b}_{g}"] = numbers[f"jaccard_{a}_{b}_{g}_kmax"] = float("nan")
        for e in STANDARD_ENTROPY:
            numbers[f"{e}_{g}_retention_mean"] = retention.get(e, float("nan"))
    return numbers


def accuracy_differences(acc: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Mean accuracy on calibration ``second`` minus ``first`` for each (method, granularity, K > 0), with
    the combined standard error and whether the two settings dropped the same blocks."""
    keys = ["method", "granularity", "K"]
    a = acc[(acc["calibration"] == first) & (acc["K"] > 0)].set_index(keys)
    b = acc[(acc["calibration"] == second) & (acc["K"] > 0)].set_index(keys)
    both = a.merge(b, left_index=True, right_index=True, suffixes=("_a", "_b"))
    out = pd.DataFrame({"difference": both["mean_b"] - both["mean_a"],
                        "stderr": np.sqrt(both["stderr_a"] ** 2 + both["stderr_b"] ** 2),
                        "same_blocks": both["dropped_a"] == both["dropped_b"]})
    return out.reset_index()


def calibration_numbers(scores: Mapping[str, dict], acc: pd.DataFrame, methods: Sequence[str],
                        granularities: Sequence[str], k_max: int, protect: str = "auto") -> dict[str, Any]:
    """Calibration-ablation numbers comparing the first two calibration sets ``a`` and ``b``:
    ``calib_a``, ``calib_b``; per method ``m`` (knn/bucket/renyi/cosine) and granularity ``g``:
    ``calib_spearman_{m}_{g}`` (per-layer scores of a vs b) and ``calib_jaccard_{m}_{g}_kmax``;
    ``calib_max_acc_diff`` (largest absolute change of mean accuracy over method × granularity × K > 0, in accuracy
    points, i.e. × 100), ``calib_max_acc_diff_se``, ``calib_beyond_2se`` (how many of ``calib_settings``
    differ by more than 2 s.e.), ``calib_unknown_se`` (how many have no standard error),
    ``calib_same_blocks`` (settings with identical drop sets) and ``calib_verdict`` ("cannot tell" when no
    difference is beyond 2 s.e. but a standard error is missing)."""
    first, second = list(scores)[:2]
    numbers: dict[str, Any] = {"calib_a": first, "calib_b": second}
    for m in STANDARD_METHODS:
        for g in STANDARD_GRANULARITIES:
            if m in methods and g in granularities:
                numbers[f"calib_spearman_{m}_{g}"] = method_correlation(scores[first], m, m, g,
                                                                        scores_b=scores[second])["spearman"]
                overlap = drop_set_overlap(drop_order(scores[first], m, g, protect),
                                           drop_order(scores[second], m, g, protect), [k_max])
                numbers[f"calib_jaccard_{m}_{g}_kmax"] = (float(overlap["jaccard"].iloc[0]) if len(overlap)
                                                         else float("nan"))
            else:
                numbers[f"calib_spearman_{m}_{g}"] = numbers[f"calib_jaccard_{m}_{g}_kmax"] = float("nan")
    diffs = accuracy_differences(acc, first, second)
    if diffs.empty:
        numbers.update(calib_max_acc_diff=float("nan"), calib_max_acc_diff_se=float("nan"), calib_beyond_2se=0,
                       calib_unknown_se=0, calib_settings=0, calib_same_blocks=0, calib_verdict="not measured")
        return numbers
    worst = diffs.loc[diffs["difference"].abs().idxmax()]
    outcomes = [compare(d, se, 0.0, 0.0) for d, se in zip(diffs["difference"], diffs["stderr"])]
    beyond = sum(v in (1, -1) for v in outcomes)
    unknown = outcomes.count(None)
    if beyond:
        verdict = f"changes beyond 2 s.e. in {beyond} of {len(diffs)} settings" + (
            f" ({unknown} without a standard error)" if unknown else "")
    elif unknown:
        verdict = f"cannot tell: {unknown} of {len(diffs)} settings have no standard error"
    else:
        verdict = "barely changes: every difference within 2 s.e."
    numbers.update(calib_max_acc_diff=100 * abs(float(worst["difference"])),
                   calib_max_acc_diff_se=100 * float(worst["stderr"]), calib_beyond_2se=beyond,
                   calib_unknown_se=unknown, calib_settings=len(diffs),
                   calib_same_blocks=int(diffs["same_blocks"].sum()), calib_verdict=verdict)
    return numbers


def speed_numbers(speed: pd.DataFrame) -> dict[str, Any]:
    """Speed numbers at the largest measured K per granularity ``g`` (attn/layer) and phase ``p``
    (prefill/decode): ``{g}_{p}_speedup`` (measured), ``{g}_{p}_expected`` (FLOPs), ``{g}_{p}_efficiency``
    (share of the FLOP-proportional gain), ``{g}_{p}_verdict``; ``{g}_kv_cache_ratio`` (KV cache held,
    pruned / dense), ``{g}_params_ratio``, ``speed_k_max``, ``speed_device``."""
    k_max = int(speed["K"].max())
    numbers: dict[str, Any] = {"speed_k_max": k_max, "speed_device": str(speed["device"].iloc[0])}
    for g in STANDARD_GRANULARITIES:
        rows = speed[(speed["granularity"] == g) & (speed["K"] == k_max)]
        dense = speed[(speed["granularity"] == g) & (speed["K"] == 0)]
        for p in ("prefill", "decode"):
            measured = float(rows[f"measured_speedup_{p}"].iloc[0]) if len(rows) else float("nan")
            expected = float(rows[f"expected_speedup_{p}"].iloc[0]) if len(rows) else float("nan")
            efficiency = speedup_efficiency(measured, expected)
            numbers.update({f"{g}_{p}_speedup": measured, f"{g}_{p}_expected": expected,
                            f"{g}_{p}_efficiency": efficiency, f"{g}_{p}_verdict": speed_verdict(efficiency)})
        numbers[f"{g}_kv_cache_ratio"] = float(rows["kv_cache_ratio"].iloc[0]) if len(rows) else float("nan")
        numbers[f"{g}_params_ratio"] = (float(rows["params"].iloc[0] / dense["params"].iloc[0])
                                        if len(rows) and len(dense) else float("nan"))
    return numbers


# ---------------------------------------------------------------- publishing

def native(value: Any) -> Any:
    """A plain Python value for glue: numpy scalars unwrapped, None and missing as NaN for numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return float(value)
    return value


def glue_values(values: Mapping[str, Any]) -> pd.DataFrame:
    """Publish ``values`` with ``myst_nb.glue`` (not displayed) and return them as a table to show."""
    from myst_nb import glue

    clean = {key: native(value) for key, value in values.items()}
    for key, value in clean.items():
        glue(key, value, display=False)
    shown = [f"{v:.6g}" if isinstance(v, float) else str(v) for v in clean.values()]
    return pd.DataFrame({"key": list(clean), "value": shown}).set_index("key")
