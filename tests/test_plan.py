"""The paper profile's settings, the plan and its time estimate, limits on perplexity, clipped drop counts."""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import make_tiny_model, make_tiny_tokenizer, needs_data

from companion.errors import CompanionError
from companion.experiments import plan as planning
from companion.experiments.evaluation import EvalSettings, evaluate, evaluation_key
from companion.experiments.sweep import fit_drops, scores_path, sweep_path
from companion.method.calibration import (
    check_available,
    load_documents,
    parse_calibration,
)
from companion.model.loading import LoadedModel, resolve_dtype
from companion.names import PERPLEXITY_TASK


def test_fp16_runs_on_cpu_too():
    assert resolve_dtype("float16", torch.device("cpu")) is torch.float16


def test_calibration_names_carry_a_split(monkeypatch):
    assert parse_calibration("c4:train") == ("c4", "train")
    assert parse_calibration("c4") == ("c4", None)
    assert parse_calibration("/data/my:docs.txt") == ("/data/my:docs.txt", None)
    with pytest.raises(CompanionError, match="names no split"):
        parse_calibration("c4:")
    assert scores_path("out", "c4:train").name == "scores_c4-train.json"
    assert sweep_path("out", "c4").name == "sweep_c4.json"
    monkeypatch.setattr("companion.method.calibration.hub_reachable", lambda: False)
    for call in (lambda: check_available("c4", "train"), lambda: load_documents("c4:train", data_source="local")):
        with pytest.raises(CompanionError) as error:
            call()
        message = str(error.value)
        assert "\n" not in message and "en/c4-train.00000-of-01024.json.gz" in message and "--calibration" in message
    check_available("c4", "validation")  # a local copy exists


def test_fit_drops_clips_to_the_prunable_layers(caplog):
    assert fit_drops([0, 4, 8, 12, 16], 32, "first:2,last:1") == [0, 4, 8, 12, 16]
    assert not caplog.records
    assert fit_drops([0, 4, 8, 12, 16], 4, "first:2,last:1", "tiny") == [0, 1]
    (note,) = [r.getMessage() for r in caplog.records]
    assert "K = 4, 8, 12, 16" in note and "1 prunable layers of tiny" in note
    assert fit_drops([0, 8, 4], 4, "auto") == [0, 4, 8]  # unknown before scoring: left to the drop order


def test_limit_bounds_perplexity_windows_and_the_key():
    assert EvalSettings(limit=None, ppl_chunks=None).ppl_windows is None
    assert EvalSettings(limit=2, ppl_chunks=None).ppl_windows == 2
    assert EvalSettings(limit=8, ppl_chunks=1).ppl_windows == 1
    assert EvalSettings(limit=8, ppl_chunks=16).ppl_windows == 16  # a profile's windows beside fewer examples
    keys = [evaluation_key({"spec": "m"}, None, PERPLEXITY_TASK, EvalSettings(tasks=[PERPLEXITY_TASK], limit=limit,
                                                                              data_source="local"))
            for limit in (2, 3)]
    assert [k["ppl_chunks"] for k in keys] == [2, 3]
    from companion.experiments.sweep import SweepSettings, sweep_key

    settings = EvalSettings(tasks=[PERPLEXITY_TASK], limit=8, ppl_chunks=16, data_source="local")
    key = sweep_key({"key_sha256": "s"}, SweepSettings(), settings, {"spec": "m"})
    assert key["evaluation"]["ppl_windows"] == 16  # a sweep's key records the windows evaluated


@needs_data
def test_perplexity_evaluates_at_most_limit_windows(tmp_path):
    loaded = LoadedModel(make_tiny_model("llama"), make_tiny_tokenizer(), "tiny", "memory", "test",
                         torch.device("cpu"), torch.float32)
    settings = EvalSettings(tasks=[PERPLEXITY_TASK], limit=2, ppl_seqlen=32, data_source="local", progress=False)
    assert evaluate(loaded, settings, cache=tmp_path)[0]["n"] == 2 * 32


def test_counting_arithmetic():
    from companion.experiments.sweep import SweepSettings

    plain = [SweepSettings(calibration=c, methods=["knn", "bucket", "renyi", "cosine"], drops=[0, 4, 8, 12, 16],
                           baselines=[]) for c in ("c4", "wikitext2")]
    assert planning.pruning_upper_bound(plain) == (1 + 2 * 4 * 2 * 4, 0)
    tiered = [SweepSettings(calibration="c4", methods=["knn", "bucket", "cosine"], drops=[0, 2, 4, 6],
                            curve_methods=["knn", "cosine"], primary_methods=["knn", "cosine"], primary_limit=100),
              SweepSettings(calibration="wikitext2", methods=["knn", "bucket", "cosine"], drops=[0, 2],
                            curve_methods=["knn", "cosine"])]
    # dense + c4: 2 curves × 2 granularities × 3 K + bucket at the headline + wikitext2: 3 methods × 2 × 1
    # + baselines once: random (5 seeds on shards of the examples: one pruning's cost) and last × 2
    # granularities × 3 K; primary: dense + 2 × 2
    assert planning.pruning_upper_bound(tiered) == (1 + 12 + 2 + 6 + 12, 5)
    assert planning.pruning_upper_bound(tiered, limit=3) == (1 + 12 + 2 + 6 + 36, 5)  # too few to split: 6 orders
    assert planning.perplexity_windows(10_000, 2048, None) == 4
    assert planning.perplexity_windows(10_000, 2048, 2) == 2
    words = lambda texts: [len(t.split()) for t in texts]  # noqa: E731
    pairs = [("a b c", " d"), ("a b c", " e f"), ("g h", " i")]
    assert planning.forwarded_tokens(pairs, words) == 3 + 2 + 1 + 2 + 1
    assert planning.char_lengths(4)(["abcd", "abcde", ""]) == [1, 2, 0]


