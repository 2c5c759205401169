"""Pure functions of results (no model, no plotting): the tables and statistics behind the figures.

Bootstrap bands of entropy profiles, min–max normalisation, ΔH matrices, rank correlations,
drop-set overlaps, sweep tables with mean accuracy, retention and perplexity, and speed tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from companion.analysis.comparisons import chance_accuracy, chance_retention, pool_random
from companion.errors import CompanionError
from companion.method.orders import DropOrder, compression_stage, drop_order
from companion.names import GRANULARITIES, PERPLEXITY_TASK, RANDOM_PREFIX, in_mean_accuracy, primary_metric

# ---------------------------------------------------------------- entropy profiles

def per_sample(scores: dict, estimator: str, point: str = "boundary", kind: str = "entropy") -> np.ndarray:
    """Per-sample values of ``estimator``, shape (points, samples): L+1 boundaries or L mid points.

    ``kind`` is ``entropy`` (an estimator name) or ``norm`` (``rms``: the hidden states' RMS norm).
    """
    try:
        values = scores["per_sample"][kind][estimator][point]
    except KeyError as exc:
        have = ", ".join(sorted(scores.get("per_sample", {}).get(kind, {})))
        raise CompanionError(f"no per-sample '{point}' {kind} values of '{estimator}' in the scores "
                             f"(have: {have})") from exc
    return np.asarray(values, dtype=float)


def window_documents(scores: dict) -> np.ndarray | None:
    """The document each calibration window was cut from (``data.windows``), or None if not recorded."""
    windows = scores.get("data", {}).get("windows")
    return np.asarray([doc for doc, _offset in windows]) if windows else None


def bootstrap_band(values: np.ndarray, groups: Sequence | np.ndarray | None = None, n_boot: int = 1000,
                   level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Percentile cluster-bootstrap band of the mean over samples, for each row of ``values`` (points × samples).

    Windows cut from one document are not independent, so whole clusters are resampled: ``groups``
    gives each sample's document (default: every sample its own). Cluster ids are drawn with
    replacement, all samples of each draw taken, the same draw for every point (the points of one
    sample are paired), ``n_boot`` times. Returns columns ``mean`` (over the original samples), ``lo``
    and ``hi`` (the (1 − level)/2 and (1 + level)/2 quantiles of the bootstrap means); one cluster
    gives lo = hi = mean.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] < 1:
        raise CompanionError(f"expected a (points, samples) array, got shape {values.shape}")
    groups = np.arange(values.shape[1]) if groups is None else np.asarray(groups)
    if groups.shape != (values.shape[1],):
        raise CompanionError(f"{len(groups)} groups for {values.shape[1]} samples")
    mean = values.mean(axis=1)
    ids, cluster = np.unique(groups, return_inverse=True)
    onehot = np.eye(len(ids))[cluster]  # samples × clusters
    if len(ids) == 1:
        return pd.DataFrame({"mean": mean, "lo": mean, "hi": mean})
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    weights = np.apply_along_axis(np.bincount, 1, draws, minlength=len(ids))  # n_boot × clusters
    boot = (values @ onehot @ weights.T) / (weights @ onehot.sum(axis=0))  # (points, n_boot)
    tail = (1 - level) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail], axis=1)
    return pd.DataFrame({"mean": mean, "lo": np.minimum(lo, mean), "hi": np.maximum(hi, mean)})


def profile_band(scores: dict, estimator: str, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 kind: str = "entropy") -> pd.DataFrame:
    """Bootstrap band of ``estimator``'s values at every block boundary (column ``boundary`` 0..L),
    resampling the documents the windows came from (:func:`window_documents`)."""
    band = bootstrap_band(per_sample(scores, estimator, kind=kind), window_documents(scores), n_boot=n_boot,
                          level=level, seed=seed)
    band.insert(0, "boundary", np.arange(len(band)))
    return band


def spread_vs_noise(scores: dict, estimator: str = "renyi") -> pd.DataFrame:
    """Per boundary: the mean over windows, the std over windows and the standard error of the mean
    (std/√windows), beside ``spread``, the max − min of the mean profile across boundaries (every row)."""
    values = per_sample(scores, estimator)
    std = values.std(axis=1, ddof=1) if values.shape[1] > 1 else np.zeros(len(values))
    mean = values.mean(axis=1)
    return pd.DataFrame({"boundary": np.arange(len(values)), "mean": mean, "std": std,
                         "sem": std / np.sqrt(values.shape[1]), "spread": np.ptp(mean)})


def tokens_per_bin(scores: dict, estimator: str = "bucket") -> float:
    """Tokens per histogram bin of the bucket estimator: window length / bins (each window's tokens
    fill one histogram per dimension)."""
    return scores["data"]["seqlen"] / scores["settings"]["params"][estimator]["bins"]


def bucket_bias(scores: dict) -> pd.DataFrame:
    """Per boundary: plug-in bucket entropy, its Miller–Madow correction and the plug-in ``bias``
    (plug-in − corrected ≈ −Σ over dimensions of (m − 1)/(2n) nats: m occupied bins, n tokens)."""
    plug_in, corrected = np.asarray(scores["profiles"]["bucket"]), np.asarray(scores["profiles"]["bucket_mm"])
    return pd.DataFrame({"boundary": np.arange(len(plug_in)), "bucket": plug_in, "bucket_mm": corrected,
                         "bias": plug_in - corrected})


def minmax(values: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Min–max scaling to [0, 1] by the range of ``reference`` (default: ``values`` itself).

    Estimators differ in units and offsets (KNN is scale-dependent, bucket lies in [0, d·log bins]), so
    profiles share one axis only after such a map; a constant reference maps to 0.
    """
    values = np.asarray(values, dtype=float)
    ref = values if reference is None else np.asarray(reference, dtype=float)
    low, span = np.nanmin(ref), np.nanmax(ref) - np.nanmin(ref)
    return (values - low) / span if span > 0 else np.zeros_like(values)


def normalise_band(band: pd.DataFrame, reference: Sequence[float] | np.ndarray | None = None) -> pd.DataFrame:
    """A band with ``mean``, ``lo`` and ``hi`` min–max scaled by the range of its mean profile (or of
    ``reference``, e.g. the mean profiles of several calibration sets together, to share one scale)."""
    out = band.copy()
    ref = band["mean"] if reference is None else reference
    for column in ("mean", "lo", "hi"):
        out[column] = minmax(band[column], ref)
    return out


def stage_end(scores: dict, estimator: str) -> int:
    """The boundary where ``estimator``'s compression stage ends (= number of compression layers)."""
    return compression_stage(scores["profiles"][estimator])


# ---------------------------------------------------------------- block scores

def layer_scores(scores: dict, method: str, granularity: str) -> np.ndarray:
    """``method``'s score of every layer at ``granularity`` (ΔH for entropy, 1 − cos or angular for similarity)."""
    values = np.full(scores["num_layers"], np.nan)
    found = False
    for block in scores["blocks"]:
        if block["method"] == method and block["granularity"] == granularity:
            values[block["layer"]] = block["value"]
            found = True
    if not found:
        raise CompanionError(f"no '{method}' scores at granularity '{granularity}' in the scores file")
    return values


def delta_matrix(scores: dict, method: str = "knn", granularities: Sequence[str] = GRANULARITIES) -> pd.DataFrame:
    """ΔH (or the similarity score) of ``method``, one row per layer and one column per granularity."""
    frame = pd.DataFrame({g: layer_scores(scores, method, g) for g in granularities})
    frame.index.name = "layer"
    return frame


def delta_by_calibration(scores_by_calibration: Mapping[str, dict], method: str = "knn",
                         granularity: str = "layer") -> pd.DataFrame:
    """ΔH of ``method`` at ``granularity``, one row per calibration set and one column per layer
    (the paper's Figure 2)."""
    frame = pd.DataFrame({cal: layer_scores(scores, method, granularity)
                          for cal, scores in scores_by_calibration.items()}).T
    frame.columns.name = "layer"
    frame.index.name = "calibration"
    return frame


def paired_scores(scores: dict, method_x: str, method_y: str, granularities: Sequence[str]) -> pd.DataFrame:
    """Long table (layer, granularity, x, y) of two methods' per-block scores, for scatter plots."""
    parts = [pd.DataFrame({"layer": np.arange(scores["num_layers"]), "granularity": g,
                           "x": layer_scores(scores, method_x, g), "y": layer_scores(scores, method_y, g)})
             for g in granularities]
    return pd.concat(parts, ignore_index=True)


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Spearman's ρ and Kendall's τ (with p-values) between two paired score vectors; NaN pairs dropped."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        nan = float("nan")
        return {"spearman": nan, "spearman_p": nan, "kendall": nan, "kendall_p": nan, "n": int(len(a))}
    rho = stats.spearmanr(a, b)
    tau = stats.kendalltau(a, b)
    return {"spearman": float(rho.statistic), "spearman_p": float(rho.pvalue), "kendall": float(tau.statistic),
            "kendall_p": float(tau.pvalue), "n": int(len(a))}


def method_correlation(scores: dict, method_a: str, method_b: str, granularity: str,
                       layers: Iterable[int] | None = None, scores_b: dict | None = None) -> dict[str, float]:
    """Rank correlation of two methods' per-layer scores at ``granularity`` (optionally over ``layers`` only,
    and with ``method_b`` read from another scores file ``scores_b``, e.g. another calibration set)."""
    a = layer_scores(scores, method_a, granularity)
    b = layer_scores(scores_b if scores_b is not None else scores, method_b, granularity)
    if layers is not None:
        index = sorted(set(layers))
        a, b = a[index], b[index]
    return rank_correlation(a, b)


def correlation_matrix(scores: dict, methods: Sequence[str], granularity: str, kind: str = "spearman") -> pd.DataFrame:
    """Pairwise rank correlations (``spearman`` or ``kendall``) of ``methods`` at ``granularity``."""
    matrix = pd.DataFrame(np.eye(len(methods)), index=list(methods), columns=list(methods))
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            value = method_correlation(scores, a, b, granularity)[kind]
            matrix.loc[a, b] = matrix.loc[b, a] = value
    return matrix


def rank_table(scores: dict, methods: Sequence[str], granularity: str, protect: str = "auto") -> pd.DataFrame:
    """Position of every layer in each method's drop order (1 = dropped first), NaN where protected."""
    table = pd.DataFrame(index=pd.RangeIndex(scores["num_layers"], name="layer"))
    for method in methods:
        order = drop_order(scores, method, granularity, protect)
        column = np.full(scores["num_layers"], np.nan)
        for position, layer in enumerate(order.order, start=1):
            column[layer] = position
        table[method] = column
    return table


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """``|A ∩ B| / |A ∪ B|`` of two sets of blocks; two empty sets count as identical (1)."""
    a, b = set(a), set(b)
    return 1.0 if not a | b else len(a & b) / len(a | b)


def drop_set_overlap(order_a: DropOrder, order_b: DropOrder, ks: Iterable[int] | None = None) -> pd.DataFrame:
    """For each K: the K-block drop sets of two orders, their common blocks and Jaccard overlap.

    ``ks`` defaults to 1 .. the smaller number of prunable blocks; K beyond either order is skipped.
    """
    limit = min(len(order_a.order), len(order_b.order))
    ks = range(1, limit + 1) if ks is None else [k for k in ks if 0 <= k <= limit]
    rows = []
    for k in ks:
        set_a, set_b = order_a.drop_set(k), order_b.drop_set(k)
        rows.append({"K": k, "a": " ".join(map(str, set_a)), "b": " ".join(map(str, set_b)),
                     "common": len(set(set_a) & set(set_b)), "jaccard": jaccard(set_a, set_b)})
    return pd.DataFrame(rows, columns=["K", "a", "b", "common", "jaccard"])


# ---------------------------------------------------------------- sweep tables

KEYS = ["model", "calibration", "method", "granularity", "K"]


def sweep_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Sweep rows as a typed table: K and n integers, value and stderr floats (missing stderr = NaN)."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise CompanionError("the sweep table is empty")
    frame["K"] = frame["K"].astype(int)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    frame["stderr"] = pd.to_numeric(frame["stderr"], errors="coerce").astype(float)
    frame["dropped"] = frame["dropped"].fillna("").astype(str)
    frame["primary"] = frame["primary"].astype(bool)
    return frame


def task_accuracy(sweep: pd.DataFrame) -> pd.DataFrame:
    """The primary accuracy metric of every task (perplexity excluded), one row per (setting, task)."""
    rows = sweep[sweep["primary"] & (sweep["task"] != PERPLEXITY_TASK)]
    return rows[[*KEYS, "dropped", "task", "metric", "value", "stderr", "n"]].reset_index(drop=True)


def _dense_means(acc: pd.DataFrame) -> dict[tuple, float]:
    dense = acc[acc["K"] == 0]
    return {key: float(group["mean"].iloc[0]) for key, group in dense.groupby(["model", "calibration"])}


def mean_accuracy(sweep: pd.DataFrame) -> pd.DataFrame:
    """Mean primary accuracy over the multiple-choice tasks (:func:`companion.names.in_mean_accuracy`;
    LAMBADA and perplexity apart) per (model, calibration, method, granularity, K), with retention.

    ``stderr`` of the mean is sqrt(Σ se²) / n_tasks (tasks independent; NaN if a task has none).
    ``retention`` is 100 × mean / dense mean, the dense model being K = 0 of the same model and
    calibration; ``retention_stderr`` treats the dense mean as exact. ``chance`` is the mean chance
    accuracy of the tasks and ``chance_retention`` = 100 × (mean − chance) / (dense − chance), the share
    of the dense model's accuracy above chance that is kept (0 % = chance). Perplexity is left out.
    """
    tasks = task_accuracy(sweep)
    tasks = tasks[tasks["task"].map(in_mean_accuracy)]
    if tasks.empty:
        raise CompanionError("the sweep has no multiple-choice task (only perplexity or LAMBADA?)")
    rows = []
    for key, group in tasks.groupby(KEYS, sort=True):
        se = group["stderr"].to_numpy(dtype=float)
        n_tasks = len(group)
        rows.append({**dict(zip(KEYS, key)), "dropped": group["dropped"].iloc[0],
                     "mean": float(group["value"].mean()), "stderr": float(np.sqrt(np.sum(se ** 2)) / n_tasks),
                     "n_tasks": n_tasks, "tasks": " ".join(sorted(group["task"]))})
    acc = pd.DataFrame(rows)
    dense = _dense_means(acc)
    base = np.array([dense.get((m, c), np.nan) for m, c in zip(acc["model"], acc["calibration"])])
    acc["retention"] = 100 * acc["mean"] / base
    acc["retention_stderr"] = 100 * acc["stderr"] / base
    acc["chance"] = [chance_accuracy(tasks.split()) for tasks in acc["tasks"]]
    acc["chance_retention"] = [chance_retention(*values) for values in zip(acc["mean"], base, acc["chance"])]
    return acc


def random_band(acc: pd.DataFrame, column: str = "mean") -> pd.DataFrame:
    """The random drop sets pooled per (model, calibration, granularity, K): the mean of ``column`` over
    the ``random:<seed>`` rows of a :func:`mean_accuracy` table, its minimum and maximum, and the seeds."""
    rows = acc[acc["method"].str.startswith(RANDOM_PREFIX)]
    keys = ["model", "calibration", "granularity", "K"]
    band = rows.groupby(keys)[column].agg(["mean", "min", "max", "count"]).reset_index()
    return band.rename(columns={"count": "seeds"})


def perplexity_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """WikiText-2 perplexity per (model, calibration, method, granularity, K); empty if not evaluated."""
    rows = sweep[(sweep["task"] == PERPLEXITY_TASK) & (sweep["metric"] == "perplexity")]
    return rows[[*KEYS, "dropped", "value", "stderr"]].rename(
        columns={"value": "perplexity"}).sort_values(KEYS).reset_index(drop=True)


def dense_accuracy(acc: pd.DataFrame) -> tuple[float, float]:
    """Mean accuracy and its standard error of the dense model (K = 0) in a :func:`mean_accuracy` table."""
    dense = acc[acc["K"] == 0]
    if dense.empty:
        return float("nan"), float("nan")
    return float(dense["mean"].iloc[0]), float(dense["stderr"].iloc[0])


def lookup(table: pd.DataFrame, column: str, **where: Any) -> float:
    """The single value of ``column`` in the rows matching ``where`` (NaN if none)."""
    mask = np.ones(len(table), dtype=bool)
    for key, value in where.items():
        mask &= (table[key] == value).to_numpy()
    values = table.loc[mask, column]
    if len(values) > 1 and values.nunique() > 1:
        raise CompanionError(f"{len(values)} different values of {column} match {where}")
    return float(values.iloc[0]) if len(values) else float("nan")


def mean_retention(acc: pd.DataFrame, method: str, granularity: str, calibration: str | None = None,
                   ks: Iterable[int] | None = None) -> float:
    """Retention averaged over the sweep's K > 0 (one number for how gracefully accuracy decays), or over
    ``ks`` only (to compare methods evaluated at different K on the K they share)."""
    rows = acc[(acc["method"] == method) & (acc["granularity"] == granularity) & (acc["K"] > 0)]
    if ks is not None:
        rows = rows[rows["K"].isin(list(ks))]
    if calibration is not None:
        rows = rows[rows["calibration"] == calibration]
    return float(rows["retention"].mean()) if len(rows) else float("nan")


# ---------------------------------------------------------------- speed

def speed_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Speed rows as a table, with speedup spreads (min/max runs over the dense median)."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise CompanionError("no speed rows")
    frame["dropped"] = [" ".join(map(str, d)) if isinstance(d, list) else str(d) for d in frame["dropped"]]
    for phase in ("prefill", "decode"):
        dense = frame[frame["K"] == 0].set_index("granularity")[f"{phase}_tps"]
        base = frame["granularity"].map(dense).astype(float)
        frame[f"measured_speedup_{phase}_lo"] = frame[f"{phase}_tps_lo"] / base
        frame[f"measured_speedup_{phase}_hi"] = frame[f"{phase}_tps_hi"] / base
    return frame.sort_values(["granularity", "K"]).reset_index(drop=True)


def decode_bytes_speedup(speed: pd.DataFrame) -> pd.Series:
    """The decode speedup predicted by the bytes each generated token reads, per row of a speed table:
    (weights + KV cache) of the dense model over (weights of the kept layers + their KV cache), within
    each granularity. Decoding one token at batch 1 is bound by memory traffic, not FLOPs; the KV cache
    is taken at the end of a run (its largest size), so this slightly overweights it."""
    traffic = speed["weights_bytes"] + speed["kv_cache_bytes"]
    dense = speed[speed["K"] == 0].set_index("granularity")
    base = speed["granularity"].map(dense["weights_bytes"] + dense["kv_cache_bytes"]).astype(float)
    return base / traffic


def cache_layers(speed: pd.DataFrame) -> int:
    """The number of layers holding a KV cache in the dense model, from the attention rows of a speed
    table: dropping K attention sub-layers keeps (L − K)/L of the cache, so L = K / (1 − ratio)."""
    rows = speed[(speed["granularity"] == "attn") & (speed["K"] > 0)]
    if rows.empty:
        raise CompanionError("no attention rows with K > 0 to count the layers from")
    row = rows.iloc[-1]
    dense = float(speed[(speed["granularity"] == "attn") & (speed["K"] == 0)]["kv_cache_bytes_expected"].iloc[0])
    return round(row["K"] / (1 - row["kv_cache_bytes_expected"] / dense))


def speedup_efficiency(measured: float, expected: float) -> float:
    """Share of the FLOP-proportional gain that was measured: (measured − 1) / (expected − 1)."""
    return (measured - 1) / (expected - 1) if expected != 1 else float("nan")




def load_sweep(path: str | Path) -> pd.DataFrame:
    """A sweep table from its ``.json`` (preferred: typed values) or ``.csv`` file."""
    path = Path(path)
    if path.suffix == ".json":
        return sweep_frame(json.loads(path.read_text(encoding="utf-8"))["rows"])
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"dropped": str, "protected": str})
    frame["primary"] = frame["primary"].astype(str).str.lower() == "true"
    return sweep_frame(frame.to_dict("records"))


