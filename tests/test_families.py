"""Every supported family end to end, on a tiny random model built here (conftest.TINY_FAMILIES).

Per family: the one-pass scores at all three granularities, with the mid point checked against a
recomputation (the layer's output with its MLP dropped); drop orders; pruned models against a reference
whose dropped blocks output zeros; a layer-pruned checkpoint that plain transformers reloads; an
attention-pruned checkpoint that the companion's loader reloads without the removed blocks; greedy
generation with a KV cache after pruning; FastHFLM against stock HFLM.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
from conftest import TINY_FAMILIES, make_family_model, make_tiny_tokenizer
from lm_eval.api.instance import Instance
from transformers import AutoConfig, AutoModelForCausalLM

from companion.errors import CompanionError
from companion.experiments.fastlm import make_lm
from companion.method import estimators
from companion.method.calibration import Documents, Windows
from companion.method.orders import drop_order
from companion.method.scoring import ScoreSettings, score
from companion.model import layouts
from companion.model.checkpoints import save_pruned
from companion.model.loading import LoadedModel, load_model
from companion.model.surgery import (
    Pruning,
    SkippedAttention,
    SkippedMLP,
    apply_pruning,
    temporarily_pruned,
)
from companion.names import GRANULARITIES

SETTINGS = ScoreSettings(estimators=["knn", "cosine"], params={"knn": {"k": 3}}, batch_size=4)
DOCS = Documents(["a"], "toy", "file", "local", "toy.txt", "0" * 64)
IDS = torch.randint(3, 96, (2, 9), generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module", params=sorted(TINY_FAMILIES))
def model(request) -> torch.nn.Module:
    return make_family_model(request.param)


def _loaded(model) -> LoadedModel:
    return LoadedModel(model, make_tiny_tokenizer(), "tiny", "memory", "test", torch.device("cpu"), torch.float32)


def _windows() -> Windows:
    ids = torch.randint(3, 96, (4, 10), generator=torch.Generator().manual_seed(1))
    return Windows(ids, list(range(4)), [0] * 4, 1)


def _dropped(model, granularity: str, count: int = 2) -> list[int]:
    """The last ``count`` prunable blocks (so that the hybrid stacks drop an attention)."""
    return layouts.prunable(model, granularity)[-count:]


def _zeroed(model, granularity: str, layers: list[int]):
    """Reference: a copy whose dropped blocks output zeros (the sub-layer and its own norms), or whose
    dropped layers return their input."""
    reference = copy.deepcopy(model)
    blocks = layouts.layer_blocks(reference)
    for i in layers:
        layer = layouts.decoder_layers(reference)[i]
        if granularity == "layer":
            layer.register_forward_hook(_identity, with_kwargs=True)
            continue
        names = (blocks[i].attn, *blocks[i].attn_norms) if granularity == "attn" else (
            blocks[i].mlp, *blocks[i].mlp_norms)
        for name in names:
            getattr(layer, name).register_forward_hook(
                lambda _m, _a, out: torch.zeros_like(out) if torch.is_tensor(out) else (
                    torch.zeros_like(out[0]), *out[1:]))
    return reference


def _identity(_module, args, kwargs, out):
    """A forward hook that makes a decoder layer return its input (in the structure the layer returns)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    return hidden if torch.is_tensor(out) else (hidden, *out[1:])


def _logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def test_scores_and_mid_point_match_a_recomputation(model):
    """The mid point the hooks read equals the layer's output when its MLP is dropped (input + attention)."""
    result = score(_loaded(model), DOCS, _windows(), SETTINGS, progress=False)
    num_layers = len(layouts.decoder_layers(model))
    assert result["num_layers"] == num_layers
    assert len(result["blocks"]) == num_layers * len(GRANULARITIES) * 2
    mids = result["per_sample"]["norm"]["rms"]["mid"]
    for i in range(num_layers):
        outputs = []
        layer = layouts.decoder_layers(model)[i]
        handle = layer.register_forward_hook(lambda _m, _a, out, seen=outputs: seen.append(out))
        with temporarily_pruned(model, Pruning("mlp", [i])), torch.no_grad():
            layouts.decoder(model)(input_ids=_windows().input_ids, use_cache=False)
        handle.remove()
        out = outputs[0] if torch.is_tensor(outputs[0]) else outputs[0][0]
        torch.testing.assert_close(torch.tensor(mids[i]), estimators.rms(out), rtol=1e-5, atol=1e-6)
    for granularity in GRANULARITIES:  # every block a layer has, and only those (hybrid: attention layers)
        order = drop_order(result, "knn", granularity, "none")
        assert sorted(order.order) == layouts.prunable(model, granularity)
        assert sorted(order.order + order.protected) == list(range(num_layers))


