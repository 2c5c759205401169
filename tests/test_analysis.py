"""Tables, verdicts, findings and figures on hand-made scores and sweep tables (no model)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from companion.analysis import diagnostics, figures, findings, tables, verdicts
from companion.errors import CompanionError
from companion.method import orders
from companion.method.orders import DropOrder, drop_order

LAYERS = 6


def fake_scores(knn_attn=(5.0, 4.0, 0.5, 0.1, 0.3, 2.0), cosine_attn=(0.9, 0.2, 0.4, 0.05, 0.1, 0.7),
                samples: int = 5, seed: int = 0) -> dict:
    """A 6-layer scores file: a knn profile that falls to boundary 2 and rises, per-sample noise."""
    rng = np.random.default_rng(seed)
    profile = np.array([3.0, 2.0, 1.0, 1.5, 2.0, 2.5, 3.5])
    boundary = profile[:, None] + rng.normal(0, 0.1, size=(LAYERS + 1, samples))
    blocks = []
    for layer in range(LAYERS):
        for granularity in ("attn", "mlp", "layer"):
            delta = knn_attn[layer] if granularity == "attn" else float(profile[layer + 1] - profile[layer])
            blocks.append({"layer": layer, "granularity": granularity, "method": "knn", "kind": "entropy",
                           "h_in": 0.0, "h_out": delta, "value": delta, "value_std": 0.1})
            sim = cosine_attn[layer] if granularity == "attn" else 0.1 * (layer + 1)
            blocks.append({"layer": layer, "granularity": granularity, "method": "cosine", "kind": "similarity",
                           "h_in": None, "h_out": None, "value": sim, "value_std": 0.01})
    return {"schema": "companion.scores/1", "created": "now", "num_layers": LAYERS, "blocks": blocks,
            "profiles": {"knn": boundary.mean(axis=1).tolist()},
            "per_sample": {"entropy": {"knn": {"boundary": boundary.tolist(),
                                               "mid": boundary[:-1].tolist()}}, "similarity": {}}}


def sweep_rows() -> list[dict]:
    """Two tasks (one with stderr None on purpose elsewhere), perplexity, two methods, K = 0, 2."""
    rows = []

    def add(method, k, task, metric, value, stderr, primary=True):
        rows.append({"model": "m", "calibration": "wikitext2", "method": method, "granularity": "attn", "K": k,
                     "dropped": "" if k == 0 else "3 4", "protected": "0", "task": task, "metric": metric, "primary": primary,
                     "value": value, "stderr": stderr, "n": 8, "params": 100})

    for method, accs in {"knn": (0.6, 0.4, 0.5, 0.3), "cosine": (0.6, 0.4, 0.3, 0.3)}.items():
        add(method, 0, "piqa", "acc", accs[0], 0.03)
        add(method, 0, "piqa", "acc_norm", 0.99, 0.01, primary=False)
        add(method, 0, "arc_easy", "acc", accs[1], 0.04)
        add(method, 2, "piqa", "acc", accs[2], 0.03)
        add(method, 2, "arc_easy", "acc", accs[3], 0.04)
        add(method, 0, "wikitext2_ppl", "perplexity", 20.0, 1.0)
        add(method, 2, "wikitext2_ppl", "perplexity", 30.0 if method == "knn" else 50.0, 2.0)
    return rows


# ---------------------------------------------------------------- profiles

def test_bootstrap_band_contains_the_mean_and_shrinks_with_more_samples():
    rng = np.random.default_rng(1)
    small = rng.normal(0, 1, size=(4, 8))
    large = rng.normal(0, 1, size=(4, 512))
    band_small = tables.bootstrap_band(small, n_boot=500, seed=0)
    band_large = tables.bootstrap_band(large, n_boot=500, seed=0)
    for band, values in ((band_small, small), (band_large, large)):
        np.testing.assert_allclose(band["mean"], values.mean(axis=1))
        assert (band["lo"] <= band["mean"]).all() and (band["mean"] <= band["hi"]).all()
    assert ((band_large["hi"] - band_large["lo"]) < (band_small["hi"] - band_small["lo"])).all()
    # about ±1.96 σ/√n for the large sample
    np.testing.assert_allclose(band_large["hi"] - band_large["lo"], 2 * 1.96 / math.sqrt(512), rtol=0.25)
    # seeded: the same band twice
    pd.testing.assert_frame_equal(band_small, tables.bootstrap_band(small, n_boot=500, seed=0))
    one = tables.bootstrap_band(small[:, :1])
    assert (one["lo"] == one["mean"]).all() and (one["hi"] == one["mean"]).all()


def test_profile_band_and_minmax_normalisation():
    scores = fake_scores()
    band = tables.profile_band(scores, "knn", n_boot=200)
    assert list(band["boundary"]) == list(range(LAYERS + 1))
    np.testing.assert_allclose(band["mean"], scores["profiles"]["knn"])
    normal = tables.normalise_band(band)
    assert normal["mean"].min() == pytest.approx(0) and normal["mean"].max() == pytest.approx(1)
    assert (normal["lo"] <= normal["mean"]).all()
    np.testing.assert_allclose(tables.minmax([2, 4, 6]), [0, 0.5, 1])
    np.testing.assert_allclose(tables.minmax([3, 5], reference=[1, 5]), [0.5, 1])
    np.testing.assert_allclose(tables.minmax([7, 7]), [0, 0])
    assert tables.stage_end(scores, "knn") == 2
    with pytest.raises(CompanionError):
        tables.per_sample(scores, "bucket")


def test_cluster_bootstrap_draws_whole_documents():
    rng = np.random.default_rng(2)
    per_document = rng.normal(0, 1, size=(3, 6))  # 3 points × 6 documents, 2 identical windows each
    windows = np.repeat(per_document, 2, axis=1)
    documents = np.repeat([7, 3, 9, 1, 4, 8], 2)
    clustered = tables.bootstrap_band(windows, documents, n_boot=300, seed=5)
    # equal-size documents: the same draws as a plain bootstrap of one value per document (ids sorted)
    order = np.argsort([7, 3, 9, 1, 4, 8])
    plain = tables.bootstrap_band(per_document[:, order], n_boot=300, seed=5)
    pd.testing.assert_frame_equal(clustered, plain, check_exact=False, rtol=1e-12, atol=1e-12)
    naive = tables.bootstrap_band(windows, n_boot=300, seed=5)  # windows as if independent: too narrow
    assert ((naive["hi"] - naive["lo"]) < (clustered["hi"] - clustered["lo"])).all()
    one = tables.bootstrap_band(windows, np.zeros(12))
    assert (one["lo"] == one["mean"]).all() and (one["hi"] == one["mean"]).all()
    with pytest.raises(CompanionError, match="groups"):
        tables.bootstrap_band(windows, documents[:5])


def test_profile_band_resamples_the_recorded_documents():
    scores = fake_scores()
    assert tables.window_documents(scores) is None
    scores["data"] = {"windows": [[0, 0], [0, 50], [0, 90], [0, 10], [0, 30]]}  # all from document 0
    band = tables.profile_band(scores, "knn", n_boot=50)
    assert (band["lo"] == band["mean"]).all() and (band["hi"] == band["mean"]).all()
    scores["per_sample"]["norm"] = {"rms": {"boundary": [[1.0, 3.0]] * (LAYERS + 1)}}
    scores["data"]["windows"] = [[0, 0], [1, 0]]
    norm = tables.profile_band(scores, "rms", kind="norm", n_boot=50)
    np.testing.assert_allclose(norm["mean"], 2.0)


def test_spread_vs_noise_and_its_verdict():
    scores = fake_scores()
    scores["per_sample"]["entropy"]["renyi"] = {"boundary": [[1.0, 3.0], [2.0, 2.0], [1.5, 2.5]]}
    table = tables.spread_vs_noise(scores, "renyi")
    np.testing.assert_allclose(table["mean"], [2.0, 2.0, 2.0])
    np.testing.assert_allclose(table["std"], [math.sqrt(2), 0, math.sqrt(0.5)])
    np.testing.assert_allclose(table["sem"], table["std"] / math.sqrt(2))
    assert (table["spread"] == 0).all()
    assert verdicts.noise(0.0, table["sem"].max(), table["std"].median()).category == "within_noise"


def test_bucket_bias_and_tokens_per_bin():
    scores = {"profiles": {"bucket": [10.0, 12.0], "bucket_mm": [10.5, 12.25]},
              "data": {"seqlen": 256}, "settings": {"params": {"bucket": {"bins": 80}}}}
    assert tables.tokens_per_bin(scores) == pytest.approx(3.2)
    np.testing.assert_allclose(tables.bucket_bias(scores)["bias"], [-0.5, -0.25])


# ---------------------------------------------------------------- block scores

def test_delta_matrix_and_paired_scores():
    scores = fake_scores()
    matrix = tables.delta_matrix(scores, "knn")
    assert matrix.shape == (LAYERS, 3) and list(matrix.columns) == ["attn", "mlp", "layer"]
    assert matrix.loc[3, "attn"] == 0.1 and matrix.loc[0, "layer"] == pytest.approx(-1.0)
    pairs = tables.paired_scores(scores, "knn", "cosine", ["attn"])
    assert list(pairs["x"]) == [5.0, 4.0, 0.5, 0.1, 0.3, 2.0] and pairs["y"].iloc[3] == 0.05


def test_rank_correlation_of_known_permutations():
    a = [1, 2, 3, 4, 5]
    assert tables.rank_correlation(a, [10, 20, 30, 40, 50])["spearman"] == pytest.approx(1)
    assert tables.rank_correlation(a, [5, 4, 3, 2, 1])["kendall"] == pytest.approx(-1)
    # one adjacent swap of 5: Spearman 1 − 6·2/(5·24) = 0.9, Kendall (9 − 1)/10 = 0.8
    result = tables.rank_correlation(a, [1, 3, 2, 4, 5])
    assert result["spearman"] == pytest.approx(0.9) and result["kendall"] == pytest.approx(0.8)
    assert result["n"] == 5
    assert math.isnan(tables.rank_correlation([1, 2], [2, 1])["spearman"])
    assert tables.rank_correlation([1, 2, np.nan, 4], [1, 2, 3, 4])["n"] == 3


def test_method_correlation_matrix_and_rank_table():
    scores = fake_scores()
    # knn attn ranks: 6 5 3 1 2 4 ; cosine attn ranks: 6 3 4 1 2 5 -> d² = 0+4+1+0+0+1 = 6
    result = tables.method_correlation(scores, "knn", "cosine", "attn")
    assert result["spearman"] == pytest.approx(1 - 6 * 6 / (6 * 35))
    sub = tables.method_correlation(scores, "knn", "cosine", "attn", layers=[2, 3, 4, 5])
    assert sub["n"] == 4
    matrix = tables.correlation_matrix(scores, ["knn", "cosine"], "attn")
    rho = 1 - 6 * 6 / (6 * 35)
    # plain floats, symmetric, ones on the diagonal: the table survives a JSON round trip unchanged
    assert json.loads(json.dumps(matrix.to_dict())) == {"knn": {"knn": 1.0, "cosine": pytest.approx(rho)},
                                                        "cosine": {"knn": pytest.approx(rho), "cosine": 1.0}}
    ranks = tables.rank_table(scores, ["knn", "cosine"], "attn")
    # auto protects KNN's compression stage (layers 0, 1) for both criteria; knn drops 3, 4, 2, 5
    assert ranks.loc[[0, 1]].isna().all().all()
    assert ranks["knn"].tolist()[2:] == [3, 1, 2, 4]
    assert ranks["cosine"].tolist()[2:] == [3, 1, 2, 4]
    assert tables.rank_table(scores, ["cosine"], "attn", protect="none")["cosine"].tolist() == [6, 3, 4, 1, 2, 5]


def test_jaccard_and_drop_set_overlap():
    assert tables.jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(0.5)
    assert tables.jaccard([1], [2]) == 0 and tables.jaccard([], []) == 1
    a = DropOrder("a", "attn", [3, 4, 2, 5], [0, 1], [0.0] * 6, 6)
    b = DropOrder("b", "attn", [3, 5, 4, 0, 1, 2], [], [0.0] * 6, 6)
    table = tables.drop_set_overlap(a, b)
    assert table["K"].tolist() == [1, 2, 3, 4]  # up to the smaller prunable count
    assert table["jaccard"].tolist() == pytest.approx([1.0, 1 / 3, 0.5, 0.6])
    assert table.loc[1, "a"] == "3 4" and table.loc[1, "b"] == "3 5" and table.loc[1, "common"] == 1
    assert tables.drop_set_overlap(a, b, ks=[0, 2, 9])["K"].tolist() == [0, 2]
    scores = fake_scores()
    knn, cos = drop_order(scores, "knn", "attn", "none"), drop_order(scores, "cosine", "attn", "none")
    assert tables.drop_set_overlap(knn, cos, [2, 3])["jaccard"].tolist() == pytest.approx([1.0, 0.5])


# ---------------------------------------------------------------- sweep tables

def test_mean_accuracy_stderr_and_retention():
    acc = tables.mean_accuracy(tables.sweep_frame(sweep_rows()))
    knn0 = acc[(acc["method"] == "knn") & (acc["K"] == 0)].iloc[0]
    assert knn0["mean"] == pytest.approx(0.5)  # acc_norm (not primary) and perplexity left out
    assert knn0["stderr"] == pytest.approx(math.sqrt(0.03 ** 2 + 0.04 ** 2) / 2)
    assert knn0["n_tasks"] == 2 and knn0["retention"] == pytest.approx(100)
    assert tables.lookup(acc, "retention", method="knn", K=2) == pytest.approx(80)
    assert tables.lookup(acc, "retention", method="cosine", K=2) == pytest.approx(60)
    assert tables.lookup(acc, "retention_stderr", method="knn", K=2) == pytest.approx(100 * 0.025 / 0.5)
    assert math.isnan(tables.lookup(acc, "retention", method="renyi", K=2))
    assert tables.mean_retention(acc, "knn", "attn") == pytest.approx(80)
    ppl = tables.perplexity_table(tables.sweep_frame(sweep_rows()))
    assert tables.lookup(ppl, "perplexity", method="cosine", K=2) == 50
    tasks = tables.task_accuracy(tables.sweep_frame(sweep_rows()))
    assert set(tasks["task"]) == {"piqa", "arc_easy"} and len(tasks) == 8


def test_sweep_tables_round_trip_through_csv_and_json(tmp_path):
    from companion.experiments.sweep import write_csv

    rows = sweep_rows()
    rows[0]["stderr"] = None
    write_csv(rows, tmp_path / "sweep_wikitext2.csv")
    (tmp_path / "sweep_wikitext2.json").write_text(json.dumps({"rows": rows}))
    from_json = tables.load_sweep(tmp_path / "sweep_wikitext2.json")
    from_csv = tables.load_sweep(tmp_path / "sweep_wikitext2.csv")
    for frame in (from_json, from_csv):
        assert frame["primary"].dtype == bool and frame["primary"].sum() == 12
        assert math.isnan(frame["stderr"].iloc[0]) and frame["dropped"].iloc[0] == ""
    acc = tables.mean_accuracy(from_csv)
    assert math.isnan(tables.lookup(acc, "stderr", method="knn", K=0))
    assert tables.lookup(acc, "mean", method="knn", K=2) == pytest.approx(0.4)


def test_headline_k_and_speedup_efficiency():
    assert orders.headline_k([0, 4, 8, 12, 16], 32) == 12
    assert orders.headline_k([0, 2, 4, 6, 8], 18) == 6
    assert orders.headline_k([0, 2, 5, 7, 9, 11], 18) == 7  # the K closest to 6.75
    assert orders.headline_k([0, 8], 18) == 8 and orders.headline_k([0], 18) == 0
    assert tables.speedup_efficiency(1.18, 1.2) == pytest.approx(0.9)
    assert math.isnan(tables.speedup_efficiency(1.5, 1.0))


# ---------------------------------------------------------------- verdicts

NAN = float("nan")


def test_two_stage_verdict():
    def outcome(profile):
        verdict = verdicts.two_stage(profile)
        assert verdict.text == verdicts.two_stage_verdict(profile) and verdict.text
        return verdict.category, verdict.numbers["stage"]

    assert outcome([3, 2, 1, 2, 4]) == ("two_stage", 2)
    assert outcome([3, 1, 2, 2, 2]) == ("two_stage", 1)
    assert outcome([1, 2, 3, 4, 5]) == ("no_compression", 0)
    assert outcome([1, 1, 1]) == ("no_compression", 0) and verdicts.two_stage([1, 1, 1]).numbers["rise"] == 0
    # the stage ends in the first half (boundary 2 of 0..4); the fall goes on but never rises again
    assert outcome([3, 2, 1, 0.9, 0.5]) == ("falls_only", 2)
    assert outcome([3, 2, 1, 2, 1]) == ("falls_only", 2)
    assert verdicts.two_stage([3, 2, 1, 2, 4]).numbers["rise"] == 3


def test_trend_verdict():
    def category(*args, **kwargs):
        verdict = verdicts.trend(*args, **kwargs)
        assert verdict.text == verdicts.trend_verdict(*args, **kwargs) and verdict.text
        return verdict.category

    assert category(-0.8, 0.01) == "falls"
    assert category(-0.8, 0.05) == "weak"  # p must be below alpha
    assert category(-0.8, 0.02, alpha=0.01) == "weak"
    assert category(-0.8, 0.005, alpha=0.01) == "falls" and verdicts.trend(-0.8, 0.005, 0.01).numbers["alpha"] == 0.01
    assert category(0.0, 0.001) == category(0.3, 0.5) == "no"
    assert category(NAN, NAN) == category(-0.9, NAN) == verdicts.UNKNOWN
    assert verdicts.trend_verdict(NAN, NAN) == verdicts.NOT_MEASURED


def test_noise_verdict():
    def category(spread, sem, std):
        verdict = verdicts.noise(spread, sem, std)
        assert verdict.text == verdicts.noise_verdict(spread, sem, std) and verdict.text
        return verdict.category

    assert category(0.15, 0.1, 1.0) == "within_noise"  # below 2 standard errors (0.2)
    assert category(0.5, 0.1, 1.0) == "on_average"
    assert category(2.0, 0.1, 1.0) == "stands_out"
    assert category(NAN, 0.1, 1.0) == category(1.0, None, 1.0) == verdicts.UNKNOWN
    assert verdicts.noise(0.5, 0.1, 1.0).numbers == {"spread": 0.5, "two_sem": 0.2, "std": 1.0}


def test_ranking():
    assert verdicts.ranked({"knn": 90.0, "bucket": 95.0, "renyi": NAN}) == ["bucket", "knn"]
    assert verdicts.ranked({"a": 1.0, "b": 3.0, "c": 2.0}) == ["b", "c", "a"]
    assert verdicts.ranked({"a": 1.0, "b": 1.0}) == ["a", "b"]  # ties keep the given order
    assert verdicts.ranked({"a": None, "b": NAN}) == verdicts.ranked({}) == []
    assert verdicts.ranking({"a": 1.0, "b": 3.0}) == "b > a"
    assert verdicts.ranking({}) == verdicts.NOT_MEASURED


def test_speed_verdict():
    def category(efficiency):
        verdict = verdicts.speed(efficiency)
        assert verdict.text == verdicts.speed_verdict(efficiency) and verdict.text
        return verdict.category

    assert category(1.2) == "beyond"
    assert category(1.19) == category(0.8) == "near_linear"
    assert category(0.5) == "sub_linear" and verdicts.speed(0.5).numbers["efficiency"] == 0.5
    assert category(0.0) == category(-0.1) == "none"
    assert category(NAN) == verdicts.UNKNOWN and verdicts.speed_verdict(NAN) == verdicts.NOT_MEASURED


def test_counted_verdicts():
    changed = verdicts.calibration_change(1, 2, -20.0, -25.0, -15.0)
    assert changed.category == "changed" and (changed.numbers["changed"], changed.numbers["settings"]) == (1, 2)
    unchanged = verdicts.calibration_change(0, 2, 1.5, -0.5, 3.5)
    assert unchanged.category == "unchanged" and unchanged.numbers["largest"] == 1.5
    assert verdicts.calibration_change(0, 0, NAN, NAN, NAN).category == verdicts.UNKNOWN
    assert [verdicts.retention_headline(low, high, 95).category for low, high in ((96, 99), (90, 94.9), (94, 97))] == [
        "reached", "not_reached", "undecided"]
    assert [verdicts.curve("a", "b", *counts, 5).category for counts in ((2, 0), (0, 1), (1, 1), (0, 0))] == [
        "a_ahead", "b_ahead", "mixed", "no_difference"]
    assert verdicts.curve("a", "b", 0, 0, 0).category == verdicts.UNKNOWN
    assert verdicts.curve("a", "b", 2, 1, 5).numbers == {"ahead_a": 2, "ahead_b": 1, "ks": 5}


def test_native_values_for_glue():
    assert findings.native(np.float64(0.5)) == 0.5 and type(findings.native(np.float64(0.5))) is float
    assert type(findings.native(np.int64(3))) is int
    assert math.isnan(findings.native(None)) and findings.native("x") == "x"
    assert findings.native(np.bool_(True)) == "true"


def test_speed_frame_spreads():
    rows = [{"model": "m", "method": "knn", "granularity": g, "K": k, "dropped": [] if k == 0 else [3, 4],
             "prefill_tps": tps, "prefill_tps_lo": tps * 0.9, "prefill_tps_hi": tps * 1.1,
             "decode_tps": tps, "decode_tps_lo": tps, "decode_tps_hi": tps,
             "measured_speedup_prefill": tps / 100, "measured_speedup_decode": tps / 100,
             "expected_speedup_prefill": 1.0 + k / 10, "expected_speedup_decode": 1.0 + k / 10}
            for g in ("attn", "layer") for k, tps in ((0, 100.0), (2, 120.0))]
    frame = tables.speed_frame(rows)
    row = frame[(frame["granularity"] == "attn") & (frame["K"] == 2)].iloc[0]
    assert row["measured_speedup_prefill_lo"] == pytest.approx(1.08) and row["dropped"] == "3 4"


# ---------------------------------------------------------------- figures

def test_figures_have_labels_legends_and_captions(tmp_path):
    scores = fake_scores()
    band = tables.normalise_band(tables.profile_band(scores, "knn", n_boot=50))
    acc = tables.mean_accuracy(tables.sweep_frame(sweep_rows()))
    made = [
        figures.entropy_profile_figure({"knn": band}, {"knn": 2}, title="t", caption="model m, 5 samples"),
        figures.delta_heatmap_figure({"knn": tables.delta_matrix(scores)}, title="t", caption="c"),
        figures.accuracy_figure(acc, methods=["knn", "cosine"], granularities=["attn"], title="t", caption="c",
                                dense=0.5),
        figures.accuracy_figure(acc, methods=["knn", "cosine"], granularities=["attn"], title="t", caption="c",
                                y="retention"),
        figures.scatter_figure(tables.paired_scores(scores, "knn", "cosine", ["attn", "layer"]),
                               {"attn": tables.method_correlation(scores, "knn", "cosine", "attn")},
                               x_label="ΔH", y_label="1 − cos", title="t", caption="c", protected=[0, 1]),
    ]
    for fig in made:
        assert fig._suptitle.get_text() == "t"
        assert any(text.get_text().startswith(("model m", "c")) for text in fig.texts)
        for ax in fig.axes:
            assert ax.get_ylabel(), (fig, ax)
            assert ax.get_label() == "<colorbar>" or ax.get_xlabel(), (fig, ax)
    heat = figures.calibration_heatmap_figure(
        {"layer": tables.delta_by_calibration({"c4": scores, "wikitext2": scores}, "knn", "layer")},
        method="knn", title="t", caption="c")
    assert [t.get_text() for t in heat.axes[0].get_yticklabels()] == ["c4", "wikitext2"]
    assert heat.axes[0].get_ylabel() == "calibration set"
    scores["per_sample"]["norm"] = {"rms": {"boundary": (np.arange(1, LAYERS + 2)[:, None] * np.ones(5)).tolist()}}
    knn_unit_band = tables.profile_band(scores, "knn", n_boot=20).assign(mean=lambda f: f["mean"] + 1)
    norm = figures.norm_profile_figure({"knn": band, "knn_unit": knn_unit_band},
                                       tables.profile_band(scores, "rms", kind="norm", n_boot=20), title="t",
                                       caption="c")
    assert "ours, not the paper's" in " ".join(t.get_text() for t in norm.axes[0].get_legend().get_texts())
    assert norm.axes[1].get_yscale() == "log"
    made += [heat, norm]
    assert made[2].axes[0].get_ylabel() == "mean accuracy over tasks"
    assert made[3].axes[0].get_ylabel().startswith("retention")
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in made[4].axes] == [("ΔH", "1 − cos")] * 2
    assert made[0].axes[0].get_legend() is not None
    assert made[0]._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # shown in notebooks without pyplot
    paths = figures.save_figure(made[0], tmp_path / "figures" / "profile")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in paths)
    svg = paths[1].read_text()
    assert "<dc:date>" not in svg
    again = figures.save_figure(made[0], tmp_path / "again")
    assert again[1].read_text() == svg  # no timestamp, fixed hash salt: reruns give identical files


# ---------------------------------------------------------------- findings (the glued numbers)

def hand_scores(values: dict[tuple[str, str], list[float]], profiles: dict[str, list[float]] | None = None) -> dict:
    """A scores file with exactly these per-layer values per (method, granularity) and these profiles."""
    num_layers = len(next(iter(values.values())))
    blocks = [{"layer": layer, "granularity": g, "method": m, "value": v}
              for (m, g), column in values.items() for layer, v in enumerate(column)]
    return {"num_layers": num_layers, "blocks": blocks, "profiles": profiles or {}}


def test_run_numbers_reads_only_what_a_run_describes():
    from types import SimpleNamespace

    run = SimpleNamespace(model="m", profile="smoke", calibration="c4", calibrations=["c4", "wikitext2"], samples=8,
                          seqlen=128, seed=1, tasks=["piqa", "wikitext2_ppl", "arc_easy"], limit=None,
                          drops=[0, 2, 4], max_drop=4)
    assert findings.run_numbers(run) == {
        "model": "m", "profile": "smoke", "calibration": "c4", "calibrations": "c4, wikitext2", "samples": 8,
        "seqlen": 128, "seed": 1, "tasks": "piqa, arc_easy", "limit": "all", "drops": "0, 2, 4", "k_max": 4}
    run.limit = 60
    assert findings.run_numbers(run)["limit"] == "60"


def test_profile_numbers_of_a_known_profile():
    # boundary entropies: falls to boundary 2 (stage of 2 layers), then ΔH = 3, 2, −0.5, −0.5
    profile = [4.0, 2.0, 0.0, 3.0, 5.0, 4.5, 4.0]
    scores = hand_scores({("knn", "layer"): list(np.diff(profile))}, {"knn": profile})
    numbers = findings.profile_numbers(scores, ["knn"])
    assert numbers["num_layers"] == 6 and numbers["knn_stage_layers"] == 2
    assert numbers["knn_two_stage"] == verdicts.two_stage_verdict(profile)
    assert verdicts.two_stage(profile).category == "two_stage"
    assert numbers["knn_rise"] == pytest.approx((4 - 0) / (5 - 0))
    assert numbers["knn_expansion_positive_pct"] == pytest.approx(50)
    # Spearman of layers 2..5 against ranks 4, 3, 1.5, 1.5: ρ = −4.5 / sqrt(5 · 4.5) = −3/√10; with n = 4 the
    # t-test's p-value has the closed form 1 − |ρ| (Student t with 2 degrees of freedom)
    rho = -3 / math.sqrt(10)
    assert numbers["knn_depth_rho"] == pytest.approx(rho)
    assert numbers["knn_depth_p"] == pytest.approx(1 - abs(rho))
    assert numbers["knn_depth_verdict"] == verdicts.trend_verdict(rho, 1 - abs(rho))
    assert verdicts.trend(rho, 1 - abs(rho)).category == "weak"  # p = 0.051: not below 0.05
    for key in ("stage_layers", "rise", "expansion_positive_pct", "depth_rho", "depth_p"):
        assert math.isnan(numbers[f"bucket_{key}"]) and math.isnan(numbers[f"renyi_{key}"])
    assert numbers["bucket_two_stage"] == numbers["renyi_depth_verdict"] == verdicts.NOT_MEASURED
    flat = findings.profile_numbers(hand_scores({("knn", "layer"): [0.0] * 4}, {"knn": [1.0] * 5}), ["knn"])
    assert math.isnan(flat["knn_rise"]) and flat["knn_depth_verdict"] == verdicts.NOT_MEASURED


def test_accuracy_numbers_of_the_hand_made_sweep():
    frame = tables.sweep_frame(sweep_rows())
    numbers = findings.accuracy_numbers(tables.mean_accuracy(frame), tables.perplexity_table(frame), num_layers=6)
    assert numbers["dense_accuracy"] == pytest.approx(0.5)
    assert numbers["dense_accuracy_stderr"] == pytest.approx(math.sqrt(0.03 ** 2 + 0.04 ** 2) / 2)
    assert numbers["dense_perplexity"] == 20 and numbers["k_max"] == 2 and numbers["n_tasks"] == 2
    assert numbers["k_max_pct"] == pytest.approx(100 / 3) and numbers["headline_k"] == 2  # 2 ≤ 0.375 · 6
    assert numbers["knn_attn_accuracy_max"] == pytest.approx(0.4) and numbers["cosine_attn_accuracy_max"] == pytest.approx(0.3)
    assert numbers["knn_attn_retention_max"] == pytest.approx(80) and numbers["knn_attn_retention_mean"] == pytest.approx(80)
    assert numbers["cosine_attn_retention_max"] == pytest.approx(60)
    assert numbers["knn_attn_ppl_max"] == 30 and numbers["cosine_attn_ppl_max"] == 50
    assert numbers["knn_attn_retention_headline"] == pytest.approx(80)
    assert math.isnan(numbers["bucket_attn_retention_max"]) and math.isnan(numbers["knn_layer_retention_mean"])


def test_criteria_numbers_of_known_orders():
    scores = fake_scores()
    numbers = findings.criteria_numbers(scores, ["attn"], k_max=2)
    assert numbers["spearman_attn"] == pytest.approx(1 - 6 * 6 / (6 * 35))
    assert numbers["kendall_attn"] == pytest.approx((13 - 2) / 15)  # 13 concordant, 2 discordant pairs
    # knn protects layers 0, 1 and drops 3, 4, 2, 5; on those layers both rank 3, 1, 2, 4
    assert numbers["spearman_prunable_attn"] == pytest.approx(1)
    assert numbers["jaccard_attn_kmax"] == 1
    # under the same protection cosine drops 3, 4, 2, 5 too: Jaccard 1 at K = 1..4
    assert numbers["jaccard_attn_mean"] == pytest.approx(1)
    assert math.isnan(findings.criteria_numbers(scores, ["attn"], k_max=9)["jaccard_attn_kmax"])


def estimator_scores() -> dict:
    return hand_scores({("knn", "attn"): [1, 2, 3, 4, 5, 6], ("bucket", "attn"): [1, 2, 3, 4, 6, 5],
                        ("renyi", "attn"): [6, 5, 4, 3, 2, 1]})


def retention_table(rows: dict[str, tuple[float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "granularity": "attn", "K": k, "retention": r}
                         for m, values in rows.items() for k, r in zip((0, 2, 4), (100.0, *values))])


def test_estimator_numbers_rank_and_compare_estimators():
    acc = retention_table({"knn": (90, 80), "bucket": (95, 85), "renyi": (70, 60)})
    numbers = findings.estimator_numbers(estimator_scores(), acc, ["knn", "bucket", "renyi"], ["attn"], 2, "none")
    assert numbers["estimator_ranking_attn"] == "bucket > KNN > Rényi"
    assert numbers["best_estimator_attn"] == "bucket" and numbers["renyi_last_attn"] == "yes"
    assert numbers["knn_attn_retention_mean"] == 85 and numbers["renyi_attn_retention_mean"] == 65
    assert numbers["spearman_knn_bucket_attn"] == pytest.approx(1 - 6 * 2 / 210)
    assert numbers["spearman_knn_renyi_attn"] == pytest.approx(-1)
    assert numbers["spearman_bucket_renyi_attn"] == pytest.approx(1 - 6 * 68 / 210)
    assert numbers["jaccard_knn_bucket_attn_kmax"] == 1 and numbers["jaccard_knn_renyi_attn_kmax"] == 0

    acc = retention_table({"knn": (90, 80), "bucket": (95, 85), "renyi": (99, 99)})
    numbers = findings.estimator_numbers(estimator_scores(), acc, ["knn", "bucket", "renyi"], ["attn"], 2, "none")
    assert numbers["best_estimator_attn"] == "Rényi" and numbers["renyi_last_attn"] == "no"
    numbers = findings.estimator_numbers(estimator_scores(), acc, ["knn", "bucket"], ["attn"], 2, "none")
    assert numbers["renyi_last_attn"] == verdicts.NOT_MEASURED and math.isnan(numbers["spearman_knn_renyi_attn"])
    assert math.isnan(numbers["renyi_attn_retention_mean"])


def calibration_acc() -> pd.DataFrame:
    rows = []
    for calibration, k, dropped in (("wikitext2", 2, "1 2"), ("wikitext2", 4, "1 2 3 4"), ("c4", 2, "1 2"),
                                    ("c4", 4, "1 3 4 5")):
        rows.append({"model": "m", "calibration": calibration, "method": "knn", "granularity": "attn", "K": k,
                     "dropped": dropped})
    return pd.DataFrame(rows)


def calibration_examples(flip_k4: int) -> pd.DataFrame:
    """Per-example rows of knn on two calibration sets: identical at K = 2, ``flip_k4`` of 200 examples
    right under wikitext2 and wrong under c4 at K = 4."""
    rows = []
    for calibration in ("wikitext2", "c4"):
        for k in (2, 4):
            for doc in range(200):
                value = float(doc % 2) if not (k == 4 and doc < flip_k4) else float(calibration == "wikitext2")
                rows.append({"model": "m", "calibration": calibration, "method": "knn", "granularity": "attn",
                             "K": k, "task": "piqa", "doc_id": doc, "metric": "acc", "value": value})
    return pd.DataFrame(rows)


def test_calibration_numbers_from_paired_comparisons():
    from companion.analysis.comparisons import calibration_comparisons

    scores = {"wikitext2": estimator_scores(), "c4": hand_scores({("knn", "attn"): [2, 1, 3, 4, 5, 6]})}
    changed = calibration_comparisons(calibration_examples(flip_k4=40), "wikitext2", "c4")
    assert changed["calibration"].tolist() == ["c4 vs wikitext2"] * 2 and changed["K"].tolist() == [2, 4]
    numbers = findings.calibration_numbers(scores, calibration_acc(), changed, ["knn"], ["attn"], 2, "none")
    assert numbers["calib_a"] == "wikitext2" and numbers["calib_b"] == "c4"
    assert numbers["calib_spearman_knn_attn"] == pytest.approx(1 - 6 * 2 / 210)
    assert numbers["calib_jaccard_knn_attn_kmax"] == 1  # {0, 1} both times
    assert math.isnan(numbers["calib_spearman_cosine_attn"]) and math.isnan(numbers["calib_jaccard_knn_layer_kmax"])
    # 40 of 200 examples right under wikitext2 and wrong under c4: 20 points
    assert numbers["calib_max_acc_diff"] == pytest.approx(100 * 40 / 200)
    assert (numbers["calib_changed"], numbers["calib_settings"], numbers["calib_same_blocks"]) == (1, 2, 1)
    worst = changed.loc[changed["diff"].abs().idxmax()]
    assert numbers["calib_verdict"] == verdicts.calibration_change(1, 2, worst["diff"], worst["ci_low"],
                                                                   worst["ci_high"]).text
    same = calibration_comparisons(calibration_examples(flip_k4=0), "wikitext2", "c4")
    within = findings.calibration_numbers(scores, calibration_acc(), same, ["knn"], ["attn"], 2, "none")
    assert (within["calib_changed"], within["calib_settings"]) == (0, 2)
    worst = same.loc[same["diff"].abs().idxmax()]
    assert within["calib_verdict"] == verdicts.calibration_change(0, 2, worst["diff"], worst["ci_low"],
                                                                  worst["ci_high"]).text
    empty = findings.calibration_numbers(scores, calibration_acc(), same.iloc[:0], ["knn"], ["attn"], 2, "none")
    assert empty["calib_settings"] == 0 and empty["calib_verdict"] == verdicts.NOT_MEASURED


def test_speed_numbers_of_known_speedups():
    def row(g, k, prefill, decode, params, kv=1.0):
        return {"granularity": g, "K": k, "device": "cpu", "params": params, "kv_cache_ratio": kv,
                "measured_speedup_prefill": prefill[0], "expected_speedup_prefill": prefill[1],
                "measured_speedup_decode": decode[0], "expected_speedup_decode": decode[1]}

    speed = pd.DataFrame([row("attn", 0, (1, 1), (1, 1), 100), row("attn", 2, (1.18, 1.2), (1.0, 1.2), 80, 0.5),
                          row("layer", 0, (1, 1), (1, 1), 100), row("layer", 2, (1.5, 1.4), (1.1, 1.5), 60, 0.6)])
    numbers = findings.speed_numbers(speed)
    assert numbers["speed_k_max"] == 2 and numbers["speed_device"] == "cpu"
    assert numbers["attn_prefill_efficiency"] == pytest.approx(0.9)
    assert numbers["attn_decode_efficiency"] == 0
    assert numbers["layer_prefill_efficiency"] == pytest.approx(1.25)
    assert numbers["layer_decode_efficiency"] == pytest.approx(0.2)
    for key, category in (("attn_prefill", "near_linear"), ("attn_decode", "none"), ("layer_prefill", "beyond"),
                          ("layer_decode", "sub_linear")):
        assert verdicts.speed(numbers[f"{key}_efficiency"]).category == category
        assert numbers[f"{key}_verdict"] == verdicts.speed_verdict(numbers[f"{key}_efficiency"])
    assert numbers["attn_kv_cache_ratio"] == 0.5 and numbers["attn_params_ratio"] == pytest.approx(0.8)
    assert numbers["layer_params_ratio"] == pytest.approx(0.6) and numbers["layer_prefill_speedup"] == 1.5
    attn_only = findings.speed_numbers(speed[speed["granularity"] == "attn"])
    assert math.isnan(attn_only["layer_prefill_speedup"]) and attn_only["layer_decode_verdict"] == verdicts.NOT_MEASURED
    assert math.isnan(attn_only["layer_params_ratio"])


def test_decode_bytes_and_gpu_setting_numbers(tmp_path):
    # 8 layers; K = 2 attention sub-layers keep 6/8 of the cache, 2 layers drop 2/8 of the layer weights
    def row(g, k, weights, kv):
        return {"granularity": g, "K": k, "weights_bytes": weights, "kv_cache_bytes": kv,
                "kv_cache_bytes_expected": kv, "decode_tps": 10.0}

    speed = pd.DataFrame([row("attn", 0, 900e6, 100e6), row("attn", 2, 850e6, 75e6),
                          row("layer", 0, 900e6, 100e6), row("layer", 2, 700e6, 75e6)])
    np.testing.assert_allclose(tables.decode_bytes_speedup(speed), [1, 1000 / 925, 1, 1000 / 775])
    assert tables.cache_layers(speed) == 8
    numbers = diagnostics.decode_bytes_numbers(speed, prefix="gpu_")
    assert numbers["gpu_attn_decode_bytes_expected"] == pytest.approx(1000 / 925)
    assert numbers["gpu_dense_gb_per_token"] == pytest.approx(1.0) and numbers["gpu_dense_decode_gbs"] == pytest.approx(10)
    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"settings": {"device": "NVIDIA H200", "dtype": "torch.bfloat16", "batch_size": 1,
                                             "prompt_len": 1024, "new_tokens": 64, "warmup": 2, "repeats": 5}}))
    settings = diagnostics.speed_setting_numbers(tables.load_speed_settings(path), speed)
    assert settings == {"gpu_device": "NVIDIA H200", "gpu_dtype": "bf16", "gpu_batch_size": 1, "gpu_prompt_len": 1024,
                        "gpu_new_tokens": 64, "gpu_warmup": 2, "gpu_repeats": 5, "gpu_num_layers": 8}
    missing = diagnostics.unmeasured({**numbers, **dict.fromkeys(diagnostics.SPEED_SETTINGS, "")}, prefix="x_")
    assert math.isnan(missing["x_gpu_dense_decode_gbs"]) and missing["x_device"] == verdicts.NOT_MEASURED


def test_statistics_and_figures_import_neither_torch_nor_transformers():
    code = ("import sys\n"
            "import companion.analysis.tables, companion.analysis.verdicts, companion.analysis.figures\n"
            "import companion.analysis.findings\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_retention_above_chance_and_the_random_band():
    rows = sweep_rows()
    for seed, accs in enumerate(((0.5, 0.2), (0.7, 0.4))):
        for k, (piqa, arc) in ((0, (0.6, 0.4)), (2, accs)):
            rows += [{**row, "method": f"random:{seed}", "K": k, "value": value}
                     for row, value in (({**rows[0], "task": "piqa"}, piqa), ({**rows[2], "task": "arc_easy"}, arc))]
    acc = tables.mean_accuracy(tables.sweep_frame(rows))
    knn = acc[(acc["method"] == "knn") & (acc["K"] == 2)].iloc[0]
    # dense 0.5, chance (0.5 + 0.25) / 2 = 0.375: knn's 0.4 keeps (0.4 − 0.375) / (0.5 − 0.375) = 20 % above chance
    assert knn["chance"] == pytest.approx(0.375) and knn["chance_retention"] == pytest.approx(20)
    assert knn["retention"] == pytest.approx(80)
    band = tables.random_band(acc)
    at2 = band[band["K"] == 2].iloc[0]
    assert at2["seeds"] == 2 and at2["min"] == pytest.approx(0.35) and at2["max"] == pytest.approx(0.55)
    assert at2["mean"] == pytest.approx(0.45)
