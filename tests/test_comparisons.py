"""companion.analysis.comparisons on synthetic per-example tables (seeded numpy; no model, no torch)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from companion.analysis import comparisons as cmp
from companion.names import CHANCE

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("piqa", "hellaswag")


def rows(values: np.ndarray, task: str = "piqa", metric: str = "acc", method: str = "knn", K: int = 2,
         doc_ids: np.ndarray | None = None) -> pd.DataFrame:
    """Tidy per-example rows of one pruning, one task and one metric."""
    doc_ids = np.arange(len(values)) if doc_ids is None else doc_ids
    return pd.DataFrame({"model": "m", "calibration": "c", "method": method, "granularity": "layer", "K": K,
                         "task": task, "doc_id": doc_ids, "metric": metric, "value": np.asarray(values, float)})


def accuracy_rows(rng: np.random.Generator, n: int, p: float, method: str = "knn", K: int = 2) -> pd.DataFrame:
    """piqa (acc) and hellaswag (acc, acc_norm, loglik:0) rows with accuracy about ``p``."""
    draw = lambda: (rng.random(n) < p).astype(float)  # noqa: E731
    return pd.concat([rows(draw(), "piqa", "acc", method, K), rows(draw(), "hellaswag", "acc", method, K),
                      rows(draw(), "hellaswag", "acc_norm", method, K),
                      rows(-rng.random(n), "hellaswag", "loglik:0", method, K)])


def ppl_rows(nll: np.ndarray, tokens: np.ndarray, method: str = "knn", K: int = 2) -> pd.DataFrame:
    return pd.concat([rows(nll, cmp.PERPLEXITY_TASK, "nll", method, K),
                      rows(tokens, cmp.PERPLEXITY_TASK, "tokens", method, K)])


def primary(frame: pd.DataFrame, task: str) -> pd.Series:
    metric = "acc_norm" if task == "hellaswag" else "acc"
    return frame[(frame["task"] == task) & (frame["metric"] == metric)].set_index("doc_id")["value"]


def test_paired_accuracy_matches_a_direct_recomputation():
    rng = np.random.default_rng(0)
    a, b = accuracy_rows(rng, 300, 0.7), accuracy_rows(rng, 300, 0.6, "cosine")
    result = cmp.paired_accuracy(a, b, TASKS, n_resamples=500)
    expected = 100 * np.mean([(primary(a, t) - primary(b, t)).mean() for t in TASKS])
    assert result["diff"] == pytest.approx(expected)
    pairs = pd.concat([pd.DataFrame({"a": primary(a, t), "b": primary(b, t)}) for t in TASKS])
    b01 = int(((pairs["a"] == 1) & (pairs["b"] == 0)).sum())
    b10 = int(((pairs["a"] == 0) & (pairs["b"] == 1)).sum())
    assert result["p_value"] == pytest.approx(stats.binomtest(b01, b01 + b10, 0.5).pvalue)
    assert result["n"] == 600 and result["discordant"] == b01 + b10
    assert result["ci_low"] <= result["diff"] <= result["ci_high"]
    assert result["mdd"] == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * result["se"])
    assert result["test"] == "paired bootstrap (percentile) / exact McNemar"


def test_interval_narrows_as_one_over_root_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (200, 800):
        result = cmp.paired_accuracy(accuracy_rows(rng, n, 0.7), accuracy_rows(rng, n, 0.6), TASKS)
        assert result["ci_low"] <= result["diff"] <= result["ci_high"]
        widths.append(result["ci_high"] - result["ci_low"])
    assert 0.35 < widths[1] / widths[0] < 0.7


def test_identical_prunings_give_zero_and_p_one():
    a = accuracy_rows(np.random.default_rng(2), 100, 0.6)
    result = cmp.paired_accuracy(a, a.assign(method="cosine"), TASKS)
    assert (result["diff"], result["ci_low"], result["ci_high"], result["p_value"]) == (0, 0, 0, 1.0)
    assert cmp.paired_verdict({**result, "metric": "accuracy"}, "knn", "cosine").category != "not_measured"


def test_a_clear_difference_is_detected_either_way_round():
    rng = np.random.default_rng(3)
    b_values = (rng.random(400) < 0.6).astype(float)
    a_values = b_values.copy()
    a_values[np.flatnonzero(b_values == 0)[:120]] = 1  # a right where b is wrong on 30 % of the examples
    a, b = rows(a_values), rows(b_values, method="cosine")
    forward = {**cmp.paired_accuracy(a, b, ["piqa"]), "metric": "accuracy"}
    assert forward["ci_low"] > 0 and forward["diff"] == pytest.approx(30)
    ahead = cmp.paired_verdict(forward, "knn", "cosine")
    assert ahead.category == "a_ahead" and ahead.numbers["diff"] == pytest.approx(30.0)
    backward = {**cmp.paired_accuracy(b, a, ["piqa"]), "metric": "accuracy"}
    assert backward["ci_high"] < 0
    text = cmp.verdict(backward, "cosine", "knn")
    lo, hi = -backward["ci_high"], -backward["ci_low"]
    assert text == f"knn ahead by 30.0 points (95 % CI {lo:.1f} to {hi:.1f})"


def test_pairs_on_the_doc_ids_both_sides_have():
    rng = np.random.default_rng(4)
    a = rows((rng.random(200) < 0.7).astype(float))
    b = rows((rng.random(80) < 0.5).astype(float), method="cosine", doc_ids=rng.permutation(200)[:80])
    result = cmp.paired_accuracy(a, b, ["piqa"], n_resamples=500)
    subset = a[a["doc_id"].isin(b["doc_id"])]
    assert result["n"] == 80
    assert result == cmp.paired_accuracy(subset, b, ["piqa"], n_resamples=500)
    assert result["diff"] == pytest.approx(100 * (primary(subset, "piqa") - primary(b, "piqa")).mean())


def test_perplexity_log_ratio_of_sums():
    rng = np.random.default_rng(5)
    tokens = rng.integers(100, 200, 50).astype(float)
    nll_a, nll_b = tokens * rng.normal(3.0, 0.2, 50), tokens * rng.normal(3.2, 0.2, 50)
    a = ppl_rows(nll_a, tokens)
    b = ppl_rows(nll_b[:40], tokens[:40], "cosine")  # b has fewer windows: pairs on the first 40
    result = cmp.paired_perplexity(a, b, n_resamples=500)
    ppl = lambda nll: math.exp(nll[:40].sum() / tokens[:40].sum())  # noqa: E731
    assert result["diff"] == pytest.approx(math.log(ppl(nll_a) / ppl(nll_b)))
    assert result["n"] == 40 and result["ci_low"] <= result["diff"] <= result["ci_high"] < 0
    per_token = nll_a[:40] / tokens[:40] - nll_b[:40] / tokens[:40]
    assert result["p_value"] == pytest.approx(stats.wilcoxon(per_token).pvalue)
    text = cmp.verdict({**result, "metric": "perplexity"}, "knn", "cosine")
    assert text.startswith(f"knn has {1 - math.exp(result['diff']):.0%} lower perplexity (95 % CI ")


def test_perplexity_edge_cases():
    same = cmp.paired_perplexity(ppl_rows(np.array([3.0, 4.0]), np.array([1.0, 1.0])),
                                 ppl_rows(np.array([3.0, 4.0]), np.array([1.0, 1.0]), "cosine"))
    assert (same["diff"], same["ci_low"], same["ci_high"], same["p_value"]) == (0, 0, 0, 1.0)
    single = cmp.paired_perplexity(ppl_rows(np.array([3.0]), np.array([1.0])),
                                   ppl_rows(np.array([4.0]), np.array([1.0]), "cosine"))
    assert single["diff"] == pytest.approx(-1.0) and math.isnan(single["ci_low"]) and math.isnan(single["p_value"])
    assert cmp.paired_verdict({**single, "metric": "perplexity"}, "knn", "cosine").category == "not_measured"


def test_comparisons_table():
    rng = np.random.default_rng(6)
    methods = ["knn", "cosine", "last"] + [f"random:{s}" for s in range(5)]
    tokens = np.full(20, 128.0)
    frames = [frame for K in (0, 2) for m in methods
              for frame in (accuracy_rows(rng, 60, 0.7 if m == "knn" else 0.5, m, K),
                            ppl_rows(tokens * rng.normal(3, 0.1, 20), tokens, m, K))]
    examples = pd.concat(frames, ignore_index=True)
    table = cmp.comparisons(examples, n_resamples=300)
    assert list(table.columns) == cmp.COLUMNS and (table["K"] == 2).all()
    expected = {(a, b, metric) for a, b in [("knn", "cosine"), ("knn", "last"), ("knn", "random"),
                                            ("cosine", "last"), ("cosine", "random")]
                for metric in ("accuracy", "perplexity")}
    assert set(zip(table["method_a"], table["method_b"], table["metric"])) == expected and len(table) == 10

    row = table[(table["method_a"] == "knn") & (table["method_b"] == "random") & (table["metric"] == "accuracy")]
    row = row.iloc[0]
    at_k = examples[examples["K"] == 2]
    accuracy = lambda m: np.mean([primary(at_k[at_k["method"] == m], t).mean() for t in TASKS])  # noqa: E731
    seeds = np.mean([accuracy(f"random:{s}") for s in range(5)])
    assert row["diff"] == pytest.approx(100 * (accuracy("knn") - seeds))
    assert row["test"].endswith("Wilcoxon signed-rank") and row["n"] == 120
    assert cmp.comparisons(examples, pairs=[("knn", "renyi")]).empty


def test_verdict_categories_and_numbers():
    base = {"metric": "accuracy", "diff": 1.0, "ci_low": -0.5, "ci_high": 2.5, "mdd": 3.0}
    none = cmp.paired_verdict(base, "knn", "cosine")
    assert none.category == "not_detected" and none.numbers["mdd"] == 3.0 and none.numbers["ci_low"] == -0.5
    assert cmp.paired_verdict({**base, "diff": math.nan}, "knn", "cosine").category == "not_measured"
    assert cmp.paired_verdict({**base, "ci_low": 0.5}, "knn", "cosine").category == "a_ahead"
    assert cmp.paired_verdict({**base, "diff": -1.0, "ci_high": -0.2}, "knn", "cosine").category == "b_ahead"
    same = {**base, "diff": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert cmp.paired_verdict(same, "knn", "cosine").category == "identical"
    ppl = {"metric": "perplexity", "diff": 0.01, "ci_low": -0.02, "ci_high": 0.04, "mdd": 0.05}
    assert cmp.paired_verdict(ppl, "knn", "cosine").category == "not_detected"
    worse = cmp.paired_verdict({**ppl, "diff": 0.2, "ci_low": 0.1}, "knn", "cosine")  # log(knn / cosine) > 0
    assert worse.category == "b_ahead" and worse.numbers["lower"] == pytest.approx(1 - math.exp(-0.2))
    assert cmp.verdict(base, "knn", "cosine") == none.text
    for diff in np.linspace(-3, 3, 13):
        for row in (base, ppl):
            category = cmp.paired_verdict({**row, "diff": diff, "ci_low": diff - 1, "ci_high": diff + 1}, "a", "b").category
            assert category in {"a_ahead", "b_ahead", "not_detected", "identical"}


def test_holm_and_chance():
    adjusted = cmp.holm([0.01, np.nan, 0.04, 0.03])
    assert math.isnan(adjusted[1])
    assert adjusted[[0, 2, 3]] == pytest.approx([0.03, 0.06, 0.06])
    assert cmp.chance_retention(0.6, 0.8, 0.5) == pytest.approx(100 / 3)
    assert cmp.chance_retention(0.8, 0.8, 0.25) == pytest.approx(100)
    assert math.isnan(cmp.chance_retention(0.5, 0.5, 0.5))
    assert cmp.chance_accuracy(["piqa", "hellaswag", "commonsense_qa"]) == pytest.approx((0.5 + 0.25 + 0.2) / 3)
    assert CHANCE["lambada_openai"] == 0.0
    with pytest.raises(ValueError, match="wikitext2_ppl"):
        cmp.chance_accuracy(["wikitext2_ppl"])


def test_imports_no_torch():
    code = "import sys, companion.analysis.comparisons; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_dense_comparisons_give_the_retention_interval():
    rng = np.random.default_rng(7)
    frames = [accuracy_rows(rng, 60, p, m, K) for m in ("knn", "last", "random:0") for K, p in ((0, 0.7), (2, 0.5))]
    examples = pd.concat(frames, ignore_index=True)
    table = cmp.dense_comparisons(examples, n_resamples=300)
    pairs = set(zip(table["method_a"], table["method_b"], table["K"]))
    assert pairs == {(m, cmp.DENSE, 2) for m in ("knn", "last", "random")}  # the baselines too, the seeds pooled
    row = table[table["method_a"] == "knn"].iloc[0]
    at = lambda K: examples[(examples["method"] == "knn") & (examples["K"] == K)]  # noqa: E731
    expected = 100 * np.mean([primary(at(2), t).mean() - primary(at(0), t).mean() for t in TASKS])
    assert row["diff"] == pytest.approx(expected) and row["ci_low"] <= row["diff"] <= row["ci_high"]


def test_p_correct_is_compared_pairwise_beside_accuracy():
    """A continuous per-example metric: the paired bootstrap of the mean over tasks of per-task mean
    differences, with a Wilcoxon p-value on the per-example differences; a row of its own in the table."""
    rng = np.random.default_rng(7)
    base = {task: rng.beta(2, 2, 80) for task in TASKS}
    frames = []
    for method, shift in (("knn", 0.05), ("cosine", 0.0)):
        for task in TASKS:
            p = np.clip(base[task] + shift + rng.normal(0, 0.05, 80), 0, 1)
            frames += [rows(p, task, "p_correct", method), rows((p > 0.5).astype(float), task, "acc", method)]
        frames.append(rows((rng.random(80) < 0.5).astype(float), "hellaswag", "acc_norm", method))
    a, b = (pd.concat(frames[i * 5:(i + 1) * 5]) for i in range(2))
    result = cmp.paired_accuracy(a, b, TASKS, test="wilcoxon", metric="p_correct", n_resamples=500)
    p_correct = lambda frame, task: frame[(frame["task"] == task) & (frame["metric"] == "p_correct")]  # noqa: E731
    diffs = [p_correct(a, t).set_index("doc_id")["value"] - p_correct(b, t).set_index("doc_id")["value"] for t in TASKS]
    assert result["diff"] == pytest.approx(100 * np.mean([d.mean() for d in diffs]))
    assert result["p_value"] == pytest.approx(stats.wilcoxon(np.concatenate(diffs)).pvalue)
    assert result["ci_low"] < result["diff"] < result["ci_high"] and result["ci_low"] > 0  # a 5-point shift is seen
    assert result["n"] == 160 and result["test"].endswith("Wilcoxon signed-rank")
    table = cmp.comparisons(pd.concat([a, b], ignore_index=True), baselines=False, n_resamples=500)
    assert list(table["metric"]) == ["accuracy", "p_correct"]
    assert table.set_index("metric").loc["p_correct", "diff"] == pytest.approx(result["diff"])


def test_rank_correlation_is_spearman_of_window_means_with_a_bootstrap_interval():
    rng = np.random.default_rng(8)
    worth = np.linspace(0, 3, 12)
    truth = worth[:, None] + rng.normal(0, 0.5, (12, 16))
    criterion = worth[:, None] ** 2 + rng.normal(0, 4.0, (12, 8))
    result = cmp.rank_correlation(truth, criterion, n_resamples=400)
    assert result["rho"] == pytest.approx(stats.spearmanr(truth.mean(1), criterion.mean(1)).statistic)
    assert result["ci_low"] < result["rho"] <= result["ci_high"] <= 1 and result["n_blocks"] == 12
    fixed = cmp.rank_correlation(truth, worth, n_resamples=400)  # one value per block: only the truth resampled
    assert fixed["rho"] == pytest.approx(stats.spearmanr(truth.mean(1), worth).statistic)
    assert fixed["ci_high"] - fixed["ci_low"] < result["ci_high"] - result["ci_low"]
    reversed_ = cmp.rank_correlation(truth, -criterion, n_resamples=400)
    assert reversed_["rho"] == pytest.approx(-result["rho"]) and reversed_["ci_high"] < 0
