"""Pruning a loaded model in place at a granularity, and undoing it.

Pruning a ``layer`` removes decoder layers and fixes the config, so the result is a standard
checkpoint. Pruning ``attn`` or ``mlp`` replaces the sub-layer and its norms by modules that cost
nothing; a skipped attention still advances the KV cache by a one-number-per-token placeholder so the
cache's sequence length (which positions and masks are built from) stays right during ``generate``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from companion.errors import CompanionError
from companion.model import layouts
from companion.model.layouts import count_parameters
from companion.names import GRANULARITIES


class SkippedAttention(nn.Module):
    """Stands in for a dropped attention sub-layer: contributes exactly zero, computes nothing.

    Returns ``(zero, None)`` like the attention modules of transformers. With a cache it stores a
    (batch, 1, tokens, 1) placeholder so the cache keeps counting tokens for this layer; static caches
    get zeros of the full key/value shape instead.
    """

    def __init__(self, layer_idx: int, kv_shape: tuple[int, int], removed: dict[str, tuple]) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.kv_shape = kv_shape
        self.removed = removed

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        cache = next((kwargs[name] for name in _CACHE_ARGS if kwargs.get(name) is not None), None)
        if cache is not None and hasattr(cache, "update"):
            batch, tokens = hidden_states.shape[:2]
            layer = cache.layers[self.layer_idx] if hasattr(cache, "layers") else None
            dynamic = layer is None or not getattr(layer, "is_compileable", False)
            heads, dim = (1, 1) if dynamic else self.kv_shape
            placeholder = hidden_states.new_zeros(batch, heads, tokens, dim)
            cache.update(placeholder, placeholder, self.layer_idx, kwargs=kwargs)
        return hidden_states.new_zeros(()), None


_CACHE_ARGS = ("past_key_values", "cache", "past_key_value", "layer_past")


class SkippedMLP(nn.Module):
    """Stands in for a dropped MLP sub-layer: contributes exactly zero, computes nothing.

    Returns zeros of the input's shape (some blocks reshape the MLP's output or add to it in place);
    ``extras`` is how many more values the replaced MLP returned after its output (gpt-oss returns
    router scores), given back as None.
    """

    def __init__(self, removed: dict[str, tuple], extras: int = 0) -> None:
        super().__init__()
        self.removed = removed
        self.extras = extras

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        zero = torch.zeros_like(hidden_states)
        return (zero, *[None] * self.extras) if self.extras else zero


def _extra_outputs(mlp: nn.Module, hidden_size: int) -> int:
    """How many values an MLP returns after its output, found by running it on one zero token."""
    weight = next(mlp.parameters())
    with torch.no_grad():
        out = mlp(torch.zeros(1, 1, hidden_size, device=weight.device, dtype=weight.dtype))
    return 0 if torch.is_tensor(out) else len(out) - 1


@dataclass
class Pruning:
    """Which blocks of which granularity are dropped, by their index in the original model."""

    granularity: str
    layers: list[int]

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise CompanionError(f"unknown granularity '{self.granularity}'; choose from {', '.join(GRANULARITIES)}")
        self.layers = sorted(set(int(i) for i in self.layers))


def _shapes(layer: nn.Module, names: tuple[str, ...]) -> dict[str, tuple]:
    return {f"{name}.{key}": (tuple(p.shape), p.dtype) for name in names
            for key, p in getattr(layer, name).named_parameters()}


INDEX_LISTS = ("mlp_only_layers", "moe_layers")
"""Config fields that list layer indices (remapped on layer removal, not subset)."""


def _fix_config(config, kept: list[int], moe: list[bool], num_layers: int) -> None:
    """Make the text config describe the ``kept`` layers, so that transformers rebuilds exactly them:
    per-layer lists (``layer_types``, ``no_rope_layers``, ...) keep the kept entries; where the config
    decides which layers are mixture-of-experts (``mlp_only_layers`` with ``decoder_sparse_step``,
    ``moe_layers``, ``first_k_dense_replace``), it is rewritten from ``moe``, the kept layers' MLPs."""
    for name, value in list(vars(config).items()):
        if name not in INDEX_LISTS and name != "architectures" and isinstance(value, (list, tuple)) \
                and len(value) == num_layers:
            setattr(config, name, type(value)(value[i] for i in kept))
    if getattr(config, "mlp_only_layers", None) is not None and hasattr(config, "decoder_sparse_step"):
        config.mlp_only_layers = [j for j, is_moe in enumerate(moe) if not is_moe]
        config.decoder_sparse_step = 1
    if isinstance(getattr(config, "moe_layers", None), list):
        config.moe_layers = [j for j, is_moe in enumerate(moe) if is_moe]
    if isinstance(getattr(config, "first_k_dense_replace", None), int):
        dense = moe.index(True) if True in moe else len(moe)
        if any(not is_moe for is_moe in moe[dense:]):
            raise CompanionError("this layer pruning leaves dense layers after mixture-of-experts layers, which "
                                 "first_k_dense_replace cannot describe")
        config.first_k_dense_replace = dense
    if isinstance(getattr(config, "moe_layer_interval", None), int) and True in moe:  # ERNIE 4.5
        first, last = moe.index(True), len(moe) - 1 - moe[::-1].index(True)
        if not all(moe[first:last + 1]):
            raise CompanionError("this layer pruning leaves dense layers between mixture-of-experts layers, which "
                                 "moe_layer_interval cannot describe")
        config.moe_layer_interval, config.moe_layer_start_index, config.moe_layer_end_index = 1, first, last
    config.num_hidden_layers = len(kept)


