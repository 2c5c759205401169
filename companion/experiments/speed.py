"""Inference speed of pruned models: what the FLOPs predict and what a timed greedy decode measures.

The paper claims a near-linear speedup with the number of dropped attention layers. Two views:

- **Expected**, in closed form from the config (:func:`forward_flops`, :func:`run_flops`,
  :func:`kv_cache_bytes`): matmul FLOPs of the token mixers' projections, the attention score/value
  products, the MLPs (the active experts of a mixture of experts) and the LM head, with each layer's
  weights and head counts read from the model the config builds on the meta device (:func:`layer_costs`),
  so per-layer heterogeneity, attention-free layers and non-gated MLPs need no formula of their own.
  A multiply-add is 2 FLOPs, so a projection costs 2 × its weight count per token. Norms, activations, rotary embeddings, softmax and biases (O(d) per token)
  are left out. Attention counts only the keys a causal query sees (position p sees p + 1 keys, at
  most the window in sliding layers); kernels that compute and then mask the whole square do more.
- **Measured** (:func:`timed_greedy`, :func:`measure`): one prefill forward over a prompt, then a
  greedy decode loop with the KV cache, timed separately, after warm-up, over several repeats.

:func:`speed_sweep` measures a drop order at several K on one working copy of the model and puts both
views side by side; :func:`write_speed` saves the rows as JSON (with provenance) and CSV.
"""

from __future__ import annotations

import copy
import csv
import inspect
import io
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache

from companion import store
from companion.errors import CompanionError
from companion.io import atomic_write_text
from companion.method.orders import drop_order
from companion.model.embedded import model_label
from companion.model.layouts import (
    active_parameters,
    attention_dims,
    config_text,
    count_parameters,
    decoder_layers,
    layer_blocks,
    text_config,
)
from companion.model.loading import LoadedModel
from companion.model.surgery import Pruning, apply_pruning
from companion.names import GRANULARITIES
from companion.provenance import environment, timestamp

SCHEMA = "companion.speed/1"
Drops = Mapping[str, Iterable[int]]




@dataclass(frozen=True)
class LayerCost:
    """What one decoder layer costs, read from its modules.

    ``mixer_weights``: weights of the token mixer's matrices (attention projections, or a linear-attention
    or state-space mixer's); ``attention``: softmax attention with a KV cache; ``key_flops``: FLOPs per
    query-key pair (QKᵀ and the weighted sum of V over the layer's own heads); ``kv_per_token``: numbers
    the KV cache holds per token; ``mlp_weights``: the MLP's weights a token runs through (a mixture of
    experts counts ``experts_per_token / experts`` of its routed experts; gated or not, every matrix once).
    """

    mixer_weights: int
    attention: bool
    key_flops: int
    kv_per_token: int
    mlp_weights: int


def _attention_cost(module: nn.Module, config) -> tuple[int, int]:
    """(FLOPs per query-key pair, numbers cached per token) of an attention module, from its attributes
    where it has them (per-layer head counts; multi-head latent attention, which caches one compressed
    latent plus the rotary key part and scores against the latent) and from the config otherwise."""
    heads, kv_heads, head_dim = attention_dims(config)
    heads = getattr(module, "num_heads", None) or getattr(module, "num_attention_heads", None) or heads
    latent = getattr(module, "kv_lora_rank", None)
    if latent:
        rope = module.qk_rope_head_dim
        return 2 * heads * (latent + rope) + 2 * heads * latent, latent + rope
    head_dim = getattr(module, "head_dim", None) or head_dim
    groups = getattr(module, "num_key_value_groups", None)
    kv_heads = heads // groups if groups else kv_heads
    return 4 * heads * head_dim, 2 * kv_heads * head_dim


