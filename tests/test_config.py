"""The typed run configuration: profiles, the one resolver, what a user states, and the runs it makes."""

from __future__ import annotations

import pytest

from companion.errors import CompanionError
from companion.method import orders
from companion.names import GUESSED_PAPER_TASKS, PAPER_TASKS, PERPLEXITY_TASK
from companion.pipeline import PROFILES, additions, build_run, from_parameters, model_runs, resolve

LAYERS = {"gemma-3-270m": 18, "smollm2-135m": 30}


@pytest.fixture
def layers(monkeypatch):
    monkeypatch.setattr("companion.model.loading.model_num_layers", lambda spec: LAYERS.get(spec, 4))


def test_profiles_are_instances_and_share_one_protocol():
    assert {config.protect for config in PROFILES.values()} == {"first:2,last:1"}
    paper = resolve("paper")
    assert paper.dtype == "float16" and paper.calibrations[0] == "c4:train"
    assert (paper.samples, paper.seqlen, paper.seed, paper.drops) == (128, 256, 2024, (0, 4, 8, 12, 16))
    assert paper.tasks == (*PAPER_TASKS, *GUESSED_PAPER_TASKS, PERPLEXITY_TASK)
    assert resolve("paper", {"dtype": "bfloat16"}).dtype == "bfloat16"


def test_notebook_parameters_resolve_against_the_profile(layers, tmp_path):
    run = from_parameters({"profile": "smoke", "model": None, "samples": None, "seed": None, "limit": None,
                           "results_dir": str(tmp_path)})
    assert run.model == "gemma-3-270m" and run.samples == 8 and run.seed == 2024 and run.limit == 8
    assert run.calibrations == ["wikitext2", "c4"] and run.out_dir == tmp_path / "smoke" / "gemma-3-270m"
    assert from_parameters({"profile": "smoke", "seed": 0}).seed == 0  # seed 0 can be chosen
    assert from_parameters({"profile": "smoke", "limit": -1}).limit is None
    run = from_parameters({"profile": "paper", "model": "meta-llama/Llama-3.1-8B", "calibration": "c4",
                           "estimators": "knn, cosine", "drops": "4,8", "samples": 16, "limit": 5,
                           "results_dir": "r"})
    assert run.out_dir.as_posix() == "r/paper/meta-llama__Llama-3.1-8B"
    assert run.methods == ["knn", "cosine"] and run.entropy_methods == ["knn"] and run.similarity_methods == ["cosine"]
    assert run.drops == [0, 1] and run.samples == 16 and run.limit == 5 and run.calibrations == ["c4"]
    assert run.sweep_settings().drops == [0, 1] and run.eval_settings().limit == 5
    assert "c4: 16 samples × 256 tokens, seed 2024" in run.caption(evaluation=True)
    smoke = from_parameters({"profile": "smoke"})
    assert "Gemma-3-270M from a Q4_K_M GGUF (18 layers)" in smoke.caption()
    counts = {"total": 268_098_176, "embedding": 167_772_160, "layer": 5_322_880}
    assert smoke.describe_model({"model": {"parameters": counts}}).endswith(
        "embeddings are 63 % of its 268 M parameters, so one layer is about 2 % of them")


@pytest.mark.parametrize("values", [{"samples": 0}, {"limit": 0}, {"limit": -2}, {"granularities": "heads"},
                                    {"estimators": "entropyy"}, {"protect": "first2"}, {"data_source": "web"},
                                    {"samples": "many"}])
def test_bad_settings_are_one_line_errors(values):
    with pytest.raises(CompanionError) as error:
        resolve("smoke", values)
    assert "\n" not in str(error.value)


def test_what_the_user_states_wins(layers):
    stated = {"model": "gemma-3-270m", "calibration": "wikitext2", "estimators": "knn,cosine",
              "granularities": "attn", "drops": "0,2", "tasks": "piqa", "limit": 10}
    plain = build_run(resolve(None, stated))  # no profile chosen: only what was asked for
    sweep = plain.sweep_settings()
    assert plain.drops == [0, 2] and sweep.methods == ["knn", "cosine"] and sweep.granularities == ["attn"]
    assert sweep.baseline_names == [] and sweep.primary_limit is None and plain.calibrations == ["wikitext2"]
    assert plain.eval_settings().limit == 10 and plain.eval_settings().tasks == ["piqa"]
    assert additions(plain.config) == []
    chosen = build_run(resolve("default", {"limit": 10, "estimators": "knn,bucket"}))
    assert chosen.config.primary_limit is None  # a stated limit bounds every evaluation
    assert chosen.config.primary_methods == ("knn",) and chosen.config.curve_methods == ("knn",)
    assert any("baselines" in line for line in additions(chosen.config))
    assert chosen.speed_settings()["repeats"] == 3 and build_run(resolve("default", {"limit": 2})).speed_settings()[
        "repeats"] == 2
    assert chosen.eval_settings().ppl_windows == 10 and resolve("paper", {"limit": 2}).ppl_chunks == 2
    assert resolve("default", {"limit": 40}).ppl_chunks == 16 and resolve("default", {"limit": -1}).ppl_chunks == 16


def test_default_profile_runs_both_models_with_their_own_drops_and_sizes(layers):
    run = from_parameters({"profile": "default"})
    assert run.models == ["gemma-3-270m", "smollm2-135m"] and run.calibration == "c4"
    gemma, smol = model_runs(run)
    assert gemma is run and smol.model == "smollm2-135m" and smol.out_dir.name == "smollm2-135m"
    assert gemma.drops == [0, 1, 2, 3, 4, 5, 7] and smol.drops == [0, 2, 3, 5, 6, 8, 11]  # six K up to 37.5 %
    assert orders.headline_k(gemma.drops, 18) == 7 and orders.headline_k(smol.drops, 30) == 11
    first, second = smol.sweep_settings(), smol.sweep_settings("wikitext2")
    assert first.primary_limit == 380 and smol.limit == 20 and gemma.sweep_settings().primary_limit == 400
    assert gemma.limit == 8 and gemma.eval_settings().ppl_windows == smol.eval_settings().ppl_windows == 16
    assert first.protect == second.protect == "first:2,last:1"
    assert second.drops == [0, 11] and second.primary_limit is None  # the second calibration set: headline K only
    assert second.methods == ["knn", "cosine"]  # ... for the primary criteria
    assert first.baseline_names == ["random:0", "random:1", "random:2", "random:3", "random:4", "last"]
    assert from_parameters({"profile": "default", "model": "smollm2-135m"}).models == ["smollm2-135m"]
    assert smol.for_model("gemma-3-270m").config == gemma.config


def test_a_local_model_is_named_by_its_folder_never_its_path(layers, tmp_path):
    folder = tmp_path / "x" / "tiny-llama"
    folder.mkdir(parents=True)
    run = from_parameters({"profile": "paper", "model": str(folder), "results_dir": "r"})
    assert run.label == "tiny-llama" and run.out_dir.as_posix() == "r/paper/tiny-llama"


def test_the_summary_records_every_setting_and_what_was_stated():
    text = resolve("smoke", {"limit": 3}).summary()
    assert "limit: 3 (stated)" in text and "samples: 8\n" in text and "profile: smoke" in text
