"""Evaluation: cache keys and resumption, perplexity, sweeps, and stock lm_eval on a pruned checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer, needs_data

from companion.cli import main
from companion.errors import CompanionError
from companion.experiments import evaluation
from companion.experiments.evaluation import EvalSettings, evaluate
from companion.experiments.sweep import COLUMNS, SweepSettings, plan, run_sweep
from companion.method.orders import DropOrder
from companion.model.loading import LoadedModel, load_model
from companion.model.surgery import Pruning, apply_pruning
from companion.names import PERPLEXITY_TASK


def _loaded(model=None) -> LoadedModel:
    return LoadedModel(model or make_tiny_model("llama"), make_tiny_tokenizer(), "tiny", "memory", "test",
                       torch.device("cpu"), torch.float32)


@pytest.fixture
def counted(monkeypatch):
    """Replace lm-eval by a stub that counts calls and returns a value depending on the pruning."""
    calls = []

    def fake(lm, task, settings):
        calls.append(task)
        pruning = getattr(lm.model, "companion_pruning", None)
        value = 0.5 + 0.01 * len(pruning.layers if pruning else [])
        rows = [{"task": task, "metric": "acc", "value": value, "stderr": 0.01, "n": settings.limit}]
        return rows, {"task": [task], "doc_id": [0], "metrics": {"acc": [value]}, "loglik": [[-1.0, -2.0]]}

    monkeypatch.setattr(evaluation, "run_lm_eval", fake)
    return calls


def test_cache_separates_prunings_and_resumes(tmp_path, counted):
    loaded = _loaded()
    settings = EvalSettings(tasks=["piqa", "arc_easy"], limit=5)
    dense = evaluate(loaded, settings, cache=tmp_path)
    assert counted == ["piqa", "arc_easy"]
    assert evaluate(loaded, settings, cache=tmp_path) == [{**r} for r in json.loads(json.dumps(dense))]
    assert counted == ["piqa", "arc_easy"]  # nothing re-run
    pruning = Pruning("attn", [1])
    apply_pruning(loaded.model, pruning)
    pruned = evaluate(loaded, settings, pruning, cache=tmp_path)
    assert counted == ["piqa", "arc_easy"] * 2 and pruned[0]["value"] != dense[0]["value"]
    evaluate(loaded, EvalSettings(tasks=["piqa"], limit=6), pruning, cache=tmp_path)
    assert counted[-1] == "piqa" and len(counted) == 5  # another limit is another entry
    assert len(list(tmp_path.glob("*.json"))) == 5 and not list(tmp_path.glob(".*tmp"))


def test_bad_evaluation_settings():
    with pytest.raises(CompanionError, match="unknown task 'no_such_task'"):
        EvalSettings(tasks=["no_such_task"]).validate()
    with pytest.raises(CompanionError, match="--limit must be a positive number"):
        EvalSettings(limit=0).validate()


@needs_data
def test_perplexity_matches_a_direct_computation():
    loaded = _loaded()
    rows, records = evaluation.perplexity(loaded, seqlen=16, chunks=3)
    from companion.method.calibration import load_rows

    ids = loaded.tokenizer("\n\n".join(load_rows("wikitext2", "test")[0]), return_tensors="pt").input_ids[0]
    chosen = records["doc_id"]
    assert len(chosen) == 3 and chosen == sorted(chosen) and chosen != [0, 1, 2]  # a seeded sample
    windows = ids[: (ids.numel() // 16) * 16].view(-1, 16)[chosen]
    with torch.no_grad():
        logits = loaded.model(windows).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none").sum(1)
    assert rows[0]["task"] == PERPLEXITY_TASK and rows[0]["n"] == 48
    assert rows[0]["value"] == pytest.approx(math.exp(nll.sum().item() / 45), rel=1e-5)
    assert records["metrics"]["nll"] == pytest.approx(nll.tolist(), abs=1e-3)
    assert records["metrics"]["tokens"] == [15.0] * 3


def test_example_samples_are_seeded_nested_and_sorted():
    small, large = evaluation.sample_indices(1000, 20), evaluation.sample_indices(1000, 200)
    assert small == sorted(small) and len(set(small)) == 20 and set(small) <= set(large)
    assert small == evaluation.sample_indices(1000, 20) and small != list(range(20))
    assert evaluation.sample_indices(1000, 20, seed=7) != small
    assert evaluation.sample_indices(5, 20) == list(range(5)) and evaluation.sample_indices(5, None) == list(range(5))
    shards = [evaluation.sample_indices(1000, 20, shard=(i, 3)) for i in range(3)]
    assert sorted(sum(shards, [])) == small and [len(s) for s in shards] == [7, 7, 6]  # disjoint, together the sample
    one = evaluation.sample_indices(1000, 1)
    assert [evaluation.sample_indices(1000, 1, shard=(i, 3)) for i in range(3)] == [one] * 3  # never empty


def _scores(num_layers: int = 4) -> dict:
    knn = [0.3, 0.1, 0.2, 0.4]
    cosine = [0.3, 0.2, 0.1, 0.4]
    blocks = [{"layer": i, "granularity": g, "method": m, "value": v[i]}
              for m, v in (("knn", knn), ("cosine", cosine)) for g in ("attn", "layer") for i in range(num_layers)]
    return {"num_layers": num_layers, "blocks": blocks, "profiles": {"knn": [1.0, 2.0, 3.0, 4.0, 5.0]}}


def test_every_order_protects_the_same_layers_and_the_baselines_are_planned():
    scores = {"num_layers": 6, "blocks": [{"layer": i, "granularity": g, "method": m, "value": float((i * 7 + len(m)) % 5)}
                                       for m in ("knn", "cosine") for g in ("attn", "layer") for i in range(6)],
              "profiles": {"knn": [3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0]}}
    for protect, protected in (("first:2,last:1", [0, 1, 5]), ("auto", [0, 1]), ("none", [])):
        settings = SweepSettings(methods=["knn", "cosine"], drops=[0, 1, 2], protect=protect, random_seeds=3)
        orders, prunings = plan(scores, settings)
        assert {o.method for o in orders} == {"knn", "cosine", "random:0", "random:1", "random:2", "last"}
        assert all(o.protected == protected for o in orders)  # one protocol for criteria and baselines alike
        assert all(not set(p.layers) & set(protected) for p in prunings.values())
        last = next(o for o in orders if o.method == "last" and o.granularity == "attn")
        assert last.drop_set(2) == sorted(i for i in range(6) if i not in protected)[-2:]
    assert len({tuple(o.order) for o in orders if o.method.startswith("random:") and o.granularity == "attn"}) == 3


def test_plan_and_sweep_evaluate_each_distinct_pruning_once(tmp_path, counted, monkeypatch):
    settings = SweepSettings(calibration="toy", methods=["knn", "cosine"], granularities=["attn", "layer"],
                             drops=[0, 1, 2], protect="auto", baselines=[])
    orders, prunings = plan(_scores(), settings)
    assert prunings[("knn", "attn", 1)].layers == [1] and prunings[("cosine", "attn", 2)].layers == [1, 2]
    assert len(orders) == 4 and orders[0].protected == []
    with pytest.raises(CompanionError, match="cannot drop 5"):
        plan(_scores(), SweepSettings(methods=["knn"], granularities=["attn"], drops=[5], protect="auto"))
    scores = {**_scores(), "created": "now", "data": {"source": "toy"}, "key_sha256": "0" * 64}
    monkeypatch.setattr("companion.experiments.sweep.scores_for", lambda *a, **k: scores)
    loaded = _loaded()
    sweep = run_sweep(lambda: loaded, settings, EvalSettings(tasks=["piqa"], limit=4), tmp_path, progress=False)
    rows = sweep["rows"]
    # dense once; attn/layer: {1}, {1,2} (shared by knn and cosine at K=2), {2}: 1 + 2 * 3 = 7 evaluations
    assert len(counted) == 7
    assert len(rows) == 2 * 2 * 3 and set(rows[0]) == set(COLUMNS)
    k2 = [r for r in rows if r["K"] == 2]
    assert {r["dropped"] for r in k2} == {"1 2"} and len({r["value"] for r in k2}) == 1
    table = (tmp_path / "sweep_toy.csv").read_text().splitlines()
    assert table[0] == ",".join(COLUMNS) and len(table) == 13
    stored = json.loads((tmp_path / "sweep_toy.json").read_text())
    assert stored["distinct_prunings"] == 7 and stored["key"]["kind"] == "sweep"
    assert [DropOrder.from_json(o).drop_set(2) for o in stored["orders"]] == [[1, 2], [1, 2], [1, 2], [1, 2]]
    # the same request again: reused as it is, nothing evaluated
    assert run_sweep(lambda: loaded, settings, EvalSettings(tasks=["piqa"], limit=4), tmp_path,
                     progress=False)["created"] == stored["created"] and len(counted) == 7


@needs_data
def test_stock_lm_eval_on_a_pruned_checkpoint_matches_companion(tmp_path, tiny_checkpoint, capsys):
    model_dir = tiny_checkpoint("llama")
    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", model_dir, "--layers", "1,2", "--granularity", "layer", "--out", str(pruned)]) == 0
    tasks_dir = tmp_path / "tasks"
    assert main(["tasks", "--out", str(tasks_dir), "--tasks", "piqa"]) == 0
    settings = EvalSettings(tasks=["piqa"], limit=6, batch_size=2)
    ours = {r["metric"]: r["value"] for r in evaluate(load_model(str(pruned), "cpu", "float32"), settings,
                                                       cache=tmp_path / "cache")}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    sample = json.dumps({"piqa": evaluation.sample_indices(1838, 6)})  # our seeded sample of PIQA's 1838
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={pruned},dtype=float32", "--tasks", "piqa", "--include_path", str(tasks_dir),
                    "--samples", sample, "--batch_size", "2", "--device", "cpu", "--output_path", str(tmp_path / "out")],
                   check=True, env=env, capture_output=True, text=True)
    result = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["piqa"]
    assert result["acc,none"] == pytest.approx(ours["acc"]) and result["acc_norm,none"] == pytest.approx(ours["acc_norm"])


@needs_data
def test_lm_eval_records_are_the_seeded_sample_and_average_to_the_rows(tmp_path):
    loaded = _loaded()
    entry = evaluation.evaluate_entries(loaded, EvalSettings(tasks=["piqa"], limit=6, progress=False), cache=tmp_path)[0]
    records = entry["records"]
    from companion.experiments.evaluation import loaded_task

    size = len(loaded_task("piqa", False, 0)["tasks"]["piqa"].eval_docs)
    assert records["doc_id"] == evaluation.sample_indices(size, 6) and records["task"] == ["piqa"] * 6
    assert all(len(ll) == 2 for ll in records["loglik"])  # PIQA: two choices
    for row in entry["rows"]:
        assert row["value"] == pytest.approx(sum(records["metrics"][row["metric"]]) / 6)
    best = [max(range(2), key=lambda i: ll[i]) for ll in records["loglik"]]
    labels = [loaded_task("piqa", False, 0)["tasks"]["piqa"].eval_docs[i]["label"] for i in records["doc_id"]]
    assert records["metrics"]["acc"] == [float(b == y) for b, y in zip(best, labels)]


@needs_data
def test_per_example_table_averages_to_the_sweep_and_recomputes_a_comparison(tmp_path, monkeypatch):
    """A real sweep (tiny model, lm-eval on PIQA and perplexity): every aggregate value is the mean of its
    per-example rows, and a paired comparison recomputed by hand from those rows agrees."""
    import numpy as np
    from scipy.stats import binomtest

    from companion.analysis.comparisons import comparisons
    from companion.experiments.sweep import read_examples

    scores = {"num_layers": 4, "profiles": {}, "created": "now", "data": {"source": "toy"}, "key_sha256": "0" * 64}
    scores["blocks"] = [{"layer": i, "granularity": g, "method": m, "value": float((i * (3 if m == "knn" else 5)) % 7)}
                        for m in ("knn", "cosine") for g in ("attn", "layer") for i in range(4)]
    monkeypatch.setattr("companion.experiments.sweep.scores_for", lambda *a, **k: scores)
    loaded = _loaded(make_tiny_model("llama", seed=1))
    settings = SweepSettings(calibration="toy", methods=["knn", "cosine"], granularities=["attn"], drops=[0, 2],
                             protect="last:1", random_seeds=2, primary_methods=["knn", "cosine"],
                             primary_limit=12, primary_ppl_chunks=3)
    eval_settings = EvalSettings(tasks=["piqa", PERPLEXITY_TASK], limit=6, ppl_seqlen=32, ppl_chunks=2, progress=False)
    sweep = run_sweep(lambda: loaded, settings, eval_settings, tmp_path, progress=False)
    examples = read_examples(tmp_path, "toy")
    assert set(examples["method"]) == {"knn", "cosine", "random:0", "random:1", "last"}
    piqa = examples[(examples["task"] == "piqa") & (examples["K"] == 2) & (examples["metric"] == "acc")]
    seeds = [set(piqa.loc[piqa["method"] == f"random:{s}", "doc_id"]) for s in range(2)]
    assert not seeds[0] & seeds[1] and seeds[0] | seeds[1] == set(piqa.loc[piqa["method"] == "last", "doc_id"])
    assert len(seeds[0] | seeds[1]) == 6  # the random seeds split the sample between them
    for row in sweep["rows"]:
        mine = examples[(examples["method"] == row["method"]) & (examples["K"] == row["K"])
                        & (examples["task"] == row["task"])]
        if row["metric"] == "perplexity":
            nll, tokens = (mine.loc[mine["metric"] == m, "value"].sum() for m in ("nll", "tokens"))
            assert row["value"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
        else:
            assert row["value"] == pytest.approx(mine.loc[mine["metric"] == row["metric"], "value"].mean())
    assert {row["n"] for row in sweep["rows"] if row["task"] == "piqa"} == {3, 6, 12}  # two tiers, random shards
    table = comparisons(examples)
    got = table[(table["method_a"] == "knn") & (table["method_b"] == "cosine") & (table["metric"] == "accuracy")].iloc[0]
    a, b = (examples[(examples["method"] == m) & (examples["K"] == 2) & (examples["metric"] == "acc")]
            .set_index("doc_id")["value"] for m in ("knn", "cosine"))
    assert got["n"] == 12 and got["diff"] == pytest.approx(100 * (a - b).mean())
    discordant = int((a != b).sum())
    expected_p = binomtest(int(((a == 1) & (b == 0)).sum()), discordant, 0.5).pvalue if discordant else 1.0
    assert got["p_value"] == pytest.approx(expected_p)
    assert got["ci_low"] <= got["diff"] <= got["ci_high"] and np.isfinite(got["mdd"])


def test_p_correct_is_the_softmax_of_the_choice_logliks_at_the_gold():
    assert evaluation.p_correct([-1.0, -2.0, -3.0], [0]) == pytest.approx(1 / (1 + math.exp(-1) + math.exp(-2)))
    assert evaluation.p_correct([-1000.0, -1000.0], [1]) == pytest.approx(0.5)  # no underflow
    assert evaluation.p_correct([-1.0, -2.0, -3.0], [1, 2]) == pytest.approx(
        1 - evaluation.p_correct([-1.0, -2.0, -3.0], [0]))


@needs_data
def test_multiple_choice_records_carry_p_correct_and_lambada_has_records(tmp_path):
    """PIQA (gold = label) and WinoGrande (gold = the context index: several contexts, one continuation)
    get ``p_correct`` = softmax of the stored choice log-likelihoods at the gold, whose argmax is ``acc``;
    LAMBADA (one continuation, chance 0) gets per-example ``acc`` and no ``p_correct``."""
    from companion.experiments.evaluation import loaded_task

    loaded = _loaded(make_tiny_model("llama", seed=4))
    settings = EvalSettings(tasks=["piqa", "winogrande", "lambada_openai"], limit=5, progress=False)
    entries = dict(zip(settings.tasks, evaluation.evaluate_entries(loaded, settings, cache=tmp_path)))
    gold_of = {"piqa": lambda doc: doc["label"], "winogrande": lambda doc: int(doc["answer"]) - 1}
    for task, gold in gold_of.items():
        records = entries[task]["records"]
        docs = loaded_task(task, False, 0)["tasks"][task].eval_docs
        golds = [gold(docs[i]) for i in records["doc_id"]]
        for ll, g, p, acc in zip(records["loglik"], golds, records["metrics"]["p_correct"], records["metrics"]["acc"]):
            expected = math.exp(ll[g]) / sum(math.exp(v) for v in ll)
            assert p == pytest.approx(expected, abs=1e-4)
            assert acc == float(max(range(len(ll)), key=lambda i: ll[i]) == g)
        row = next(r for r in entries[task]["rows"] if r["metric"] == "p_correct")
        assert row["value"] == pytest.approx(sum(records["metrics"]["p_correct"]) / 5) and row["n"] == 5
    lambada = entries["lambada_openai"]
    assert len(lambada["records"]["doc_id"]) == 5 and "p_correct" not in lambada["records"]["metrics"]
    assert len(lambada["records"]["metrics"]["acc"]) == 5 and all(len(ll) == 1 for ll in lambada["records"]["loglik"])
    assert {"acc", "perplexity"} <= {r["metric"] for r in lambada["rows"]}


def test_a_sweep_scores_its_own_pass_criteria_at_its_granularities_and_largest_k():
    from companion.experiments.sweep import score_settings

    settings = SweepSettings(methods=["knn", "ppl", "sleb"], granularities=["layer"], drops=[0, 2, 5])
    chosen = score_settings(settings)
    assert chosen.own_passes == ["ppl", "sleb"] and chosen.granularities == ["layer"]
    assert chosen.estimator_params("sleb")["k_max"] == 5  # SLEB stops at the sweep's largest K
    assert "k_max" not in chosen.estimator_params("ppl")
    assert chosen.key()["granularities"] == ["layer"]
    one_pass = score_settings(SweepSettings(methods=["knn", "cosine"], drops=[0, 2]))
    assert not one_pass.own_passes and "granularities" not in one_pass.key()


def test_the_primary_tier_enlarges_the_tasks_of_mean_accuracy_and_perplexity_only():
    settings = SweepSettings(primary_limit=300, primary_ppl_chunks=8)
    plain = EvalSettings(tasks=["piqa", "lambada_openai", "hellaswag", PERPLEXITY_TASK], limit=20, ppl_chunks=4)
    wide = settings.primary_evaluation(plain)
    assert wide.tasks == ["piqa", "hellaswag", PERPLEXITY_TASK]  # LAMBADA (chance 0) keeps the plain limit
    assert wide.limit == 300 and wide.ppl_chunks == 8 and plain.limit == 20