def _remove_layers(model: nn.Module, dropped: list[int]) -> None:
    layers = layouts.decoder_layers(model)
    config = layouts.text_config(model)
    blocks = layouts.layer_blocks(model)
    num_layers = len(layers)
    kept = [i for i in range(num_layers) if i not in set(dropped)]
    layouts.set_decoder_layers(model, nn.ModuleList([layers[i] for i in kept]))
    for new_index, layer in enumerate(layouts.decoder_layers(model)):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    _fix_config(config, kept, [blocks[i].moe for i in kept], num_layers)


def _skip_sublayers(model: nn.Module, granularity: str, dropped: list[int]) -> None:
    config = layouts.text_config(model)
    layers = layouts.decoder_layers(model)
    blocks = layouts.layer_blocks(model)
    for i in dropped:
        layer, block = layers[i], blocks[i]
        if granularity == "attn":
            if isinstance(getattr(layer, block.attn), SkippedAttention):
                continue
            if not block.attention:
                raise CompanionError(f"layer {i} has no attention block to drop (its token mixer is "
                                     f"{type(getattr(layer, block.attn)).__name__})")
            removed = _shapes(layer, (block.attn, *block.attn_norms))
            _, kv_heads, head_dim = layouts.attention_dims(config)
            setattr(layer, block.attn, SkippedAttention(i, (kv_heads, head_dim), removed))
            norms = block.attn_norms
        else:
            if isinstance(getattr(layer, block.mlp), SkippedMLP):
                continue
            removed = _shapes(layer, (block.mlp, *block.mlp_norms))
            extras = _extra_outputs(getattr(layer, block.mlp), config.hidden_size)
            setattr(layer, block.mlp, SkippedMLP(removed, extras=extras))
            norms = block.mlp_norms
        for norm in norms:
            setattr(layer, norm, nn.Identity())


def _composed(previous: Pruning | None, pruning: Pruning, num_layers: int) -> Pruning:
    """The pruning a ``num_layers``-layer model carries after ``pruning`` is applied on top of the
    ``previous`` one, in indices of the original model."""
    if previous is None or not previous.layers:
        return pruning
    if not pruning.layers:
        return previous
    if pruning.granularity != previous.granularity:
        raise CompanionError(f"cannot drop {pruning.granularity} blocks of a model already pruned at granularity "
                             f"'{previous.granularity}'; prune the dense model instead")
    if pruning.granularity == "layer":  # positions in the pruned model -> indices in the original one
        present = [i for i in range(num_layers + len(previous.layers)) if i not in set(previous.layers)]
        return Pruning("layer", [*previous.layers, *(present[i] for i in pruning.layers)])
    return Pruning(pruning.granularity, [*previous.layers, *pruning.layers])


def apply_pruning(model: nn.Module, pruning: Pruning) -> dict:
    """Drop ``pruning.layers`` at ``pruning.granularity`` in place; returns parameter counts.

    Layer indices refer to the model as it is now. On a model that already carries a pruning (say, one
    loaded from a pruned checkpoint) a pruning of the same granularity composes: ``model.companion_pruning``
    becomes the union, in indices of the original model (dropping an attention or MLP sub-layer again is
    a no-op). A pruning of another granularity raises a :class:`~companion.errors.CompanionError`, since one pruning
    records one granularity.
    """
    num_layers = len(layouts.decoder_layers(model))
    bad = [i for i in pruning.layers if not 0 <= i < num_layers]
    if bad:
        raise CompanionError(f"cannot drop layer {bad[0]}: the model has {num_layers} layers")
    if pruning.granularity == "layer" and len(pruning.layers) >= num_layers:
        raise CompanionError(f"cannot drop all {num_layers} layers")
    carried = _composed(getattr(model, "companion_pruning", None), pruning, num_layers)
    before = count_parameters(model)
    if pruning.granularity == "layer":
        _remove_layers(model, pruning.layers)
    else:
        _skip_sublayers(model, pruning.granularity, pruning.layers)
    model.companion_pruning = carried
    return {"params_before": before, "params_after": count_parameters(model)}


@contextmanager
def temporarily_pruned(model: nn.Module, pruning: Pruning) -> Iterator[dict]:
    """Apply ``pruning`` inside a ``with`` block and restore the model as it was afterwards.

    Sweeps evaluate many prunings of one loaded model this way, without copies or reloads, so the
    same code serves a 270M model on a laptop and an 8B model on one GPU. A model that already carries
    a pruning gets the composition (see :func:`apply_pruning`) inside the block, and its own pruning,
    modules and config back after it.
    """
    config = layouts.text_config(model)
    saved_stack = layouts.decoder_layers(model)
    layers = list(saved_stack)
    saved_children = [dict(layer.named_children()) for layer in layers]
    saved_config = dict(vars(config))  # _fix_config replaces values, never changes them in place
    saved_indices = {m: m.layer_idx for layer in layers for m in layer.modules() if hasattr(m, "layer_idx")}
    saved_pruning = getattr(model, "companion_pruning", None)
    try:
        yield apply_pruning(model, pruning)
    finally:
        for layer, children in zip(layers, saved_children):
            for name, child in children.items():
                setattr(layer, name, child)
        for module, index in saved_indices.items():
            module.layer_idx = index
        layouts.set_decoder_layers(model, saved_stack)  # _remove_layers replaces the list, never changes it
        for name in set(vars(config)) - set(saved_config):
            delattr(config, name)
        for name, value in saved_config.items():
            if vars(config).get(name) is not value:
                setattr(config, name, value)
        if saved_pruning is None:
            model.__dict__.pop("companion_pruning", None)
        else:
            model.companion_pruning = saved_pruning
