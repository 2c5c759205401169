"""The real default model (Gemma-3-270M from PyPI), on a few short windows."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from companion.cli import main
from companion.model.loading import load_model
from companion.model.surgery import Pruning, apply_pruning

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default_model():
    return load_model("gemma-3-270m", device="cpu", dtype="float32")


def test_score_then_prune_the_default_model(tmp_path, capsys):
    scores = tmp_path / "scores.json"
    assert main(["score", "--data", "wikitext2", "--samples", "4", "--seqlen", "64", "--knn-k", "5",
                 "--quiet", "--out", str(scores)]) == 0
    result = json.loads(scores.read_text())
    assert result["num_layers"] == 18 and result["model"]["model_type"] == "gemma3_text"
    assert result["data"]["origin"] == "local" and len(result["data"]["windows"]) == 4
    assert all(len(v) == 19 for v in result["profiles"].values())
    capsys.readouterr()
    assert main(["order", str(scores), "--method", "knn", "--granularity", "attn"]) == 0
    order = [int(v) for v in capsys.readouterr().out.split()]
    assert len(order) == len(set(order)) and set(order) <= set(range(18))

    out = tmp_path / "pruned"
    assert main(["prune", "--scores", str(scores), "--method", "bucket", "--granularity", "layer", "--drop", "3",
                 "--out", str(out)]) == 0
    pruned = load_model(str(out), device="cpu", dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = pruned.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, pruned.model(ids).logits, rtol=0, atol=0)
    assert plain.config.num_hidden_layers == 15


def test_attention_dropped_at_layer_zero_still_generates(default_model):
    model = default_model.model
    ids = default_model.tokenizer("The capital of France is", return_tensors="pt").input_ids
    import copy

    pruned = copy.deepcopy(model)
    apply_pruning(pruned, Pruning("attn", [0, 5, 9]))
    with torch.no_grad():
        cached = pruned.generate(ids, max_new_tokens=6, do_sample=False)
        uncached = pruned.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