def layer_costs(model: nn.Module) -> list[LayerCost]:
    """The :class:`LayerCost` of every decoder layer of ``model`` (dense or pruned: skipped blocks cost nothing)."""
    config = text_config(model)
    costs = []
    for layer, blocks in zip(decoder_layers(model), layer_blocks(model)):
        mixer = getattr(layer, blocks.attn)
        key_flops, kv_per_token = _attention_cost(mixer, config) if blocks.attention else (0, 0)
        costs.append(LayerCost(active_parameters(mixer, config, matrices_only=True), blocks.attention, key_flops, kv_per_token,
                               active_parameters(getattr(layer, blocks.mlp), config, matrices_only=True)))
    return costs


_COSTS: dict[str, list[LayerCost]] = {}


def _config_costs(config) -> list[LayerCost]:
    """:func:`layer_costs` of the model ``config`` describes, built once on the meta device (no memory)."""
    key = config.to_json_string()
    if key not in _COSTS:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            _COSTS[key] = layer_costs(AutoModelForCausalLM.from_config(config))
    return _COSTS[key]


def _window(config, layer: int) -> int | None:
    """The sliding window of ``layer``, or None for full attention (transformers' own rule)."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None and types[layer] != "sliding_attention":
        return None
    return window


def _running(config, drops: Drops | None) -> tuple[list[int], list[int]]:
    """Original indices of the layers whose attention, and whose MLP, still run after ``drops``."""
    num_layers = config.num_hidden_layers
    drops = {g: set(layers) for g, layers in (drops or {}).items()}
    unknown = sorted(set(drops) - set(GRANULARITIES))
    if unknown:
        raise CompanionError(f"unknown granularity '{unknown[0]}'; choose from {', '.join(GRANULARITIES)}")
    bad = sorted(i for layers in drops.values() for i in layers if not 0 <= i < num_layers)
    if bad:
        raise CompanionError(f"cannot drop layer {bad[0]}: the model has {num_layers} layers")
    whole = drops.get("layer", set())
    attn = [i for i in range(num_layers) if i not in whole | drops.get("attn", set())]
    mlp = [i for i in range(num_layers) if i not in whole | drops.get("mlp", set())]
    return attn, mlp


def _keys_seen(start: int, stop: int, window: int | None) -> int:
    """Sum over query positions start ≤ p < stop of the keys a causal query at p sees (p + 1, capped)."""

    def upto(n: int) -> int:
        if window is None or n <= window:
            return n * (n + 1) // 2
        return window * (window + 1) // 2 + (n - window) * window

    return upto(stop) - upto(start)


def forward_flops(config, tokens: int, past: int = 0, drops: Drops | None = None) -> dict[str, int]:
    """FLOPs of one forward over ``tokens`` new tokens after ``past`` cached ones, per sequence.

    ``drops`` maps a granularity (``attn``, ``mlp``, ``layer``) to dropped layer indices of the dense
    model ``config`` describes. The LM head runs on the last position only, as in ``generate``'s
    prefill and in :func:`timed_greedy`. Keys: ``attn_proj`` (the token mixers' matrices: Q, K, V, O of
    attention, the projections of linear-attention and state-space mixers), ``attn_scores`` (QKᵀ and the
    weighted sum of V, softmax attention only), ``mlp`` (the matrices a token runs through: all of a
    dense MLP, the router, shared experts and ``experts_per_token`` routed experts of a mixture of
    experts), ``lm_head`` and ``total``.
    """
    costs = _config_costs(config)
    text = config_text(config)
    attn, mlp = _running(text, drops)
    flops = {
        "attn_proj": tokens * sum(2 * costs[i].mixer_weights for i in attn),
        "attn_scores": sum(costs[i].key_flops * _keys_seen(past, past + tokens, _window(text, i)) for i in attn),
        "mlp": tokens * sum(2 * costs[i].mlp_weights for i in mlp),
        "lm_head": 2 * text.hidden_size * text.vocab_size,
    }
    return {**flops, "total": sum(flops.values())}


def run_flops(config, prompt_len: int, new_tokens: int, drops: Drops | None = None) -> dict[str, int]:
    """FLOPs per sequence of the prefill and of the decode steps of :func:`timed_greedy`.

    The prefill is one forward over ``prompt_len`` tokens; decoding ``new_tokens`` tokens takes
    ``new_tokens - 1`` one-token forwards (the first token comes from the prefill's logits).
    """
    decode = sum(forward_flops(config, 1, prompt_len + i, drops)["total"] for i in range(new_tokens - 1))
    return {"prefill": forward_flops(config, prompt_len, 0, drops)["total"], "decode": decode}


def kv_cache_bytes(config, context: int, drops: Drops | None = None, dtype: torch.dtype = torch.float32,
                   batch: int = 1) -> int:
    """Bytes of keys and values a dynamic cache holds after ``context`` tokens.

    Dropped attention sub-layers and dropped layers hold none. A sliding layer holds the last
    ``window - 1`` tokens, as transformers' sliding cache does (the next query brings its own key).
    Our skipped attention keeps a one-number-per-token placeholder, not counted here.
    """
    costs = _config_costs(config)
    text = config_text(config)
    attn, _ = _running(text, drops)
    numbers = 0
    for i in attn:
        window = _window(text, i)
        numbers += costs[i].kv_per_token * (context if window is None else min(context, window - 1))
    return batch * numbers * torch.empty((), dtype=dtype).element_size()


def cache_bytes(cache) -> int:
    """Bytes of the key and value tensors a transformers cache actually holds."""
    return sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameters of ``model`` (tied weights counted once)."""
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def _synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for queued device work, so wall-clock timers see finished kernels."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class Greedy:
    """One timed greedy generation: seconds of the prefill and of the decode loop, its output."""

    prefill_s: float
    decode_s: float
    tokens: torch.Tensor
    kv_cache_bytes: int


def timed_greedy(model: nn.Module, input_ids: torch.Tensor, new_tokens: int) -> Greedy:
    """Greedy-decode ``new_tokens`` tokens after ``input_ids`` with a dynamic KV cache, timing two phases.

    Prefill: ``model(input_ids, use_cache=True, logits_to_keep=1)``, the forward ``generate`` runs
    first. Decode: picking the first token from those logits, then ``new_tokens - 1`` one-token
    forwards on the cache, each followed by an argmax. This is ``generate``'s greedy path without its
    per-step bookkeeping (logits processors, stopping criteria, input preparation), so the decode time
    is measured directly instead of as the difference of two noisy timings; no EOS stops it.
    """
    device = input_ids.device
    sync = _synchronizer(device)
    cache = DynamicCache(config=model.config)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.inference_mode():
        sync()
        start = time.perf_counter()
        logits = model(input_ids, use_cache=True, logits_to_keep=1, **{cache_arg: cache}).logits
        sync()
        middle = time.perf_counter()
        token = logits[:, -1].argmax(-1, keepdim=True)
        tokens = [token]
        for _ in range(new_tokens - 1):
            logits = model(token, use_cache=True, **{cache_arg: cache}).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
        sync()
        end = time.perf_counter()
    return Greedy(middle - start, end - middle, torch.cat(tokens, dim=1), cache_bytes(cache))


def make_prompt(vocab_size: int, prompt_len: int, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """Seeded random token ids (batch, prompt_len): content does not change the compute of a forward."""
    if prompt_len < 1 or batch_size < 1:
        raise CompanionError("prompt length and batch size must be >= 1")
    return torch.randint(0, vocab_size, (batch_size, prompt_len), generator=torch.Generator().manual_seed(seed))


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def measure(model: nn.Module, input_ids: torch.Tensor, *, new_tokens: int = 32, warmup: int = 1,
            repeats: int = 5) -> dict:
    """Prefill and decode throughput of ``model`` on ``input_ids``: median and min/max over ``repeats``.

    Each run is :func:`timed_greedy`; ``warmup`` untimed runs come first. Throughput counts tokens of
    the whole batch: prefill ``batch × prompt_len / prefill_s``, decode
    ``batch × (new_tokens - 1) / decode_s``. ``peak_memory_bytes`` (CUDA only) is the model's
    weights plus the largest increase of ``torch.cuda.max_memory_allocated`` over the memory
    allocated before the timed runs (summed over the model's GPUs), so other models held by the
    process are not counted. On CPU it is None: an in-process RSS peak only ever grows and includes
    the allocator's slack, so it cannot be attributed to one configuration; ``weights_bytes`` and the
    ``kv_cache_bytes`` actually held by the cache at the end of a run are reported instead.
    """
    if new_tokens < 2 or repeats < 1 or warmup < 0:
        raise CompanionError("need new_tokens >= 2, repeats >= 1 and warmup >= 0")
    device = model.get_input_embeddings().weight.device
    input_ids = input_ids.to(device)
    for _ in range(warmup):
        timed_greedy(model, input_ids, new_tokens)
    gpus = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
    before = {}
    for gpu in gpus:
        torch.cuda.synchronize(gpu)
        torch.cuda.reset_peak_memory_stats(gpu)
        before[gpu] = torch.cuda.memory_allocated(gpu)
    runs = [timed_greedy(model, input_ids, new_tokens) for _ in range(repeats)]
    batch, prompt_len = input_ids.shape
    prefill = _spread([batch * prompt_len / run.prefill_s for run in runs])
    decode = _spread([batch * (new_tokens - 1) / run.decode_s for run in runs])
    weights = weights_bytes(model)
    peak = weights + sum(torch.cuda.max_memory_allocated(g) - before[g] for g in gpus) if gpus else None
    return {
        "prefill_tps": prefill[0], "prefill_tps_lo": prefill[1], "prefill_tps_hi": prefill[2],
        "decode_tps": decode[0], "decode_tps_lo": decode[1], "decode_tps_hi": decode[2],
        "prefill_seconds": [run.prefill_s for run in runs], "decode_seconds": [run.decode_s for run in runs],
        "peak_memory_bytes": peak, "weights_bytes": weights, "kv_cache_bytes": runs[-1].kv_cache_bytes,
        "device": str(device), "threads": torch.get_num_threads(),
    }


def speed_sweep(loaded: LoadedModel, scores: dict, method: str, granularity: str, drops: list[int],
                protect: str = "auto", *, prompt_len: int = 128, new_tokens: int = 32, batch_size: int = 1,
                warmup: int = 1, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Measure the drop order of ``method`` at ``granularity`` for each K in ``drops`` (K = 0 always added).

    One deep copy of the model is pruned further at each K in ascending order: the drop sets of one
    order are nested, skipping an attention or MLP sub-layer again is a no-op, and for whole layers
    the original indices are mapped to the positions of the layers still present. ``loaded.model``
    itself is not changed, so the process holds the dense weights twice. Every K runs on the same seeded
    random prompt. Speedups are relative to K = 0; the expected ones come from :func:`run_flops` on the dense config.
    """
    order = drop_order(scores, method, granularity, protect)
    num_layers = len(decoder_layers(loaded.model))
    if getattr(loaded.model, "companion_pruning", None) is not None:
        raise CompanionError("the speed sweep needs the dense model, not a pruned checkpoint")
    if order.num_layers != num_layers:
        raise CompanionError(f"the scores are for a {order.num_layers}-layer model but the model has {num_layers}")
    sets = {k: order.drop_set(k) for k in sorted(set(drops) | {0})}
    if granularity == "layer" and max(len(s) for s in sets.values()) >= num_layers:
        raise CompanionError(f"cannot drop all {num_layers} layers")
    config = text_config(loaded.model)
    ids = make_prompt(config.vocab_size, prompt_len, batch_size, seed)
    context = prompt_len + new_tokens - 1
    work = copy.deepcopy(loaded.model)
    present = list(range(num_layers))
    rows: list[dict] = []
    for k, dropped in sets.items():
        if granularity == "layer":
            positions = [present.index(i) for i in dropped if i in present]
            present = [i for i in present if i not in dropped]
        else:
            positions = dropped
        if positions:
            apply_pruning(work, Pruning(granularity, positions))
        pruned = {granularity: dropped}
        flops = run_flops(config, prompt_len, new_tokens, pruned)
        timing = measure(work, ids, new_tokens=new_tokens, warmup=warmup, repeats=repeats)
        rows.append({
            "model": model_label(loaded.spec), "method": method, "granularity": granularity, "K": k,
            "dropped": dropped, "params": count_parameters(work), **timing,
            "flops_prefill": flops["prefill"], "flops_decode": flops["decode"],
            "kv_cache_bytes_expected": kv_cache_bytes(config, context, pruned, loaded.dtype, batch_size),
        })
    dense = rows[0]
    for row in rows:
        row["measured_speedup_prefill"] = row["prefill_tps"] / dense["prefill_tps"]
        row["measured_speedup_decode"] = row["decode_tps"] / dense["decode_tps"]
        row["expected_speedup_prefill"] = dense["flops_prefill"] / row["flops_prefill"]
        row["expected_speedup_decode"] = dense["flops_decode"] / row["flops_decode"]
        row["kv_cache_ratio"] = row["kv_cache_bytes"] / dense["kv_cache_bytes"]
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def machine(device: torch.device) -> str:
    """The processor that timings are measured on: the GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def speed_key(identity: dict, scores: dict, settings: Mapping) -> dict:
    """Every input that can change a speed run (see :mod:`companion.store`), the machine included."""
    device = torch.device("cuda" if identity["device_type"] == "cuda" else "cpu")
    return {"kind": "speed", "model": identity, "machine": machine(device), "threads": torch.get_num_threads(),
            "scores": scores.get("key_sha256"), "settings": dict(settings), "numerics": store.numerics()}


def speed_runs(loaded: LoadedModel, scores: dict, settings: Mapping) -> list[dict]:
    """:func:`speed_sweep` at every granularity of ``settings`` (``method``, ``protect``, ``granularities``,
    ``drops`` and the measurement: ``prompt_len``, ``new_tokens``, ``batch_size``, ``warmup``, ``repeats``)."""
    measure = {k: settings[k] for k in ("prompt_len", "new_tokens", "batch_size", "warmup", "repeats")}
    return [row for granularity in settings["granularities"]
            for row in speed_sweep(loaded, scores, settings["method"], granularity, settings["drops"],
                                   settings["protect"], **measure)]


def speed_content(rows: list[dict], settings: dict) -> dict:
    """The content of a ``speed.json`` (schema, time, environment, ``settings``, ``rows``), without its key."""
    return {"schema": SCHEMA, "created": timestamp(), "environment": environment(), "settings": settings, "rows": rows}


def write_speed_csv(rows: list[dict], csv_path: str | Path) -> Path:
    """Write ``rows`` as CSV (lists as space-separated values, None as empty), atomically."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([_cell(row.get(c)) for c in columns] for row in rows)
    return atomic_write_text(csv_path, buffer.getvalue())


def write_speed(rows: list[dict], out_path: str | Path, settings: dict, key: dict) -> tuple[Path, Path]:
    """Write ``rows`` to ``out_path`` (:func:`speed_content` with the store ``key``) and to the same path
    with suffix ``.csv``."""
    out_path = Path(out_path)
    if out_path.suffix != ".json":
        raise CompanionError(f"speed results go to a .json file (the CSV is written next to it), not {out_path}")
    store.write(out_path, key, speed_content(rows, settings))
    return out_path, write_speed_csv(rows, out_path.with_suffix(".csv"))
