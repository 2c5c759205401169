"""companion.runs, tables, verdicts, findings and figures on hand-made scores and sweep tables (no model)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from companion.analysis import figures, findings, runs, tables, verdicts
from companion.errors import CompanionError
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


# ---------------------------------------------------------------- parameters

def test_resolve_parameters_uses_the_profile_and_overrides(tmp_path):
    run = runs.resolve_parameters({"profile": "smoke", "model": None, "samples": None, "seed": None, "limit": None,
                                       "results_dir": str(tmp_path)})
    assert run.model == "gemma-3-270m" and run.samples == 8 and run.seed == 2024 and run.limit == 8
    assert runs.resolve_parameters({"profile": "smoke", "seed": 0}).seed == 0  # seed 0 can be chosen
    with pytest.raises(CompanionError, match="samples"):
        runs.resolve_parameters({"profile": "smoke", "samples": 0})
    assert run.calibration == "wikitext2" and run.calibrations == ["wikitext2", "c4"]
    assert run.out_dir == tmp_path / "smoke" / "gemma-3-270m"
    run = runs.resolve_parameters({"profile": "paper", "model": "meta-llama/Llama-3.1-8B", "calibration": "c4",
                                       "estimators": "knn, cosine", "drops": "4,8", "samples": 16, "limit": 5,
                                       "results_dir": "r"})
    assert run.out_dir.as_posix() == "r/paper/meta-llama__Llama-3.1-8B"
    assert run.methods == ["knn", "cosine"] and run.entropy_methods == ["knn"] and run.similarity_methods == ["cosine"]
    assert run.drops == [0, 4, 8] and run.samples == 16 and run.limit == 5 and run.calibrations == ["c4"]
    assert run.sweep_settings().drops == [0, 4, 8] and run.eval_settings().limit == 5
    assert "c4: 16 samples × 256 tokens, seed 2024" in run.caption(evaluation=True)
    assert runs.resolve_parameters({"profile": "smoke", "limit": -1}).limit is None
    with pytest.raises(CompanionError):
        runs.resolve_parameters({"profile": "smoke", "granularities": "heads"})


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
    assert matrix.loc["knn", "knn"] == 1 and matrix.loc["knn", "cosine"] == pytest.approx(result["spearman"])
    ranks = tables.rank_table(scores, ["knn", "cosine"], "attn")
    # knn protects its compression stage (layers 0, 1); its drop order is 3, 4, 2, 5
    assert np.isnan(ranks.loc[0, "knn"]) and np.isnan(ranks.loc[1, "knn"])
    assert ranks["knn"].tolist()[2:] == [3, 1, 2, 4]
    assert ranks["cosine"].tolist() == [6, 3, 4, 1, 2, 5]


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
    knn, cos = drop_order(scores, "knn", "attn"), drop_order(scores, "cosine", "attn")
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
    from_json = runs.load_sweep(tmp_path / "sweep_wikitext2.json")
    from_csv = runs.load_sweep(tmp_path / "sweep_wikitext2.csv")
    for frame in (from_json, from_csv):
        assert frame["primary"].dtype == bool and frame["primary"].sum() == 12
        assert math.isnan(frame["stderr"].iloc[0]) and frame["dropped"].iloc[0] == ""
    acc = tables.mean_accuracy(from_csv)
    assert math.isnan(tables.lookup(acc, "stderr", method="knn", K=0))
    assert tables.lookup(acc, "mean", method="knn", K=2) == pytest.approx(0.4)


def test_headline_k_and_verdicts():
    assert tables.headline_k([0, 4, 8, 12, 16], 32) == 12
    assert tables.headline_k([0, 2, 4, 6, 8], 18) == 6
    assert tables.headline_k([0, 8], 18) == 0
    assert verdicts.compare(0.6, 0.01, 0.5, 0.01) == 1
    assert verdicts.compare(0.5, 0.05, 0.55, 0.05) == 0
    assert verdicts.versus(0.5, 0.01, 0.6, 0.01, "KNN", "cosine") == "cosine ahead"
    assert verdicts.versus(float("nan"), 0, 1, 0, "a", "b") == "not measured"
    assert verdicts.two_stage_verdict([3, 2, 1, 2, 4]).startswith("two-stage: falls over the first 2 layers")
    assert verdicts.two_stage_verdict([1, 2, 3, 4, 5]).startswith("no compression stage")
    assert "does not rise" in verdicts.two_stage_verdict([3, 2, 1, 0.9, 0.5])
    assert verdicts.trend_verdict(-0.8, 0.01).startswith("yes")
    assert verdicts.trend_verdict(0.3, 0.5).startswith("no")
    assert verdicts.ranking({"knn": 90.0, "bucket": 95.0, "renyi": float("nan")}) == "bucket > knn"
    assert verdicts.threshold_verdict(96, 95).startswith("reached")
    assert verdicts.threshold_verdict(93.1, 95).startswith("not reached")
    assert tables.speedup_efficiency(1.18, 1.2) == pytest.approx(0.9)
    assert verdicts.speed_verdict(0.9).startswith("near-linear") and verdicts.speed_verdict(-0.1).startswith("no")
    assert verdicts.speed_verdict(1.5).startswith("beyond") and verdicts.speed_verdict(0.5).startswith("sub-linear")


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
            if ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() and ax.get_ylabel() is not None
    assert made[0].axes[0].get_legend() is not None
    assert made[0]._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # shown in notebooks without pyplot
    paths = figures.save_figure(made[0], tmp_path / "figures" / "profile")
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in paths)
    svg = paths[1].read_text()
    assert "<dc:date>" not in svg
    again = figures.save_figure(made[0], tmp_path / "again")
    assert again[1].read_text() == svg  # no timestamp, fixed hash salt: reruns give identical files
    json.dumps(tables.correlation_matrix(scores, ["knn", "cosine"], "layer").to_dict())
