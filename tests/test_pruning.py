"""Drop orders, and pruned models that compute what the dropped blocks' absence implies."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from conftest import make_tiny_model, make_tiny_tokenizer
from transformers import AutoModelForCausalLM

from companion.errors import CompanionError
from companion.method.orders import (
    DropOrder,
    compression_stage,
    decode_rank_string,
    drop_order,
    parse_protect,
)
from companion.model import layouts
from companion.model.checkpoints import save_pruned
from companion.model.loading import load_model
from companion.model.surgery import (
    Pruning,
    SkippedAttention,
    apply_pruning,
    count_parameters,
    temporarily_pruned,
)

PAPER_RANKS = "29_30_28_27_26_23_25_24_21_22_18_17_19_20_16_15_14_13_10_2_3_12_7_5_8_0_6_9_4_1_11_31"


def test_paper_rank_string_decodes_to_card_sets():
    order = decode_rank_string(PAPER_RANKS)
    assert sorted(order[:4]) == [19, 20, 25, 29]
    assert sorted(order[:8]) == [19, 20, 22, 23, 25, 26, 28, 29]


def test_rank_string_round_trip():
    order = DropOrder("knn", "attn", order=[5, 2, 4, 3], protected=[0, 1], values=[0.0] * 6, num_layers=6)
    assert order.rank_string() == "4_5_1_3_2_0"
    assert decode_rank_string(order.rank_string()) == [5, 2, 4, 3, 0, 1]
    assert order.drop_set(2) == [2, 5]
    with pytest.raises(CompanionError, match="cannot drop 5 attn blocks: 4 of 6 are prunable"):
        order.drop_set(5)


def test_compression_stage_and_protect():
    assert compression_stage([5.0, 4.0, 3.0, 3.5, 4.0, 6.0, 7.0]) == 2
    assert compression_stage([1.0, 2.0, 3.0, 4.0, 5.0]) == 0
    assert compression_stage([5.0, 4.0, 3.0, 2.0, 1.0]) == 2  # only the first half can be compression
    assert parse_protect("first:2,last:1", 8) == [0, 1, 7]
    assert parse_protect("0,3", 8) == [0, 3]
    assert parse_protect("none", 8) == []
    assert parse_protect("auto", 6, [3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0]) == [0, 1]
    assert parse_protect("auto", 6, None) == []
    for bad in ("first2", "9"):
        with pytest.raises(CompanionError):
            parse_protect(bad, 8)


def _scores(values: dict[str, list[float]], profile: list[float]) -> dict:
    blocks = [{"layer": i, "granularity": "attn", "method": m, "value": v}
              for m, vs in values.items() for i, v in enumerate(vs)]
    return {"num_layers": len(profile) - 1, "blocks": blocks, "profiles": {"knn": profile}}


def test_drop_order_sorts_ascending_with_ties_by_index_and_protects():
    scores = _scores({"knn": [-1.0, 0.5, 0.2, 0.2, 0.9], "cosine": [0.3, 0.1, 0.1, 0.5, 0.0]},
                     profile=[3.0, 2.0, 2.5, 3.0, 3.5, 4.0])
    knn = drop_order(scores, "knn", "attn")
    assert knn.protected == [0]
    assert knn.order == [2, 3, 1, 4]
    assert drop_order(scores, "knn", "attn", "none").order == [0, 2, 3, 1, 4]
    cosine = drop_order(scores, "cosine", "attn")  # auto protects KNN's compression stage for cosine too
    assert cosine.protected == [0] and cosine.order == [4, 1, 2, 3]
    assert drop_order(scores, "cosine", "attn", "none").order == [4, 1, 2, 0, 3]
    with pytest.raises(CompanionError, match="method 'renyi' is not in the scores file"):
        drop_order(scores, "renyi", "attn")
    with pytest.raises(CompanionError, match="unknown granularity"):
        drop_order(scores, "knn", "block")


def _zero_contributions(model, granularity: str, layers: list[int]):
    """Reference: the same model with the dropped sub-layers' output projections set to zero."""
    reference = copy.deepcopy(model)
    family = layouts.layer_blocks(reference)[0]
    with torch.no_grad():
        for i in layers:
            layer = layouts.decoder_layers(reference)[i]
            module = getattr(layer, family.attn if granularity == "attn" else family.mlp)
            projection = module.o_proj if granularity == "attn" else module.down_proj
            projection.weight.zero_()
    return reference


def _skip_layers(model, _granularity: str, layers: list[int]):
    """Reference: the same model whose dropped decoder layers return their input unchanged."""
    reference = copy.deepcopy(model)
    for i in layers:
        layouts.decoder_layers(reference)[i].forward = lambda hidden_states, *a, **k: hidden_states
    return reference