def test_criteria_and_yardstick_costs_count_their_passes():
    from companion.method.scoring import ScoreSettings

    assert planning.removal_passes("ppl", {}, 10) == 11  # one pass, and one per candidate removed
    assert planning.removal_passes("sleb", {"k_max": 3}, 10) == 11 + 10 + 9  # each step over what is left
    assert planning.removal_passes("sleb", {"k_max": None}, 3) == 4 + 3
    assert planning.removal_passes("taylor", {}, 10) == 3 and planning.removal_passes("knn", {}, 10) == 0
    settings = ScoreSettings(estimators=["knn", "ppl", "taylor"], params={"ppl": {"windows": 4}},
                             granularities=["attn", "layer"])
    taylor_windows = min(settings.estimator_params("taylor")["windows"], 64)
    expected = 2 * (11 * 4 * 256 * 0.5 + 3 * taylor_windows * 256)
    assert planning.own_pass_tokens(settings, 10, 64, 256, 0.5) == pytest.approx(expected)
    assert planning.yardstick_tokens(12, 3, 16, 256, 0.5) == 3 * (1 + 12 * 0.5) * 16 * 256


def _plan(**changes) -> planning.Plan:
    tasks = [planning.TaskCount("piqa", 2, 4, 1_000), planning.TaskCount("boolq", 2, 4, 500),
             planning.TaskCount(PERPLEXITY_TASK, 2, 2, 4_096)]
    values = dict(models=["a", "b"], calibrations=["c4", "wikitext2"], samples=128, seqlen=256, prunings=10,
                  exact=False, tasks=tasks, limit=2, speed_runs=4, speed_prompt=100, speed_new_tokens=11,
                  speed_timed=3)
    return planning.Plan(**{**values, **changes})


def test_estimate_arithmetic():
    plan = _plan()
    est = planning.estimate_seconds(plan, planning.Throughput(1_000.0, 0.01, "test"))
    assert est["scoring"] == pytest.approx(2 * 128 * 256 / 1_000)
    assert est["evaluation"] == pytest.approx(10 * 5_596 / 1_000)
    assert est["speed"] == pytest.approx(4 * 3 * (100 / 1_000 + 10 * 0.01))
    assert est["total"] == pytest.approx(2 * (est["scoring"] + est["evaluation"] + est["speed"]))
    assert plan.evaluations == 30 and planning.typical_length(plan) == round(1_500 / 8)
    with pytest.raises(CompanionError):
        planning.estimate_seconds(plan, planning.Throughput(0.0, 0.01, "test"))


def test_format_plan_marks_guesses_bounds_and_estimates():
    text = planning.format_plan(_plan(), planning.Throughput(1_000.0, 0.01, "test"))
    assert "at most 10 distinct" in text and "boolq*" in text and "* our guess" in text and "piqa*" not in text
    assert "estimate" in text and "min" in text
    assert "at most" not in planning.format_plan(_plan(exact=True))


def test_throughput_from_flops_matches_the_closed_form():
    config = transformers.LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    # per token at length 1: projections 2·64·16·(8+4)·2 layers, MLP 2·3·64·128·2 layers, LM head 2·64·1000
    per_token = 2 * 64 * 16 * 12 * 2 + 4 * 4 * 16 * 1 * 2 + 2 * 3 * 64 * 128 * 2 + 2 * 64 * 1000
    assert planning.flops_per_token(config, 1) == per_token
    fast = planning.throughput_from_flops(config, tflops=1e-6, mfu=0.5, seqlen=1, bandwidth_gbs=1e6)
    assert fast.tokens_per_second == pytest.approx(0.5e6 / per_token)
    assert fast.decode_step_seconds == pytest.approx(per_token / 0.5e6)  # compute-bound at this bandwidth
    slow = planning.throughput_from_flops(config, tflops=1e3, mfu=0.5, seqlen=1, bandwidth_gbs=1)
    assert slow.decode_step_seconds == pytest.approx(planning.weight_bytes(config) / 1e9)  # memory-bound
    with pytest.raises(CompanionError):
        planning.throughput_from_flops(config, tflops=312, mfu=1.5, seqlen=1, bandwidth_gbs=1)


@needs_data
def test_count_task_respects_the_limit():
    settings = EvalSettings(tasks=["piqa", PERPLEXITY_TASK], limit=3, ppl_seqlen=64, data_source="local")
    piqa = planning.count_task("piqa", settings, planning.char_lengths())
    assert (piqa.docs, piqa.requests) == (3, 6) and piqa.tokens > 0  # two solutions per question
    ppl = planning.count_task(PERPLEXITY_TASK, settings, planning.char_lengths())
    assert (ppl.docs, ppl.tokens) == (3, 3 * 64)
