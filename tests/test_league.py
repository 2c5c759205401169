"""The criteria league from stored results: rank correlations with the yardstick, held-out costs of drop
sets, verdicts pooled over K (synthetic results, closed forms)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from companion.analysis import league, tables
from companion.errors import CompanionError


def _yardstick(costs: dict[int, float], windows: int = 6, noise: float = 0.0) -> dict:
    """A stored yardstick whose block b costs ``costs[b]`` nats per token on every window (plus noise)."""
    rng = np.random.default_rng(0)
    rows = []
    for granularity in ("attn", "mlp", "layer"):
        for w in range(windows):
            rows.append({"granularity": granularity, "block": -1, "window": w, "nll": 100.0, "tokens": 10.0})
            for block, cost in costs.items():
                nll = 100.0 + 10.0 * (cost + noise * rng.standard_normal())
                rows.append({"granularity": granularity, "block": block, "window": w, "nll": nll, "tokens": 10.0})
    return {"rows": [], "windows": pd.DataFrame(rows).to_dict("list")}


def _scores(values: dict[str, dict[int, float]], num_layers: int) -> dict:
    blocks = [{"layer": b, "granularity": g, "method": m, "value": v}
              for m, per in values.items() for g in ("attn", "mlp", "layer") for b, v in per.items()]
    return {"num_layers": num_layers, "blocks": blocks, "per_sample": {}}


def test_yardstick_deltas_are_per_token_increases_per_window():
    stored = _yardstick({0: 0.5, 1: 2.0, 2: 1.0}, windows=3)
    deltas = league.yardstick_deltas(stored, "attn", [2, 0])
    assert deltas.shape == (2, 3) and deltas == pytest.approx(np.array([[1.0] * 3, [0.5] * 3]))
    with pytest.raises(CompanionError, match="block 7"):
        league.yardstick_deltas(stored, "attn", [7])


def test_rho_is_one_for_a_criterion_that_orders_blocks_by_their_cost_and_minus_one_reversed():
    costs = {1: 0.1, 2: 0.5, 3: 0.2, 4: 0.9, 5: 0.3}
    stored = _yardstick(costs, noise=0.01)
    scores = _scores({"cosine": costs, "angular": {b: -c for b, c in costs.items()}}, num_layers=7)
    table = league.rho_table(scores, stored, "toy", ["cosine", "angular", league.LAST], [1, 2, 3, 4, 5],
                             ["attn", "layer"], n_resamples=200)
    assert list(table.columns) == league.RHO_COLUMNS
    cosine = table[table["criterion"] == "cosine"]
    assert cosine["rho"].tolist() == pytest.approx([1.0, 1.0]) and (cosine["ci_low"] <= 1.0).all()
    assert table.loc[table["criterion"] == "angular", "rho"].tolist() == pytest.approx([-1.0, -1.0])
    last = table[(table["criterion"] == league.LAST) & (table["granularity"] == "attn")].iloc[0]
    expected = pd.Series([-b for b in costs]).corr(pd.Series(list(costs.values())), method="spearman")
    assert last["rho"] == pytest.approx(expected)  # last-K scores a block by minus its index


def test_entropy_values_per_calibration_window_follow_the_block_endpoints():
    boundary = [[0.0, 1.0], [2.0, 4.0], [5.0, 5.0]]  # entropy at boundaries 0, 1, 2 on two windows
    mid = [[1.0, 1.0], [3.0, 3.0]]
    scores = {"per_sample": {"entropy": {"knn": {"boundary": boundary, "mid": mid}}}, "blocks": []}
    assert league.criterion_values(scores, "knn", "attn", [1]).tolist() == [[1.0, -1.0]]  # mid 1 − boundary 1
    assert league.criterion_values(scores, "knn", "mlp", [0]).tolist() == [[1.0, 3.0]]  # boundary 1 − mid 0
    assert league.criterion_values(scores, "knn", "layer", [0, 1]).tolist() == [[2.0, 3.0], [3.0, 1.0]]


def test_ppl_values_come_per_window_from_its_own_pass():
    scores = {"blocks": [], "own_passes": {"ppl": {"attn": {"details": {"window_delta": {"2": [0.1, 0.3],
                                                                                         "3": [0.5, 0.7]}}}}}}
    assert league.criterion_values(scores, "ppl", "attn", [3, 2]).tolist() == [[0.5, 0.7], [0.1, 0.3]]


def _examples() -> pd.DataFrame:
    """Two tasks, four examples each; knn is right where cosine is wrong on half of them at every K."""
    rows = []
    for k in (0, 1, 2):
        for task in ("piqa", "arc_easy"):
            for doc in range(4):
                for method, value in (("knn", 1.0 if doc < 3 else 0.0), ("cosine", 1.0 if doc < 1 else 0.0),
                                      (f"random:{doc % 2}", 0.5 * (doc % 2))):
                    metric = "acc"
                    rows.append({"model": "m", "calibration": "c4", "granularity": "attn", "K": k, "method": method,
                                 "task": task, "doc_id": doc, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def test_a_curve_comparison_is_the_mean_gap_over_k_in_points():
    examples = _examples()
    result = league.curve_comparison(examples, "knn", "cosine", ["piqa", "arc_easy"], "primary", [1, 2],
                                     n_resamples=200)
    assert result["diff"] == pytest.approx(50.0) and result["n"] == 8
    assert result["ci_low"] <= 50.0 <= result["ci_high"]
    pooled = league.over_k(examples, "random", [1, 2])  # each example has the seed of its shard
    assert sorted(pooled["value"].unique()) == [0.0, 0.5] and len(pooled) == 8


def test_curve_verdicts_cover_random_cosine_and_the_best_with_holm():
    table = league.curve_verdicts(_examples(), ["knn"], ["piqa", "arc_easy"], "primary",
                                  best={("m", "attn"): "cosine"}, n_resamples=200)
    assert set(table["method_b"]) == {"random", "cosine"} and (table["ks"] == "1 2").all()
    assert (table["p_holm"] >= table["p_value"]).all()


def test_curve_points_pool_the_random_seeds_and_carry_normal_intervals():
    points = tables.curve_points(_examples(), ["piqa", "arc_easy"])
    knn = points[(points["method"] == "knn") & (points["K"] == 1)].iloc[0]
    assert knn["mean"] == pytest.approx(0.75) and knn["n"] == 8 and knn["n_tasks"] == 2
    se = np.sqrt(2 * (np.var([1, 1, 1, 0], ddof=1) / 4)) / 2
    assert knn["stderr"] == pytest.approx(se) and knn["half_width"] == pytest.approx(1.959964 * se, rel=1e-5)
    assert set(points["method"]) == {"knn", "cosine", "random"}  # seeds pooled into one curve
    dense = points[(points["method"] == "random") & (points["K"] == 0)].iloc[0]
    assert dense["n"] == 8  # K = 0 is the same dense example under every seed: counted once


def test_drop_set_costs_and_the_lowest_cost_read_the_dense_comparisons():
    comparisons = pd.DataFrame([
        {"model": "m", "calibration": "c4", "granularity": "attn", "K": 2, "method_a": a, "method_b": "dense",
         "metric": "perplexity", "diff": d, "ci_low": d - 0.1, "ci_high": d + 0.1}
        for a, d in (("knn", 0.4), ("cosine", 0.2), ("random", 0.9))])
    costs = league.drop_set_costs(comparisons)
    assert costs.set_index("method")["cost"].to_dict() == {"knn": 0.4, "cosine": 0.2, "random": 0.9}
    best = league.lowest_cost(costs, ["knn", "cosine"]).iloc[0]
    assert best["best"] == "cosine" and best["best_cost"] == pytest.approx(0.2)


def test_league_numbers_name_the_best_criterion_and_where_entropy_stands():
    from companion.analysis import findings

    rho = pd.DataFrame([
        {"model": "m", "granularity": "attn", "criterion": c, "rho": r, "ci_low": lo, "ci_high": hi,
         "n_blocks": 10, "resampled": "held-out windows"}
        for c, r, lo, hi in (("ppl", 0.9, 0.8, 0.95), ("knn", 0.3, 0.1, 0.5), ("cosine", 0.5, 0.2, 0.7),
                             ("last", 0.4, 0.35, 0.45))])
    costs = pd.DataFrame([{"model": "m", "calibration": "c4", "granularity": "attn", "K": 3, "method": m, "cost": c,
                           "ci_low": c - 0.01, "ci_high": c + 0.01}
                          for m, c in (("ppl", 0.05), ("knn", 0.2), ("random", 0.5), ("last", 0.3))])
    numbers = findings.league_numbers(rho, costs, {"m": 3}, ["m"])
    assert numbers["m1_attn_best_rho"].startswith("PPL, ρ = 0.90")
    assert numbers["m1_attn_knn_rho"].endswith("rank 3 of 3")
    assert numbers["m1_attn_knn_verdict"].startswith("PPL follows the yardstick better than KNN entropy")
    assert "last K does as well as KNN" in numbers["m1_attn_knn_verdict"]  # 0.4 lies inside KNN's interval
    assert numbers["m1_attn_best_cost"].startswith("PPL, 0.050") and "random drop sets 0.500" in numbers[
        "m1_attn_best_cost"]
    assert numbers["m1_attn_knn_cell"] == "0.30 [0.10, 0.50]; cost 0.20" and numbers["m1_attn_taylor_cell"] == "–"
    assert numbers["m2_model"] == "not measured" and numbers["m2_layer_best_rho"] == "not measured"


def test_a_single_zero_one_task_gets_wilson_intervals_that_stay_informative_at_zero():
    rows = pd.DataFrame([{"model": "m", "calibration": "c4", "granularity": "attn", "K": 2, "method": "knn",
                          "task": "lambada_openai", "doc_id": d, "metric": "acc", "value": 0.0} for d in range(20)])
    point = tables.curve_points(rows, ["lambada_openai"]).iloc[0]
    assert point["mean"] == 0 and point["ci_low"] == pytest.approx(0, abs=1e-12)
    assert point["ci_high"] == pytest.approx(0.1611, abs=1e-3)  # Wilson: z² / (n + z²) at 0 successes of 20


def test_the_league_figure_draws_each_drop_set_curve_once():
    from companion.analysis import figures

    rho = pd.DataFrame([{"model": "m", "granularity": "attn", "criterion": c, "rho": r, "ci_low": r - 0.1,
                         "ci_high": r + 0.1} for c, r in (("knn", 0.3), ("cosine", 0.8), ("last", -0.2))])
    costs = pd.DataFrame([{"model": "m", "calibration": "c4", "granularity": "attn", "K": k, "method": m,
                           "cost": 0.1 * k, "ci_low": 0.1 * k - 0.05, "ci_high": 0.1 * k + 0.05}
                          for m in ("knn", "cosine", "random", "last") for k in (1, 2)])
    fig = figures.league_figure(rho, costs, methods=["knn", "cosine", "last"], granularities=["attn"],
                                title="t", caption="c")
    labels = fig.axes[1].get_legend_handles_labels()[1]
    assert len(labels) == 4 and len(set(labels)) == 4
