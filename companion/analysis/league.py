"""Which criterion knows what a block is worth: the criteria league, from stored results only.

The yardstick (:mod:`companion.experiments.yardstick`) measured, for every block, the increase of
held-out negative log-likelihood per token when that block alone is removed. Here each criterion's
block scores are set against it: Spearman's ρ over the prunable blocks of a granularity (a criterion
drops its lowest-scored blocks first and the yardstick's lowest blocks cost least, so ρ = 1 means the
criterion orders blocks exactly by what removing them costs), with a bootstrap interval that resamples
the held-out windows and, where a criterion kept per-window values (the entropy and similarity
criteria per calibration window, ``ppl`` per window), its calibration windows too
(:func:`companion.analysis.comparisons.rank_correlation`). The drop sets themselves are judged by what
they cost on held-out text at each K (the sweep's WikiText-2 test perplexity, as the log ratio to the
dense model's) and by accuracy; verdicts pool the curve over K.

Imports numpy, pandas and scipy only (no torch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from companion.analysis import comparisons as paired
from companion.errors import CompanionError
from companion.method import criteria
from companion.names import ENDPOINTS, LAST, RANDOM, RANDOM_PREFIX

RHO_COLUMNS = ["model", "granularity", "criterion", "rho", "ci_low", "ci_high", "n_blocks", "resampled"]


def yardstick_table(stored: Mapping) -> pd.DataFrame:
    """The tidy yardstick table of a stored ``yardstick.json`` (one row per block and granularity)."""
    return pd.DataFrame(stored["rows"])


def yardstick_deltas(stored: Mapping, granularity: str, blocks: Sequence[int]) -> np.ndarray:
    """The NLL increase per token on each held-out window when each of ``blocks`` is removed alone,
    shape (blocks, windows), from a stored ``yardstick.json``."""
    windows = pd.DataFrame(stored["windows"])
    windows = windows[windows["granularity"] == granularity]
    if windows.empty:
        raise CompanionError(f"the yardstick has no '{granularity}' windows")
    nll = windows.pivot_table(index="block", columns="window", values="nll")
    tokens = windows.pivot_table(index="block", columns="window", values="tokens")
    missing = [b for b in blocks if b not in nll.index]
    if missing:
        raise CompanionError(f"the yardstick has no {granularity} block {missing[0]}")
    base = nll.loc[-1]
    return ((nll.loc[list(blocks)] - base) / tokens.loc[list(blocks)]).to_numpy(float)


def criterion_values(scores: Mapping, criterion: str, granularity: str, blocks: Sequence[int]) -> np.ndarray:
    """A criterion's score of each of ``blocks`` (lowest dropped first): per calibration window, shape
    (blocks, windows), where the scores file kept them (entropy increase, similarity, ``ppl``), else
    one value per block; ``last`` (the reverse-order baseline) scores a block by minus its index."""
    blocks = [int(b) for b in blocks]
    if criterion == LAST:
        return -np.asarray(blocks, dtype=float)
    samples = scores.get("per_sample", {})
    kind = criteria.get(criterion).kind
    if kind == "entropy" and criterion in samples.get("entropy", {}):
        (p_in, o_in), (p_out, o_out) = ENDPOINTS[granularity]
        points = samples["entropy"][criterion]
        return np.asarray([np.subtract(points[p_out][b + o_out], points[p_in][b + o_in]) for b in blocks], float)
    if kind == "similarity" and criterion in samples.get("similarity", {}):
        return np.asarray([samples["similarity"][criterion][granularity][b] for b in blocks], dtype=float)
    details = scores.get("own_passes", {}).get(criterion, {}).get(granularity, {}).get("details", {})
    if "window_delta" in details:
        return np.asarray([details["window_delta"][str(b)] for b in blocks], dtype=float)
    values = {row["layer"]: row["value"] for row in scores["blocks"]
              if row["method"] == criterion and row["granularity"] == granularity}
    missing = [b for b in blocks if b not in values]
    if missing:
        raise CompanionError(f"no '{criterion}' score of {granularity} block {missing[0]} in the scores file")
    return np.asarray([values[b] for b in blocks], dtype=float)


def scored_granularities(scores: Mapping, criterion: str) -> list[str]:
    """The granularities at which the scores file holds ``criterion`` (every one for ``last``)."""
    if criterion == LAST:
        return sorted({row["granularity"] for row in scores["blocks"]})
    return sorted({row["granularity"] for row in scores["blocks"] if row["method"] == criterion})


def rho_table(scores: Mapping, yardstick: Mapping, model: str, names: Iterable[str], blocks: Sequence[int],
              granularities: Sequence[str], n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Spearman's ρ between each criterion of ``names`` and the yardstick over ``blocks`` (the prunable
    ones) at each granularity the criterion was scored at, with its 95 % bootstrap interval (columns
    ``RHO_COLUMNS``; ``resampled`` says which windows the interval resamples)."""
    rows = []
    for granularity in granularities:
        truth = yardstick_deltas(yardstick, granularity, blocks)
        for name in names:
            if granularity not in scored_granularities(scores, name):
                continue
            values = criterion_values(scores, name, granularity, blocks)
            result = paired.rank_correlation(truth, values, n_resamples=n_resamples, seed=seed)
            resampled = "held-out and calibration windows" if values.ndim == 2 else "held-out windows"
            rows.append({"model": model, "granularity": granularity, "criterion": name, "rho": result["rho"],
                         "ci_low": result["ci_low"], "ci_high": result["ci_high"], "n_blocks": result["n_blocks"],
                         "resampled": resampled})
    return pd.DataFrame(rows, columns=RHO_COLUMNS)


