"""FLOP and KV-cache accounting against hand computations and parameter counts; the timed sweep's rows."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer

from companion.errors import CompanionError
from companion.experiments.speed import (
    _window,
    forward_flops,
    kv_cache_bytes,
    measure,
    run_flops,
    speed_sweep,
    timed_greedy,
    write_speed,
)
from companion.method.orders import drop_order
from companion.model import layouts
from companion.model.loading import LoadedModel
from companion.model.surgery import Pruning, apply_pruning, count_parameters

# Tiny configs (conftest): hidden 32, 4 query heads and 2 key/value heads of dim 8, MLP 64, vocab 96, 4 layers.
PROJ = 2 * (32 * 32 + 32 * 16 + 32 * 16 + 32 * 32)  # Q, K, V, O per token and layer: 6144
SCORE = 4 * 4 * 8  # QKᵀ and AV per key and layer: 128
MLP = 2 * 3 * 32 * 64  # gate, up, down per token and layer: 12288
HEAD = 2 * 32 * 96  # LM head per token: 6144
KV = 2 * 2 * 8 * 4  # fp32 bytes of keys and values per token and layer: 128


def test_llama_flops_by_hand():
    config = make_tiny_model("llama").config
    prefill = forward_flops(config, 10)
    assert prefill == {"attn_proj": 10 * 4 * PROJ, "attn_scores": 4 * SCORE * 55, "mlp": 10 * 4 * MLP,
                       "lm_head": HEAD, "total": 771584}
    assert forward_flops(config, 1, past=10)["total"] == 4 * (PROJ + 11 * SCORE + MLP) + HEAD == 85504
    attn = forward_flops(config, 10, drops={"attn": [1, 2]})
    assert attn["total"] == 2 * (10 * PROJ + 55 * SCORE) + 4 * 10 * MLP + HEAD == 634624
    assert forward_flops(config, 10, drops={"layer": [0]})["total"] == 3 * (10 * PROJ + 55 * SCORE + 10 * MLP) + HEAD
    assert forward_flops(config, 10, drops={"mlp": [3]})["mlp"] == 3 * 10 * MLP
    assert run_flops(config, 10, 3) == {"prefill": 771584,
                                        "decode": 85504 + 4 * (PROJ + 12 * SCORE + MLP) + HEAD}


def test_gemma3_sliding_layers_see_at_most_the_window():
    config = make_tiny_model("gemma3").config  # sliding, full, sliding, full; window 4
    sliding, full = 1 + 2 + 3 + 4 * 7, 55  # keys seen by 10 causal queries
    assert forward_flops(config, 10)["attn_scores"] == SCORE * 2 * (sliding + full)
    assert forward_flops(config, 1, past=10)["attn_scores"] == SCORE * 2 * (4 + 11)
    assert forward_flops(config, 1, past=10, drops={"attn": [0, 2]})["attn_scores"] == SCORE * 2 * 11
    assert forward_flops(config, 10)["total"] == 10 * 4 * (PROJ + MLP) + SCORE * 2 * (sliding + full) + HEAD


def test_kv_cache_bytes_by_hand():
    llama, gemma = make_tiny_model("llama").config, make_tiny_model("gemma3").config
    assert kv_cache_bytes(llama, 10) == 4 * 10 * KV == 5120
    assert kv_cache_bytes(llama, 10, {"layer": [0, 3]}) == kv_cache_bytes(llama, 10, {"attn": [0, 3]}) == 2560
    assert kv_cache_bytes(llama, 10, {"mlp": [0, 1, 2]}) == 5120
    assert kv_cache_bytes(llama, 10, dtype=torch.bfloat16, batch=3) == 3 * 5120 // 2
    assert kv_cache_bytes(gemma, 10) == (3 + 10 + 3 + 10) * KV  # sliding layers keep window - 1 tokens
    assert kv_cache_bytes(gemma, 2) == 4 * 2 * KV
    assert kv_cache_bytes(gemma, 10, {"attn": [1]}) == (3 + 3 + 10) * KV


def test_bad_drops_are_user_errors():
    config = make_tiny_model("llama").config
    with pytest.raises(CompanionError, match="cannot drop layer 4"):
        forward_flops(config, 1, drops={"attn": [4]})
    with pytest.raises(CompanionError, match="unknown granularity 'head'"):
        kv_cache_bytes(config, 1, {"head": [0]})


def _matrix_params(modules) -> int:
    return sum(p.numel() for module in modules for p in module.parameters() if p.ndim == 2)


@pytest.mark.parametrize("drops", [None, {"attn": [1, 3]}, {"mlp": [0]}, {"layer": [2]}])
def test_projection_flops_are_twice_the_weights(family, drops):
    model = make_tiny_model(family)
    pruned = copy.deepcopy(model)
    for granularity, layers in (drops or {}).items():
        apply_pruning(pruned, Pruning(granularity, layers))
    names = layouts.layer_blocks(model)[0]
    layers = layouts.decoder_layers(pruned)
    flops = forward_flops(model.config, 1, drops=drops)
    assert flops["attn_proj"] == 2 * _matrix_params(getattr(layer, names.attn) for layer in layers)
    assert flops["mlp"] == 2 * _matrix_params(getattr(layer, names.mlp) for layer in layers)
    assert flops["lm_head"] == 2 * pruned.lm_head.weight.numel()


@pytest.mark.parametrize("family_name", ["llama", "gemma3"])
@pytest.mark.parametrize("granularity", ["attn", "mlp", "layer"])
def test_expected_speedup_is_one_then_increasing(family_name, granularity):
    config = make_tiny_model(family_name).config
    dense = run_flops(config, 16, 8)
    speedups = [{phase: dense[phase] / flops for phase, flops in run_flops(config, 16, 8, {granularity: drops}).items()}
                for drops in ([2, 1, 3, 0][:k] for k in range(5))]
    assert speedups[0] == {"prefill": 1.0, "decode": 1.0}
    for phase in ("prefill", "decode"):
        assert all(a < b for a, b in zip([s[phase] for s in speedups], [s[phase] for s in speedups[1:]]))


@pytest.mark.parametrize("granularity", [None, "attn", "layer"])
def test_timed_greedy_decodes_like_generate_and_holds_the_expected_cache(family, granularity):
    model = make_tiny_model(family)
    dense_config = copy.deepcopy(model.config)
    drops = {granularity: [1, 2]} if granularity else None
    if granularity:
        apply_pruning(model, Pruning(granularity, [1, 2]))
    ids = torch.randint(3, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    run = timed_greedy(model, ids, 6)
    reference = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(run.tokens, reference[:, 7:])
    assert run.prefill_s > 0 and run.decode_s > 0
    placeholders = 0
    if granularity == "attn":  # a skipped attention stores one number per cached token for keys and values
        windows = [_window(dense_config, i) for i in (1, 2)]
        placeholders = sum(2 * 2 * 4 * (12 if w is None else min(12, w - 1)) for w in windows)
    assert run.kv_cache_bytes == kv_cache_bytes(dense_config, 7 + 5, drops, batch=2) + placeholders


def test_measure_rejects_bad_settings():
    model = make_tiny_model("llama")
    with pytest.raises(CompanionError, match="new_tokens >= 2"):
        measure(model, torch.ones(1, 4, dtype=torch.long), new_tokens=1)


def _loaded(family: str) -> LoadedModel:
    return LoadedModel(make_tiny_model(family), make_tiny_tokenizer(), f"tiny-{family}", "", "test",
                       torch.device("cpu"), torch.float32)


def _scores() -> dict:
    values = {"attn": [0.0, 0.3, 0.1, 0.2], "mlp": [0.0, 0.2, 0.3, 0.1], "layer": [0.0, 0.1, 0.3, 0.2]}
    blocks = [{"layer": i, "granularity": g, "method": "knn", "value": v}
              for g, vs in values.items() for i, v in enumerate(vs)]
    return {"num_layers": 4, "blocks": blocks, "profiles": {"knn": [3.0, 2.0, 2.5, 3.0, 3.5]}}  # protects layer 0


ROW_KEYS = {"model", "method", "granularity", "K", "dropped", "params", "prefill_tps", "prefill_tps_lo",
            "prefill_tps_hi", "decode_tps", "decode_tps_lo", "decode_tps_hi", "prefill_seconds", "decode_seconds",
            "peak_memory_bytes", "weights_bytes", "kv_cache_bytes", "kv_cache_bytes_expected", "kv_cache_ratio",
            "device", "threads", "flops_prefill", "flops_decode", "measured_speedup_prefill",
            "measured_speedup_decode", "expected_speedup_prefill", "expected_speedup_decode"}


@pytest.mark.parametrize("family_name,granularity", [("llama", "attn"), ("gemma3", "attn"), ("llama", "layer"),
                                                     ("gemma3", "layer"), ("qwen3", "mlp")])
def test_speed_sweep_rows(family_name, granularity):
    loaded = _loaded(family_name)
    params = count_parameters(loaded.model)
    rows = speed_sweep(loaded, _scores(), "knn", granularity, [3, 1], prompt_len=8, new_tokens=4, warmup=0,
                       repeats=2)
    order = drop_order(_scores(), "knn", granularity)
    assert [row["K"] for row in rows] == [0, 1, 3]
    assert all(set(row) == ROW_KEYS for row in rows)
    assert [row["dropped"] for row in rows] == [order.drop_set(k) for k in (0, 1, 3)]
    assert set(rows[1]["dropped"]) <= set(rows[2]["dropped"])
    for row in rows:
        assert min(row["prefill_tps_lo"], row["decode_tps_lo"], row["measured_speedup_prefill"],
                   row["measured_speedup_decode"], row["weights_bytes"], row["kv_cache_bytes"]) > 0
        assert row["prefill_tps_lo"] <= row["prefill_tps"] <= row["prefill_tps_hi"]
        assert row["peak_memory_bytes"] is None and len(row["decode_seconds"]) == 2
    assert rows[0]["expected_speedup_prefill"] == rows[0]["expected_speedup_decode"] == 1.0
    assert 1.0 < rows[1]["expected_speedup_prefill"] < rows[2]["expected_speedup_prefill"]
    assert 1.0 < rows[1]["expected_speedup_decode"] < rows[2]["expected_speedup_decode"]
    assert rows[0]["params"] == params > rows[1]["params"] > rows[2]["params"]
    if granularity == "mlp":
        assert [row["kv_cache_ratio"] for row in rows] == [1.0, 1.0, 1.0]
    else:
        assert rows[0]["kv_cache_ratio"] == 1.0 > rows[1]["kv_cache_ratio"] > rows[2]["kv_cache_ratio"]
    assert count_parameters(loaded.model) == params and len(layouts.decoder_layers(loaded.model)) == 4


def test_speed_sweep_rejects_too_many_drops_and_pruned_models():
    loaded = _loaded("llama")
    with pytest.raises(CompanionError, match="cannot drop 4 attn blocks: 3 of 4 are prunable"):
        speed_sweep(loaded, _scores(), "knn", "attn", [1, 4], repeats=1)
    with pytest.raises(CompanionError, match="cannot drop all 4 layers"):
        speed_sweep(loaded, _scores(), "knn", "layer", [4], protect="none", repeats=1)
    apply_pruning(loaded.model, Pruning("attn", [1]))
    with pytest.raises(CompanionError, match="needs the dense model"):
        speed_sweep(loaded, _scores(), "knn", "attn", [1], repeats=1)


def test_write_speed(tmp_path):
    rows = [{"model": "m", "K": 0, "dropped": [], "peak_memory_bytes": None, "prefill_tps": 10.5},
            {"model": "m", "K": 2, "dropped": [1, 3], "peak_memory_bytes": None, "prefill_tps": 12.0}]
    json_path, csv_path = write_speed(rows, tmp_path / "speed.json", {"prompt_len": 8}, {"kind": "speed"})
    saved = json.loads(json_path.read_text())
    assert saved["schema"] == "companion.speed/1" and saved["rows"] == rows
    assert saved["settings"] == {"prompt_len": 8} and "versions" in saved["environment"] and saved["created"]
    assert saved["key"] == {"kind": "speed"}
    with open(csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert csv_path.name == "speed.csv"
    assert table[1] == {"model": "m", "K": "2", "dropped": "1 3", "peak_memory_bytes": "", "prefill_tps": "12.0"}
    with pytest.raises(CompanionError, match="a .json file"):
        write_speed(rows, tmp_path / "speed.csv", {}, {})


def test_mixture_of_experts_counts_the_active_experts():
    """Mixtral: per token, the router and 2 of 4 experts (each gate, up and down: 3 × 32 × 64)."""
    from conftest import make_family_model

    config = make_family_model("mixtral").config
    assert forward_flops(config, 1)["mlp"] == 4 * 2 * (32 * 4 + 2 * 3 * 32 * 64)


def test_non_gated_mlp_and_attention_free_layers():
    """Phi's MLP is fc1 and fc2 (with biases, not counted); Qwen3.5's linear-attention layers hold no KV cache."""
    from conftest import make_family_model

    phi = make_family_model("phi").config
    assert forward_flops(phi, 1)["mlp"] == 4 * 2 * 2 * 32 * 64
    hybrid = make_family_model("qwen3_5_text")  # linear, full, linear, full
    assert kv_cache_bytes(hybrid.config, 10) == 2 * 10 * KV
    assert kv_cache_bytes(hybrid.config, 10, {"attn": [1]}) == 10 * KV
    scores = forward_flops(hybrid.config, 10)["attn_scores"]
    assert scores == 2 * 2 * 4 * (8 + 8) * 55  # two attention layers of 4 query heads; 55 keys seen


@pytest.mark.parametrize("name", ["deepseek_v3", "gpt_oss", "llama4_text", "qwen3_next", "falcon", "olmo2"])
def test_kv_cache_bytes_match_the_cache_of_a_forward(name):
    """Multi-head latent attention (keys wider than values), sliding and hybrid layers, one K/V head (Falcon)."""
    from conftest import make_family_model
    from transformers import DynamicCache

    from companion.experiments.speed import cache_bytes

    model = make_family_model(name)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(3, 96, (1, 3)), past_key_values=cache, use_cache=True)
    assert cache_bytes(cache) == kv_cache_bytes(model.config, 3)
