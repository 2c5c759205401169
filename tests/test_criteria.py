"""The criterion registry: one entry per criterion, what derives from it, and a criterion with passes of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer

from companion.analysis import figures
from companion.errors import CompanionError
from companion.method import criteria
from companion.method.calibration import Documents, Windows
from companion.method.orders import drop_order
from companion.method.scoring import ScoreSettings, score, scores_key
from companion.model.loading import LoadedModel
from companion.model.surgery import Pruning, temporarily_pruned
from companion.pipeline import resolve

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Cost:
    passes: int


@dataclass
class Result:
    scores: dict
    cost: Cost
    details: dict


def nll_without_block(model, input_ids, granularity, candidates, scale: float = 1.0) -> Result:
    """A test criterion with passes of its own: mean next-token NLL with each candidate block removed."""
    values = {}
    with torch.no_grad():
        for layer in candidates:
            with temporarily_pruned(model, Pruning(granularity, [layer])):
                values[layer] = scale * float(model(input_ids, labels=input_ids).loss)
    return Result(values, Cost(len(candidates)), {})


@pytest.fixture
def toy_criterion():
    criteria.register(criteria.Criterion("toy_nll", "toy NLL without the block", "removal", "forward",
                                         f"{__name__}:nll_without_block", {"scale": 1.0}, role="rival",
                                         color="#123456", marker="*"))
    yield "toy_nll"
    criteria.unregister("toy_nll")


def _loaded(model) -> LoadedModel:
    return LoadedModel(model, make_tiny_tokenizer(), "tiny", "memory", "test", torch.device("cpu"), torch.float32)


def test_a_criterion_with_its_own_forward_passes_plugs_in(toy_criterion):
    model = make_tiny_model("llama")
    ids = torch.randint(4, 96, (3, 12), generator=torch.Generator().manual_seed(0))
    windows = Windows(ids, [0, 1, 2], [0, 0, 0])
    docs = Documents(["w1 w2"], "test", "test", "file", "t", "0")
    settings = ScoreSettings(estimators=["knn", "cosine", toy_criterion], params={"knn": {"k": 3}},
                             protect="first:1,last:1")
    scores = score(_loaded(model), docs, windows, settings, progress=False)
    assert scores["own_passes"][toy_criterion]["attn"]["cost"] == {"passes": 2}
    for granularity in ("attn", "mlp", "layer"):
        order = drop_order(scores, toy_criterion, granularity, "first:1,last:1")
        expected = nll_without_block(model, ids, granularity, [1, 2]).scores
        assert order.order == sorted(expected, key=lambda i: (expected[i], i))
        assert order.protected == [0, 3]
    with pytest.raises(CompanionError, match="other protected layers"):
        drop_order(scores, toy_criterion, "attn", "none")  # layer 0 was never a candidate
    key = scores_key({"spec": "tiny"}, docs.provenance(), 3, 12, 0, settings)
    assert key["protect"] == "first:1,last:1" and key["params"][toy_criterion] == {"scale": 1.0}
    assert resolve("smoke", {"estimators": f"knn,{toy_criterion}"}).methods == ("knn", toy_criterion)
    assert figures.label(toy_criterion) == "toy NLL without the block" and figures.color(toy_criterion) == "#123456"


def test_the_one_pass_key_has_no_protect_rule():
    assert "protect" not in ScoreSettings().key()
    assert ScoreSettings().key()["params"] == {"knn": {"k": 25}, "bucket": {"bins": 80}, "renyi": {"alpha": 4.0},
                                               "knn_unit": {"k": 25}, "bucket_mm": {"bins": 80}}


def test_registry_entries_are_complete_and_lookups_fail_in_one_line():
    for criterion in criteria.CRITERIA.values():
        assert criterion.label and criterion.color and criterion.marker
        if criterion.needs != "none":
            assert callable(criterion.load())
    assert criteria.label("random:3") == "random (seed 3)" and criteria.get("random:3").name == "random"
    with pytest.raises(CompanionError):
        criteria.register(criteria.get("knn"))  # a name is registered once
    with pytest.raises(CompanionError):
        criteria.get("random").load()  # a baseline computes nothing


def test_the_analysis_imports_without_torch_or_transformers():
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        import companion.analysis as analysis
        for module in pkgutil.iter_modules(analysis.__path__):
            importlib.import_module(f"companion.analysis.{module.name}")
        import companion.method.criteria
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_fields_criteria_score_through_the_registry():
    from companion.method import removal

    model = make_tiny_model("llama")
    ids = torch.randint(4, 96, (4, 12), generator=torch.Generator().manual_seed(1))
    docs = Documents(["w1 w2"], "test", "test", "file", "t", "0")
    settings = ScoreSettings(estimators=["knn", "ppl", "sleb", "taylor"], params={"knn": {"k": 3}},
                             protect="first:1")
    scores = score(_loaded(model), docs, Windows(ids, [0, 1, 2, 3], [0] * 4), settings, progress=False)
    for name in ("ppl", "sleb", "taylor"):
        assert scores["own_passes"][name]["layer"]["cost"]["seconds"] >= 0
        assert drop_order(scores, name, "mlp", "first:1").protected == [0]
    direct = removal.ppl(model, ids[:16], "attn", [1, 2, 3]).scores
    assert drop_order(scores, "ppl", "attn", "first:1").order == sorted(direct, key=lambda i: (direct[i], i))
    assert scores["own_passes"]["sleb"]["layer"]["details"]["order"] == drop_order(scores, "sleb", "layer",
                                                                                   "first:1").order[:2]