def drop_set_costs(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The held-out cost of every drop set: the log ratio of its WikiText-2 test perplexity to the dense
    model's (= the increase of NLL per token) with its paired interval, from the comparisons against
    the dense model (columns model, calibration, granularity, K, method, cost, ci_low, ci_high)."""
    rows = comparisons[(comparisons["method_b"] == paired.DENSE) & (comparisons["metric"] == "perplexity")]
    table = rows.rename(columns={"method_a": "method", "diff": "cost"})
    return table[["model", "calibration", "granularity", "K", "method", "cost", "ci_low", "ci_high"]].reset_index(
        drop=True)


def lowest_cost(costs: pd.DataFrame, methods: Sequence[str]) -> pd.DataFrame:
    """Per (model, calibration, granularity, K) the lowest held-out cost any of ``methods`` reached and
    which one reached it (a post-hoc best: chosen on the same windows it is measured on)."""
    mine = costs[costs["method"].isin(methods)]
    best = mine.loc[mine.groupby(["model", "calibration", "granularity", "K"])["cost"].idxmin()]
    return best.rename(columns={"method": "best", "cost": "best_cost"})[
        ["model", "calibration", "granularity", "K", "best", "best_cost"]].reset_index(drop=True)


def over_k(examples: pd.DataFrame, method: str, ks: Sequence[int]) -> pd.DataFrame:
    """The per-example rows of ``method`` (``random``: the seeds pooled) averaged over ``ks``: one value
    per (task, metric, doc_id), on the examples every K has (the curve's mean height per example)."""
    parts = []
    for k in ks:
        rows = paired.method_rows(examples[examples["K"] == k], method)
        parts.append(rows[["task", "metric", "doc_id", "value"]])
    if not parts:
        return pd.DataFrame(columns=["task", "metric", "doc_id", "value"])
    stacked = pd.concat(parts, ignore_index=True)
    grouped = stacked.groupby(["task", "metric", "doc_id"])["value"].agg(["mean", "count"])
    grouped = grouped[grouped["count"] == len(ks)]
    return grouped["mean"].rename("value").reset_index()


def curve_comparison(examples: pd.DataFrame, method_a: str, method_b: str, tasks: Sequence[str], metric: str,
                     ks: Sequence[int], n_resamples: int = 2000, seed: int = 0) -> dict:
    """``method_a`` minus ``method_b`` averaged over ``ks`` (the mean vertical gap between the two curves,
    i.e. the area between them over the K axis divided by its number of points), in points, on the
    examples both have at every K: the mean over ``tasks`` of per-task means, a paired bootstrap
    interval over examples and a Wilcoxon p-value (the per-example means are not 0/1). ``metric``:
    ``primary`` (each task's accuracy of the mean) or a per-example metric such as ``p_correct``."""
    a, b = over_k(examples, method_a, ks), over_k(examples, method_b, ks)
    return paired.paired_accuracy(a, b, list(tasks), test="wilcoxon", metric=None if metric == "primary" else metric,
                                  n_resamples=n_resamples, seed=seed)


def curve_verdicts(examples: pd.DataFrame, criteria_names: Sequence[str], tasks: Sequence[str], metric: str,
                   best: Mapping[tuple[str, str], str] | None = None, n_resamples: int = 2000) -> pd.DataFrame:
    """Each criterion against the random drop sets, cosine and the best criterion of its (model,
    granularity) (``best``, when given), pooled over every K > 0 of its curve, per (model, calibration,
    granularity): diff, interval, p-value, Holm-adjusted p-value over the whole table (the family of
    curve verdicts), n and the K pooled."""
    rows = []
    curves = examples[examples["K"] > 0]
    for (model, calibration, granularity), group in curves.groupby(["model", "calibration", "granularity"]):
        top = (best or {}).get((model, granularity))
        for name in criteria_names:
            for other in dict.fromkeys([RANDOM, "cosine", top or name]):
                if other == name:
                    continue
                ks = _shared_ks(group, name, other)
                if not ks:
                    continue
                result = curve_comparison(group, name, other, tasks, metric, ks, n_resamples)
                rows.append({"model": model, "calibration": calibration, "granularity": granularity,
                             "method_a": name, "method_b": other, "metric": metric, "ks": " ".join(map(str, ks)),
                             **{k: result[k] for k in ("diff", "ci_low", "ci_high", "p_value", "n", "mdd")}})
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = paired.holm(table["p_value"].to_numpy(float))
        table["verdict"] = [curve_verdict_text(row) for row in table.to_dict("records")]
    return table


def curve_verdict_text(row: Mapping) -> str:
    """The verdict of a :func:`curve_verdicts` row: the paired verdict of its interval, and where the
    interval excludes 0 but the Holm-adjusted p-value is 0.05 or more, that it does not survive the
    adjustment for the number of curve verdicts."""
    text = paired.verdict(row, criteria.short(row["method_a"]), criteria.short(row["method_b"]))
    excludes = row["ci_low"] > 0 or row["ci_high"] < 0
    if excludes and not row["p_holm"] < 0.05:
        text += f", not significant after Holm's adjustment (p = {row['p_holm']:.2g})"
    return text


def _shared_ks(group: pd.DataFrame, a: str, b: str) -> list[int]:
    def ks(method: str) -> set[int]:
        rows = group[group["method"].str.startswith(RANDOM_PREFIX)] if method == RANDOM else \
            group[group["method"] == method]
        return set(rows["K"].unique())

    return sorted(ks(a) & ks(b))


def criterion_cost(scores: Mapping, criterion: str, granularities: Sequence[str]) -> dict:
    """What scoring ``criterion`` cost: for criteria with passes of their own the passes, backward
    passes and seconds summed over ``granularities`` (from the scores file); for the criteria of the
    one hooked pass, that shared pass (``seconds`` NaN: it is not timed per criterion)."""
    runs = scores.get("own_passes", {}).get(criterion)
    if runs is None:
        return {"passes": 1, "backward_passes": 0, "seconds": float("nan"), "note": "one shared forward pass"}
    costs = [runs[g]["cost"] for g in granularities if g in runs]
    return {"passes": sum(c["passes"] for c in costs), "backward_passes": sum(c["backward_passes"] for c in costs),
            "seconds": sum(c["seconds"] for c in costs), "note": "its own passes"}


def prunable_blocks(num_layers: int, protected: Iterable[int]) -> list[int]:
    """The blocks a criterion may drop: every layer index not protected."""
    protected = set(int(p) for p in protected)
    return [b for b in range(num_layers) if b not in protected]


def protected_layers(sweep: pd.DataFrame) -> list[int]:
    """The protected layers recorded in a sweep table (the same for every criterion)."""
    values = sweep["protected"].dropna().astype(str).unique()
    if len(values) != 1:
        raise CompanionError(f"expected one protected-layers rule in the sweep, found {list(values)}")
    return [int(v) for v in values[0].split()]


def league_table(rho: pd.DataFrame, costs: pd.DataFrame, accuracy: pd.DataFrame, graded: pd.DataFrame,
                 heads: Mapping[str, int], compute: pd.DataFrame) -> pd.DataFrame:
    """One row per model, granularity and criterion: ρ with the yardstick and its interval; at the
    headline K (``heads``, per model) the held-out cost of the criterion's drop set (NLL increase per
    token, with its interval), mean accuracy and ``p_correct`` (from
    :func:`companion.analysis.tables.curve_points` tables, with their intervals); and what scoring cost (``compute``: model, criterion, passes,
    backward_passes, seconds). Texts ``a [low, high]`` for reading; the numbers stay in ``rho``."""
    def at_head(table: pd.DataFrame, value: str, method_column: str = "method") -> dict:
        found = {}
        for row in table.to_dict("records"):
            if row["K"] == heads.get(row["model"]):
                found[(row["model"], row["granularity"], row[method_column])] = row
        return found

    cost_at, acc_at, graded_at = at_head(costs, "cost"), at_head(accuracy, "mean"), at_head(graded, "mean")
    spent = {(r["model"], r["criterion"]): r for r in compute.to_dict("records")}
    rows = []
    for r in rho.to_dict("records"):
        key = (r["model"], r["granularity"], r["criterion"])
        row = {"model": r["model"], "granularity": r["granularity"], "criterion": r["criterion"],
               "rho": r["rho"], "rho [95 % CI]": _interval(r["rho"], r["ci_low"], r["ci_high"], 2)}
        cost = cost_at.get(key)
        row["held-out cost at K*"] = _interval(cost["cost"], cost["ci_low"], cost["ci_high"], 3) if cost else ""
        for name, found, scale in (("accuracy at K*", acc_at, 100), ("p_correct at K*", graded_at, 100)):
            hit = found.get(key)
            row[name] = _interval(scale * hit["mean"], scale * hit["ci_low"], scale * hit["ci_high"], 1) if hit else ""
        used = spent.get((r["model"], r["criterion"]))
        row["scoring cost"] = (f"{used['passes']} passes" + (f", {used['backward_passes']} backward"
                                                            if used["backward_passes"] else "")
                               + (f", {used['seconds']:.0f} s" if np.isfinite(used["seconds"]) else ", shared pass")
                               ) if used else "none"
        rows.append(row)
    return pd.DataFrame(rows)


def _interval(value: float, low: float, high: float, digits: int) -> str:
    if not np.isfinite(value):
        return ""
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
