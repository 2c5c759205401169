"""Paired comparisons of two prunings, with confidence intervals, from the tidy per-example table.

Two prunings of one model are evaluated on the same examples, so their difference is measured on
pairs: the paired bootstrap (``scipy.stats.bootstrap``, percentile intervals, which stay defined on
0/1 data where BCa can fail) gives the interval, an exact McNemar test (accuracy) or a Wilcoxon
signed-rank test (perplexity, pooled baselines, and the continuous ``p_correct``: the probability on
the gold choice, whose paired differences vary far less than thresholded accuracy's) the p-value,
and the bootstrap standard error the smallest difference the run could have detected.
:func:`rank_correlation` measures how well a criterion orders blocks by what removing them costs
(Spearman's ρ with a window bootstrap). Imports numpy, pandas, scipy and statsmodels only (no
torch), so the book can use it anywhere.

The per-example table has the columns ``model, calibration, method, granularity, K, task, doc_id,
metric, value``; ``method`` also holds the baselines ``last`` and ``random:<seed>``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from companion.analysis.verdicts import Verdict, is_missing
from companion.method import criteria
from companion.names import CHANCE, LAST, PERPLEXITY_TASK, RANDOM, RANDOM_PREFIX, in_mean_accuracy, primary_metric

DENSE = "dense"  # method_b of a comparison against the dense model (K = 0) on the same examples
SETTING = ["model", "calibration", "granularity", "K"]
COLUMNS = SETTING + ["method_a", "method_b", "metric", "diff", "ci_low", "ci_high", "p_value", "n", "se", "mdd",
                     "test"]
POWER = 0.80  # the power at which ``mdd`` (minimal detectable difference) is stated
BOOTSTRAP = "paired bootstrap (percentile)"
TESTS = {"mcnemar": f"{BOOTSTRAP} / exact McNemar", "wilcoxon": f"{BOOTSTRAP} / Wilcoxon signed-rank"}
P_CORRECT = "p_correct"  # the continuous per-example metric of multiple-choice tasks, compared beside accuracy
CELLS = 10_000_000  # resamples × examples evaluated at once, to bound the bootstrap's memory


# ---------------------------------------------------------------- the two paired statistics

def paired_accuracy(a: pd.DataFrame, b: pd.DataFrame, tasks: Sequence[str], confidence: float = 0.95,
                    n_resamples: int = 2000, seed: int = 0,
                    test: Literal["mcnemar", "wilcoxon"] = "mcnemar", metric: str | None = None) -> dict:
    """Accuracy of pruning ``a`` minus that of ``b`` in points (×100): the mean over ``tasks`` of the
    per-task mean difference in each task's primary metric (or in ``metric`` for every task, such as
    ``p_correct``, in probability points), on the doc_ids both sides have.

    ``a`` and ``b`` are the per-example rows of one pruning each. The interval is a paired bootstrap
    over examples; each resample recomputes the mean over tasks of per-task means, so every task keeps
    its weight (a task absent from a resample is left out of that resample's mean). The p-value is an
    exact McNemar test on the pooled 2×2 table of right/wrong pairs (``test="mcnemar"``, 0/1 values
    only) or a Wilcoxon signed-rank test on the per-example differences (``test="wilcoxon"``, for
    values that are not 0/1, such as the seed means of :func:`pool_seeds`). Tasks without common
    examples are left out; with none at all, every number is NaN and ``n`` is 0. If no paired
    difference is non-zero (identical predictions, e.g. the same drop set), the result is diff 0,
    interval 0 to 0, p 1.0, without a bootstrap (scipy rejects such degenerate data). Keys: diff,
    ci_low, ci_high, p_value, n, discordant, se, mdd (points), test.
    """
    if test not in TESTS:
        raise ValueError(f"test must be one of {', '.join(TESTS)}, not {test!r}")
    pairs = [_common(_values(a, task, metric or primary_metric(task)), _values(b, task, metric or primary_metric(task)))
             for task in tasks]
    pairs = [pair for pair in pairs if len(pair)]
    x, y = (np.concatenate([pair[side].to_numpy(float) for pair in pairs]) if pairs else np.empty(0)
            for side in ("a", "b"))
    codes = np.concatenate([np.full(len(pair), i) for i, pair in enumerate(pairs)]) if pairs else np.empty(0, int)
    diff = x - y
    result = _bootstrap((diff, codes), lambda d, c: 100 * _mean_over_tasks(d, c, len(pairs)), diff.any(),
                        confidence, n_resamples, seed)
    p_value = _p_value(diff, lambda: _mcnemar(x, y) if test == "mcnemar" else _wilcoxon(diff))
    return {**result, "p_value": p_value, "discordant": int(np.count_nonzero(diff)), "test": TESTS[test]}


def paired_perplexity(a: pd.DataFrame, b: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 2000,
                      seed: int = 0) -> dict:
    """``log(ppl_a / ppl_b)`` in nats, with ppl = exp(Σ nll / Σ tokens) over the wikitext2_ppl windows
    both sides have: negative where ``a`` has the lower perplexity.

    The interval is a paired bootstrap over windows of this ratio of sums; the p-value a Wilcoxon
    signed-rank test on the per-window differences in NLL per token. If no window differs, the result
    is diff 0, interval 0 to 0, p 1.0 (no bootstrap); with a single window the interval, standard error
    and p-value are NaN (nothing to resample or rank); with none, everything is NaN and ``n`` is 0.
    Keys as :func:`paired_accuracy` (without discordant); se and mdd in nats of log-ratio.
    """
    nll = _common(_values(a, PERPLEXITY_TASK, "nll"), _values(b, PERPLEXITY_TASK, "nll"))
    tokens = _common(_values(a, PERPLEXITY_TASK, "tokens"), _values(b, PERPLEXITY_TASK, "tokens"))
    windows = pd.concat({"nll": nll, "tokens": tokens}, axis=1, join="inner")
    data = tuple(windows[(kind, side)].to_numpy(float) for side in ("a", "b") for kind in ("nll", "tokens"))
    per_token = data[0] / data[1] - data[2] / data[3]
    result = _bootstrap(data, _log_ppl_ratio, per_token.any(), confidence, n_resamples, seed)
    return {**result, "p_value": _p_value(per_token, lambda: _wilcoxon(per_token)), "test": TESTS["wilcoxon"]}


def pool_seeds(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of several prunings (the ``random:<seed>`` drop sets) as one: per (task, metric, doc_id)
    the mean value over the prunings that have it (a sweep evaluates each seed on its own shard of the
    examples, so there each example has one seed's value).

    Against this pool, :func:`paired_accuracy` measures a criterion's accuracy minus the mean of the
    seeds' accuracies, and :func:`paired_perplexity` its log perplexity minus the mean of the seeds'
    log perplexities (the windows' token counts do not depend on the pruning), i.e. the log-ratio to
    the geometric mean of their perplexities.
    """
    return rows.groupby(["task", "metric", "doc_id"])["value"].mean().reset_index()


def pool_random(methods: pd.Series) -> pd.Series:
    """Method names with every random drop set ``random:<seed>`` named ``random`` (their seeds pooled)."""
    return methods.where(~methods.str.startswith(RANDOM_PREFIX), RANDOM)


# ---------------------------------------------------------------- the table of comparisons

def comparisons(examples: pd.DataFrame, pairs: Sequence[tuple[str, str]] | None = None, baselines: bool = True,
                confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (model, calibration, granularity, K, method_a, method_b, metric) with diff (a − b),
    interval, p-value, n, se, mdd and test (columns ``COLUMNS``).

    metric is ``"accuracy"`` (mean over the lm-eval tasks of the setting, in points), where the
    multiple-choice tasks have them ``"p_correct"`` (mean over those tasks of the probability on the
    gold choice, in points; Wilcoxon p-value) and, where wikitext2_ppl rows exist, ``"perplexity"``
    (log-ratio, see :func:`paired_perplexity`). ``pairs``
    defaults to :func:`default_pairs` of the methods present at each setting; method ``"random"``
    stands for the random drop sets pooled over their seeds (:func:`pool_seeds`; p-value by Wilcoxon,
    since the pooled values are not 0/1). K = 0 (the dense model, equal for every method) and pairs
    with a side missing are skipped.
    """
    rows = []
    settings = examples[examples["K"] != 0].groupby(SETTING, sort=True, dropna=False)
    for setting, group in settings:
        for method_a, method_b in pairs or default_pairs(group["method"].unique(), baselines):
            a, b = method_rows(group, method_a), method_rows(group, method_b)
            if a.empty or b.empty:
                continue
            for metric, result in _compare(a, b, RANDOM in (method_a, method_b), confidence, n_resamples, seed):
                rows.append({**dict(zip(SETTING, setting)), "method_a": method_a, "method_b": method_b,
                             "metric": metric, **{key: result[key] for key in COLUMNS[7:]}})
    return pd.DataFrame(rows, columns=COLUMNS)


def calibration_comparisons(examples: pd.DataFrame, first: str, second: str, confidence: float = 0.95,
                            n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The same criterion, granularity and K with the drop order of calibration set ``second`` against
    that of ``first``, paired on the examples both evaluated: rows with ``calibration`` = ``"second vs
    first"``, ``method_a`` = ``method_b`` = the criterion (baselines, which ignore the calibration set,
    are left out)."""
    rows = []
    criteria = examples[(examples["K"] != 0) & (examples["method"] != LAST)
                        & ~examples["method"].str.startswith(RANDOM_PREFIX)]
    for (model, method, granularity, k), group in criteria.groupby(["model", "method", "granularity", "K"]):
        a, b = group[group["calibration"] == second], group[group["calibration"] == first]
        if a.empty or b.empty:
            continue
        for metric, result in _compare(a, b, False, confidence, n_resamples, seed):
            rows.append({"model": model, "calibration": f"{second} vs {first}", "granularity": granularity, "K": k,
                         "method_a": method, "method_b": method, "metric": metric,
                         **{key: result[key] for key in COLUMNS[7:]}})
    return pd.DataFrame(rows, columns=COLUMNS)


def dense_comparisons(examples: pd.DataFrame, confidence: float = 0.95, n_resamples: int = 2000,
                      seed: int = 0) -> pd.DataFrame:
    """Each criterion's pruning, and each baseline's (``last``; ``random``: the seeds pooled), at every
    K > 0 against the dense model (K = 0) of the same model, calibration set and granularity, paired on
    the examples both evaluated: rows with ``method_b`` = ``"dense"``, whose accuracy ``diff`` and
    interval give the retention with its interval, and whose perplexity ``diff`` is the drop set's
    held-out cost (the increase of NLL per token)."""
    rows = []
    pooled = pool_random(examples["method"])
    for (model, calibration, granularity), group in examples.groupby(["model", "calibration", "granularity"]):
        dense = group[group["K"] == 0]
        dense = dense[dense["method"] == dense["method"].iloc[0]] if len(dense) else dense
        pruned_rows = group[group["K"] != 0]
        for (method, k), pruned in pruned_rows.groupby([pooled.loc[pruned_rows.index], "K"]):
            is_random = method == RANDOM
            pruned = pool_seeds(pruned) if is_random else pruned
            for metric, result in _compare(pruned, dense, is_random, confidence, n_resamples, seed) if len(dense) else []:
                rows.append({"model": model, "calibration": calibration, "granularity": granularity, "K": k,
                             "method_a": method, "method_b": DENSE, "metric": metric,
                             **{key: result[key] for key in COLUMNS[7:]}})
    return pd.DataFrame(rows, columns=COLUMNS)


def default_pairs(methods: Iterable[str], baselines: bool = True) -> list[tuple[str, str]]:
    """Every pair of the criteria among ``methods`` (in the registry's order, unknown names after), then,
    with ``baselines``, each criterion against ``last`` and against the pooled ``random`` seeds where
    present."""
    methods = set(methods)
    registered = criteria.names()
    ranked = sorted((m for m in methods if m != LAST and not m.startswith(RANDOM_PREFIX)),
                    key=lambda m: (registered.index(m) if m in registered else len(registered), m))
    chosen = list(itertools.combinations(ranked, 2))
    if baselines:
        present = [LAST] * (LAST in methods) + [RANDOM] * any(m.startswith(RANDOM_PREFIX) for m in methods)
        chosen += [(criterion, baseline) for criterion in ranked for baseline in present]
    return chosen


def rank_correlation(truth: np.ndarray, criterion: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000,
                     seed: int = 0) -> dict:
    """Spearman's ρ over blocks between the window means of ``truth`` (blocks × windows, such as the
    yardstick's NLL increase of each block on each held-out window) and of ``criterion`` (blocks ×
    its own windows, such as ``ppl`` per calibration window; or one value per block), with a
    percentile bootstrap interval that resamples the windows of each side independently (a criterion
    without windows is held fixed). Rows of both sides are the same blocks in the same order.
    Keys: rho, ci_low, ci_high, n_blocks; the interval is NaN with fewer than 2 windows on a resampled
    side or when every resample ties."""
    truth = np.asarray(truth, dtype=float)
    criterion = np.asarray(criterion, dtype=float)
    if truth.ndim != 2 or criterion.ndim not in (1, 2) or len(truth) != len(criterion):
        raise ValueError("truth must be blocks × windows and criterion blocks (× windows), for the same blocks")
    fixed = criterion if criterion.ndim == 1 else None
    samples = (truth,) if fixed is not None else (truth, criterion)

    def statistic(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        means = [np.moveaxis(np.moveaxis(x, axis, -1).mean(-1), 0, -1) for x in resampled]  # (..., blocks)
        if fixed is not None:
            means.append(np.broadcast_to(fixed, means[0].shape))
        return _spearman(*means)

    rho = float(statistic(*samples))
    low = high = math.nan
    if all(x.shape[1] > 1 for x in samples):
        with np.errstate(invalid="ignore", divide="ignore"):
            result = stats.bootstrap(samples, statistic, n_resamples=n_resamples, vectorized=True, axis=-1,
                                     confidence_level=confidence, method="percentile",
                                     random_state=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return {"rho": rho, "ci_low": low, "ci_high": high, "n_blocks": len(truth)}


# ---------------------------------------------------------------- reading the results

def paired_verdict(row: Mapping[str, Any], name_a: str, name_b: str, unit: str = "points",
                   confidence: float = 0.95) -> Verdict:
    """The verdict of a :func:`comparisons` row: who is ahead and by how much if the interval excludes 0,
    else that no difference was detectable, with the interval and the detectable size.

    Categories: ``a_ahead``, ``b_ahead``, ``not_detected``, ``identical`` (the same result on every paired
    example) and ``not_measured`` (the difference or its interval is missing). Numbers: ``diff``,
    ``ci_low``, ``ci_high``, ``mdd`` as in the row (perplexity rows: log ratios a / b), and for
    perplexity ``lower`` (the winner's relative perplexity reduction) where one is ahead.
    """
    diff, low, high, mdd = (row.get(key) for key in ("diff", "ci_low", "ci_high", "mdd"))
    if any(map(is_missing, (diff, low, high))):
        return Verdict("not_measured", "not measured")
    numbers = {"diff": diff, "ci_low": low, "ci_high": high, "mdd": mdd}
    level = f"{confidence:.0%}".replace("%", " %")
    if low == high == diff == 0:
        return Verdict("identical", "no difference: identical results on every paired example", numbers)
    perplexity = row.get("metric") == "perplexity"
    if low > 0 or high < 0:
        a_ahead = high < 0 if perplexity else low > 0
        sign, winner = (1, name_a) if a_ahead else (-1, name_b)
        category = "a_ahead" if a_ahead else "b_ahead"
        if perplexity:
            lo, hi = sorted(1 - math.exp(sign * bound) for bound in (low, high))
            lower = 1 - math.exp(sign * diff)
            text = f"{winner} has {lower:.0%} lower perplexity ({level} CI {lo:.0%} to {hi:.0%})"
            return Verdict(category, text, {**numbers, "lower": lower})
        lo, hi = sorted((sign * low, sign * high))
        return Verdict(category, f"{winner} ahead by {abs(diff):.1f} {unit} ({level} CI {lo:.1f} to {hi:.1f})", numbers)
    if perplexity:
        text = (f"no detectable difference: the {level} CI of the perplexity ratio {name_a}/{name_b} is "
                f"{math.exp(low):.2f} to {math.exp(high):.2f}" + _detectable(mdd, f"{math.expm1(mdd):.0%}"))
    else:
        text = (f"no detectable difference: the {level} CI is {low:.1f} to {high:.1f} {unit}"
                + _detectable(mdd, f"{mdd:.1f}"))
    return Verdict("not_detected", text, numbers)


def verdict(row: Mapping[str, Any], name_a: str, name_b: str, unit: str = "points", confidence: float = 0.95) -> str:
    """The sentence of :func:`paired_verdict`."""
    return paired_verdict(row, name_a, name_b, unit, confidence).text


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (family-wise error over the given tests), for claims that count how many
    settings pass a threshold; NaN stays NaN and does not count as a test."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = ~np.isnan(p)
    if finite.any():
        adjusted[finite] = multipletests(p[finite], method="holm")[1]
    return adjusted


def chance_retention(acc: float, dense: float, chance: float) -> float:
    """How much of the dense model's accuracy above chance a pruning keeps, in %: (acc − chance) /
    (dense − chance) × 100 (all three in one unit); NaN if the dense model is at chance."""
    return (acc - chance) / (dense - chance) * 100 if dense != chance else math.nan


def chance_accuracy(tasks: Iterable[str]) -> float:
    """Mean over ``tasks`` of their chance accuracy (``CHANCE``), the floor of a mean accuracy."""
    tasks = list(tasks)
    unknown = [task for task in tasks if task not in CHANCE]
    if unknown:
        raise ValueError(f"no chance accuracy for {', '.join(unknown)}; known: {', '.join(CHANCE)}")
    return float(np.mean([CHANCE[task] for task in tasks]))


# ---------------------------------------------------------------- helpers

def _values(rows: pd.DataFrame, task: str, metric: str) -> pd.Series:
    """``value`` by doc_id for one task and metric of one pruning's rows."""
    values = rows.loc[(rows["task"] == task) & (rows["metric"] == metric)].set_index("doc_id")["value"]
    if values.index.has_duplicates:
        raise ValueError(f"{task} {metric}: a doc_id occurs twice; pass the rows of one pruning")
    return values


def _common(a: pd.Series, b: pd.Series) -> pd.DataFrame:
    """Columns ``a`` and ``b`` on the doc_ids both have, in doc_id order."""
    return pd.concat({"a": a, "b": b}, axis=1, join="inner").sort_index()


def _bootstrap(data: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray], differs: bool,
               confidence: float, n_resamples: int, seed: int) -> dict:
    """Statistic, percentile interval, standard error and mdd of a paired bootstrap over the examples
    in ``data`` (arrays of equal length). Zeros if no paired example ``differs`` (scipy rejects such
    degenerate data), a NaN interval for a single example, all NaN for none."""
    n = len(data[0])
    if n == 0:
        return {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0, "se": math.nan, "mdd": math.nan}
    if not differs:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": n, "se": 0.0, "mdd": 0.0}
    diff = float(statistic(*data))
    if n == 1:
        return {"diff": diff, "ci_low": math.nan, "ci_high": math.nan, "n": 1, "se": math.nan, "mdd": math.nan}
    result = stats.bootstrap(data, lambda *d, axis=-1: statistic(*(np.moveaxis(x, axis, -1) for x in d)),
                             n_resamples=n_resamples, batch=max(1, CELLS // n), vectorized=True, paired=True,
                             confidence_level=confidence, method="percentile",
                             random_state=np.random.default_rng(seed))
    se = float(result.standard_error)
    z = stats.norm.ppf((1 + confidence) / 2) + stats.norm.ppf(POWER)
    return {"diff": diff, "ci_low": float(result.confidence_interval.low),
            "ci_high": float(result.confidence_interval.high), "n": n, "se": se, "mdd": float(z * se)}


def _p_value(diff: np.ndarray, test: Callable[[], float]) -> float:
    """NaN without examples, 1.0 if no paired difference is non-zero, else ``test()``."""
    if not len(diff):
        return math.nan
    return test() if diff.any() else 1.0


def _mean_over_tasks(diff: np.ndarray, codes: np.ndarray, n_tasks: int) -> np.ndarray:
    """Mean over tasks of the per-task mean of ``diff`` along the last axis, tasks given by ``codes``
    (0 … n_tasks − 1); a task absent from a row (a resample) is left out of that row's mean."""
    lead, n = diff.shape[:-1], diff.shape[-1]
    d, c = diff.reshape(-1, n), codes.reshape(-1, n).astype(np.intp)
    bins = (np.arange(len(d))[:, None] * n_tasks + c).ravel()
    sums = np.bincount(bins, weights=d.ravel(), minlength=len(d) * n_tasks).reshape(-1, n_tasks)
    counts = np.bincount(bins, minlength=len(d) * n_tasks).reshape(-1, n_tasks)
    means = np.divide(sums, counts, out=np.full(sums.shape, np.nan), where=counts > 0)
    return np.nanmean(means, axis=1).reshape(lead)


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's ρ along the last axis (average ranks for ties); NaN where a side is constant."""
    ra, rb = (stats.rankdata(x, axis=-1) for x in (a, b))
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(-1) / np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))


def _log_ppl_ratio(nll_a: np.ndarray, tokens_a: np.ndarray, nll_b: np.ndarray, tokens_b: np.ndarray) -> np.ndarray:
    """log(ppl_a / ppl_b) from the windows along the last axis."""
    return nll_a.sum(-1) / tokens_a.sum(-1) - nll_b.sum(-1) / tokens_b.sum(-1)


def _mcnemar(x: np.ndarray, y: np.ndarray) -> float:
    """Exact McNemar p-value on the 2×2 table of right (1) / wrong (0) pairs."""
    if not np.isin(np.concatenate([x, y]), (0, 1)).all():
        raise ValueError("McNemar needs 0/1 values; use test='wilcoxon' for pooled or graded values")
    a, b = x.astype(bool), y.astype(bool)
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    return float(mcnemar(table, exact=True).pvalue)


def _wilcoxon(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped); NaN below 2."""
    return float(stats.wilcoxon(diff).pvalue) if len(diff) > 1 else math.nan


def method_rows(group: pd.DataFrame, method: str) -> pd.DataFrame:
    """The rows of ``method`` in one setting; for ``"random"``, the random seeds pooled."""
    if method != RANDOM:
        return group[group["method"] == method]
    seeds = group[group["method"].str.startswith(RANDOM_PREFIX)]
    return pool_seeds(seeds) if len(seeds) else seeds


def _compare(a: pd.DataFrame, b: pd.DataFrame, pooled: bool, confidence: float, n_resamples: int,
             seed: int) -> list[tuple[str, dict]]:
    """("accuracy", result) over the tasks of mean accuracy both sides have (multiple choice:
    :func:`companion.names.in_mean_accuracy`), (task, result) for each other lm-eval task (LAMBADA),
    ("p_correct", result) over the tasks with ``p_correct`` on both sides, ("perplexity", result) if
    measured."""
    shared = set(a["task"]) & set(b["task"])
    options = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    test = "wilcoxon" if pooled else "mcnemar"
    results = {}
    mean_tasks = sorted(t for t in shared if in_mean_accuracy(t))
    if mean_tasks:
        results["accuracy"] = paired_accuracy(a, b, mean_tasks, test=test, **options)
    for task in sorted(shared - {PERPLEXITY_TASK} - set(mean_tasks)):  # e.g. LAMBADA, on its own
        results[task] = paired_accuracy(a, b, [task], test=test, **options)
    graded = sorted(set(a.loc[a["metric"] == P_CORRECT, "task"]) & set(b.loc[b["metric"] == P_CORRECT, "task"]))
    if graded:
        results[P_CORRECT] = paired_accuracy(a, b, graded, test="wilcoxon", metric=P_CORRECT, **options)
    if PERPLEXITY_TASK in shared:
        results["perplexity"] = paired_perplexity(a, b, **options)
    return [(metric, result) for metric, result in results.items() if result["n"]]


def _detectable(mdd: float, text: str) -> str:
    return "" if is_missing(mdd) else f" (the run could detect about {text})"