@pytest.mark.parametrize("granularity", ["attn", "mlp", "layer"])
def test_pruned_logits_match_reference(family, granularity):
    model = make_tiny_model(family)
    dropped = [0, 2]
    reference = (_skip_layers if granularity == "layer" else _zero_contributions)(model, granularity, dropped)
    report = apply_pruning(model, Pruning(granularity, dropped))
    assert report["params_after"] < report["params_before"] == count_parameters(reference)
    ids = torch.randint(3, 96, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("granularity", ["attn", "layer"])
def test_generate_with_cache_matches_no_cache(family, granularity):
    model = make_tiny_model(family)
    apply_pruning(model, Pruning(granularity, [0, 3]))
    ids = torch.randint(3, 96, (1, 6))
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("granularity", ["attn", "mlp", "layer"])
def test_save_and_reload_gives_identical_logits(tmp_path, granularity):
    model = make_tiny_model("gemma3")
    apply_pruning(model, Pruning(granularity, [1, 2]))
    save_pruned(model, make_tiny_tokenizer(), tmp_path / "pruned")
    ids = torch.randint(3, 96, (2, 7))
    reloaded = load_model(str(tmp_path / "pruned"), device="cpu", dtype="float32")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.float32).eval()
    with torch.no_grad():
        expected = model(ids).logits
        torch.testing.assert_close(reloaded.model(ids).logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(plain(ids).logits, expected, rtol=1e-6, atol=1e-6)
    assert count_parameters(reloaded.model) == count_parameters(model)
    assert reloaded.model.companion_pruning == Pruning(granularity, [1, 2])
    if granularity == "layer":
        assert plain.config.num_hidden_layers == 2
        assert plain.config.layer_types == ["sliding_attention", "full_attention"]


def test_bad_prunings():
    model = make_tiny_model("llama")
    with pytest.raises(CompanionError, match="cannot drop layer 7"):
        apply_pruning(model, Pruning("attn", [7]))
    with pytest.raises(CompanionError, match="cannot drop all 4 layers"):
        apply_pruning(model, Pruning("layer", [0, 1, 2, 3]))
    with pytest.raises(CompanionError, match="unknown granularity"):
        Pruning("head", [0])


@pytest.mark.parametrize("granularity", ["attn", "mlp", "layer"])
def test_temporary_pruning_restores_the_dense_model(granularity):
    model = make_tiny_model("gemma3")
    ids = torch.randint(3, 96, (2, 9))
    with torch.no_grad():
        dense = model(ids).logits
        reference = copy.deepcopy(model)
        apply_pruning(reference, Pruning(granularity, [1, 3]))
        with temporarily_pruned(model, Pruning(granularity, [1, 3])) as report:
            torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)
            assert report["params_after"] == count_parameters(reference)
        torch.testing.assert_close(model(ids).logits, dense, rtol=0, atol=0)
        cached = model.generate(ids[:1], max_new_tokens=4, do_sample=False, pad_token_id=0)
        uncached = model.generate(ids[:1], max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
    assert not hasattr(model, "companion_pruning")
    assert model.config.num_hidden_layers == 4


@pytest.mark.parametrize("granularity", ["attn", "layer"])
def test_temporary_pruning_of_a_pruned_checkpoint_restores_its_pruning(tmp_path, granularity):
    model = make_tiny_model("llama")
    apply_pruning(model, Pruning(granularity, [1]))
    save_pruned(model, make_tiny_tokenizer(), tmp_path / "pruned")
    loaded = load_model(str(tmp_path / "pruned"), device="cpu", dtype="float32").model
    carried = loaded.companion_pruning
    assert carried == Pruning(granularity, [1])
    modules = {name: module for name, module in loaded.named_modules()}
    ids = torch.randint(3, 96, (2, 9))
    # on the loaded model, layer 2 is original layer 2 (attn) or original layer 3 (layer)
    expected_union = [1, 2] if granularity == "attn" else [1, 3]
    with torch.no_grad():
        before = loaded(ids).logits
        reference = copy.deepcopy(loaded)
        apply_pruning(reference, Pruning(granularity, [2]))
        with temporarily_pruned(loaded, Pruning(granularity, [2])):
            assert loaded.companion_pruning == Pruning(granularity, expected_union)
            torch.testing.assert_close(loaded(ids).logits, reference(ids).logits, rtol=0, atol=0)
        after = loaded(ids).logits
    assert loaded.companion_pruning is carried and carried == Pruning(granularity, [1])
    assert dict(loaded.named_modules()).keys() == modules.keys()
    assert all(module is modules[name] for name, module in loaded.named_modules())
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_pruning_on_top_of_a_pruning_composes_in_original_indices():
    model = make_tiny_model("llama")
    apply_pruning(model, Pruning("attn", [0, 2]))
    report = apply_pruning(model, Pruning("attn", [2, 3]))  # dropping attention 2 again is a no-op
    assert model.companion_pruning == Pruning("attn", [0, 2, 3])
    assert report["params_after"] == count_parameters(model) < report["params_before"]
    assert [isinstance(layer.self_attn, SkippedAttention) for layer in layouts.decoder_layers(model)] == [
        True, False, True, True]
    apply_pruning(model, Pruning("mlp", []))  # nothing dropped: the pruning carried stays
    assert model.companion_pruning == Pruning("attn", [0, 2, 3])

    layered = make_tiny_model("llama")
    apply_pruning(layered, Pruning("layer", [1]))  # remaining: original 0, 2, 3
    apply_pruning(layered, Pruning("layer", [1]))  # position 1 is original layer 2
    assert layered.companion_pruning == Pruning("layer", [1, 2]) and layered.config.num_hidden_layers == 2
    with pytest.raises(CompanionError, match="cannot drop all 2 layers"):
        apply_pruning(layered, Pruning("layer", [0, 1]))


@pytest.mark.parametrize("first, second", [("attn", "layer"), ("layer", "mlp"), ("mlp", "attn")])
def test_pruning_on_top_of_another_granularity_is_a_one_line_error(first, second):
    model = make_tiny_model("llama")
    apply_pruning(model, Pruning(first, [1]))
    parameters = count_parameters(model)
    with pytest.raises(CompanionError, match=f"cannot drop {second} blocks of a model already pruned at "
                                             f"granularity '{first}'") as error:
        apply_pruning(model, Pruning(second, [0]))
    assert "\n" not in str(error.value)
    with pytest.raises(CompanionError), temporarily_pruned(model, Pruning(second, [0])):
        pass
    assert model.companion_pruning == Pruning(first, [1]) and count_parameters(model) == parameters


@pytest.mark.parametrize("name", ["llama4_text", "qwen2_moe", "deepseek_v3", "ernie4_5_moe", "gpt_oss"])
def test_layer_removal_rewrites_per_layer_config_and_temporary_pruning_restores_it(name):
    """Per-layer lists are subset, MoE placement is rewritten from the kept layers, and all of it comes back."""
    from conftest import make_family_model

    model = make_family_model(name)
    config = layouts.text_config(model)
    before = config.to_dict()
    moe = [b.moe for b in layouts.layer_blocks(model)]
    with temporarily_pruned(model, Pruning("layer", [0, 2])):
        assert config.num_hidden_layers == 2 and [b.moe for b in layouts.layer_blocks(model)] == [moe[1], moe[3]]
        if getattr(config, "layer_types", None) is not None:
            assert config.layer_types == [before["layer_types"][1], before["layer_types"][3]]
        with torch.device("meta"):
            rebuilt = AutoModelForCausalLM.from_config(model.config)
        assert [b.moe for b in layouts.layer_blocks(rebuilt)] == [moe[1], moe[3]]
    assert config.to_dict() == before


def test_blocks_that_cannot_be_dropped_or_saved_are_one_line_errors(tmp_path):
    from conftest import make_family_model

    hybrid = make_family_model("qwen3_5_text")  # linear attention in layers 0 and 2
    assert layouts.prunable(hybrid, "attn") == [1, 3] and layouts.prunable(hybrid, "mlp") == [0, 1, 2, 3]
    with pytest.raises(CompanionError, match="layer 0 has no attention block to drop"):
        apply_pruning(hybrid, Pruning("attn", [0]))
    per_layer_inputs = _untested_model("gemma4_text", hidden_size_per_layer_input=8, vocab_size_per_layer_input=96,
                                       global_head_dim=8)
    apply_pruning(per_layer_inputs, Pruning("layer", [1]))
    with pytest.raises(CompanionError, match="does not match what its config rebuilds") as error:
        save_pruned(per_layer_inputs, make_tiny_tokenizer(), tmp_path / "gemma4")
    assert "\n" not in str(error.value)
    diff = _untested_model("diffllama")
    apply_pruning(diff, Pruning("layer", [1]))
    with pytest.raises(CompanionError, match="lambda_init"):
        save_pruned(diff, make_tiny_tokenizer(), tmp_path / "diffllama")


def _untested_model(model_type: str, **extra):
    """A small random model of a configuration outside the tested families (conftest's sizes)."""
    from conftest import _TINY

    config = transformers.AutoConfig.for_model(model_type, **{**_TINY, **extra})
    return AutoModelForCausalLM.from_config(config).eval()