def _generates_alike(model) -> None:
    """Greedy generation with the KV cache gives the tokens of generation without it."""
    with torch.no_grad():
        cached = model.generate(IDS[:1], max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(IDS[:1], max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def _requests() -> list[Instance]:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(92)]
    pairs = []
    for _ in range(2):
        context = " ".join(rng.choices(words, k=rng.randint(3, 8)))
        pairs += [(context, " " + " ".join(rng.choices(words, k=rng.randint(1, 3)))) for _ in range(3)]
    pairs.append((" ".join(rng.choices(words, k=30)), " w5 w6"))  # truncated at max_length
    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


STOCK_SCORED = {"deepseek_v2", "deepseek_v3", "lfm2", "lfm3", "qwen3_5_moe_text", "qwen3_5_text", "qwen3_next"}
"""Families FastHFLM's probe sends to stock scoring: two-pass scoring with a shared context does not give
their one-pass logits (linear-attention and convolution states, multi-head latent attention's cache)."""


def _fastlm_matches_stock(model) -> None:
    tokenizer = make_tiny_tokenizer()
    stock = make_lm(model, tokenizer, batch_size=4, fast=False, max_length=16).loglikelihood(
        _requests(), disable_tqdm=True)
    fast_lm = make_lm(model, tokenizer, batch_size=4, fast=True, max_length=16)
    assert fast_lm._fast == (model.config.model_type not in STOCK_SCORED)
    fast = fast_lm.loglikelihood(_requests(), disable_tqdm=True)
    assert [ll for ll, _ in fast] == pytest.approx([ll for ll, _ in stock], abs=1e-4)
    assert [greedy for _, greedy in fast] == [greedy for _, greedy in stock]


def test_attention_pruning_saves_reloads_generates_and_evaluates(model, tmp_path):
    """Dropped attention = zero attention output; the companion's loader rebuilds the compute-free model
    from the checkpoint; greedy decoding with the cache and FastHFLM still agree with their references."""
    dropped = _dropped(model, "attn")
    pruned = copy.deepcopy(model)
    report = apply_pruning(pruned, Pruning("attn", dropped))
    assert report["params_after"] < report["params_before"]
    torch.testing.assert_close(_logits(pruned), _logits(_zeroed(model, "attn", dropped)), rtol=1e-5, atol=1e-5)
    save_pruned(pruned, make_tiny_tokenizer(), tmp_path)
    reloaded = load_model(str(tmp_path), device="cpu", dtype="float32").model
    for i, (layer, blocks) in enumerate(zip(layouts.decoder_layers(reloaded), layouts.layer_blocks(reloaded))):
        module = getattr(layer, blocks.attn)
        assert isinstance(module, SkippedAttention) == (i in dropped)
        assert i not in dropped or not list(module.parameters())
    torch.testing.assert_close(_logits(reloaded), _logits(pruned), rtol=0, atol=0)
    _generates_alike(reloaded)
    _fastlm_matches_stock(reloaded)


def test_mlp_pruning_zeroes_the_mlp(model):
    dropped = _dropped(model, "mlp")
    pruned = copy.deepcopy(model)
    report = apply_pruning(pruned, Pruning("mlp", dropped))
    assert report["params_after"] < report["params_before"]
    assert all(isinstance(getattr(layouts.decoder_layers(pruned)[i], b.mlp), SkippedMLP)
               for i, b in enumerate(layouts.layer_blocks(pruned)) if i in dropped)
    torch.testing.assert_close(_logits(pruned), _logits(_zeroed(model, "mlp", dropped)), rtol=1e-5, atol=1e-5)


def test_layer_pruning_reloads_in_plain_transformers_and_generates(model, tmp_path):
    pruned = copy.deepcopy(model)
    apply_pruning(pruned, Pruning("layer", [0, 2]))
    torch.testing.assert_close(_logits(pruned), _logits(_zeroed(model, "layer", [0, 2])), rtol=1e-5, atol=1e-5)
    save_pruned(pruned, make_tiny_tokenizer(), tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert layouts.text_config(plain).num_hidden_layers == 2
    torch.testing.assert_close(_logits(plain), _logits(pruned), rtol=1e-5, atol=1e-5)
    _generates_alike(plain)


REFUSED_EXAMPLES = {"mamba": {}, "falcon_mamba": {}, "nemotron_h": {}, "gpt2": {}, "opt": {}, "bart": {},
                    "xglm": {}, "rwkv": {}, "bloom": {}}


def _refusals() -> dict[str, str]:
    errors = {}
    for name, extra in REFUSED_EXAMPLES.items():
        small = {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 4}
        config = AutoConfig.for_model(name, **{**small, **extra})
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        with pytest.raises(CompanionError) as error:
            layouts.layer_blocks(model)
        errors[name] = str(error.value)
    return errors


def test_refused_families_end_in_one_line():
    for name, message in _refusals().items():
        assert message.startswith(f"unsupported architecture '{name}': ") and "\n" not in message


def test_tables_in_the_docs_are_generated_from_the_registry_and_the_tested_families():
    """README and book/new_model.md carry the tables that layouts renders (run this file's
    ``_render_docs`` to update them after adding a family or a layout)."""
    assert set(TINY_FAMILIES) == set(layouts.FAMILIES)
    expected = _tables()
    for path, names in DOC_TABLES.items():
        text = (ROOT / path).read_text()
        for name in names:
            assert _between(text, name) == expected[name], f"{path}: table '{name}' is stale; run _render_docs()"


ROOT = Path(__file__).resolve().parents[1]
DOC_TABLES = {"README.md": ["layouts"], "book/new_model.md": ["layouts", "families", "refused"]}


def _tables() -> dict[str, str]:
    with torch.device("meta"):
        models = {name: make_family_model(name) for name in sorted(TINY_FAMILIES)}
    return {"layouts": layouts.layout_table(), "families": layouts.family_table(models),
            "refused": layouts.refused_table(_refusals())}


def _between(text: str, name: str) -> str:
    start, end = f"<!-- table:{name} -->\n", f"\n<!-- /table:{name} -->"
    return text[text.index(start) + len(start):text.index(end)] if start in text and end in text else ""


def _render_docs() -> None:
    """Write the generated tables between their markers in README.md and book/new_model.md."""
    tables = _tables()
    for path, names in DOC_TABLES.items():
        text = (ROOT / path).read_text()
        for name in names:
            start, end = f"<!-- table:{name} -->\n", f"\n<!-- /table:{name} -->"
            text = text[:text.index(start) + len(start)] + tables[name] + text[text.index(end):]
        (ROOT / path).write_text(text)