def load_speed_settings(path: str | Path) -> dict:
    """The timing settings (device, dtype, batch, prompt, new tokens, warm-up, repeats) of a ``speed.json``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["settings"]


def load_speed(path: str | Path) -> pd.DataFrame:
    """The rows of a ``speed.json`` (written by the speed step)."""
    return speed_frame(json.loads(Path(path).read_text(encoding="utf-8"))["rows"])


# ---------------------------------------------------------------- curves from the per-example table


def multiple_choice_tasks(tasks: Iterable[str]) -> list[str]:
    """The tasks among ``tasks`` with a chance level above 0 (multiple choice), in order: those whose
    mean accuracy the paper reports; LAMBADA (chance 0) and perplexity are shown on their own."""
    return [t for t in tasks if in_mean_accuracy(t)]


def curve_points(examples: pd.DataFrame, tasks: Sequence[str], metric: str = "primary",
                 confidence: float = 0.95) -> pd.DataFrame:
    """One row per (model, calibration, method, granularity, K): the mean over ``tasks`` of each task's
    mean per-example ``metric`` (``primary``: each task's metric of the paper's mean, see
    :func:`companion.names.primary_metric`; or e.g. ``p_correct``), its standard error
    √(Σ se²) / n_tasks (tasks independent, se = sd / √n within a task) and the normal ``ci_low`` /
    ``ci_high`` at ``confidence``, ``half_width`` and the examples ``n``; for a single task of 0/1
    values (LAMBADA accuracy) Wilson's interval instead, which stays honest at 0 and 1 (``half_width``
    is then half its width). The random drop sets are pooled into method ``random`` (each seed's shard
    of the examples together: one sample)."""
    rows = examples[examples["task"].isin(tasks)]
    if metric == "primary":
        rows = rows[rows["metric"] == rows["task"].map(primary_metric)]
    else:
        rows = rows[rows["metric"] == metric]
    if rows.empty:
        raise CompanionError(f"no per-example '{metric}' values for the tasks {', '.join(tasks)}")
    rows = rows.assign(method=pool_random(rows["method"]))
    rows = rows.groupby([*KEYS, "task", "doc_id"], sort=True)["value"].mean().reset_index()  # one value per example
    per_task = rows.groupby([*KEYS, "task"], sort=True)["value"].agg(["mean", "var", "count"]).reset_index()
    per_task["se2"] = per_task["var"].fillna(0.0) / per_task["count"]
    grouped = per_task.groupby(KEYS, sort=True)
    table = grouped.agg(mean=("mean", "mean"), se2=("se2", "sum"), n_tasks=("task", "count"),
                        n=("count", "sum")).reset_index()
    table["stderr"] = np.sqrt(table.pop("se2")) / table["n_tasks"]
    z = stats.norm.ppf(0.5 + confidence / 2)
    table["half_width"] = z * table["stderr"]
    table["ci_low"], table["ci_high"] = table["mean"] - table["half_width"], table["mean"] + table["half_width"]
    if len(set(rows["task"])) == 1 and rows["value"].isin((0.0, 1.0)).all():  # one 0/1 task: Wilson's interval
        from statsmodels.stats.proportion import proportion_confint

        hits = np.round(table["mean"] * table["n"]).astype(int)
        low, high = proportion_confint(hits, table["n"], alpha=1 - confidence, method="wilson")
        table["ci_low"], table["ci_high"] = np.asarray(low, float), np.asarray(high, float)
        table["half_width"] = (table["ci_high"] - table["ci_low"]) / 2
    return table
