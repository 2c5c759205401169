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
from companion.model import adapters
from companion.names import GRANULARITIES


class SkippedAttention(nn.Module):
    """Stands in for a dropped attention sub-layer: contributes exactly zero, computes nothing.

    With a cache it stores a (batch, 1, tokens, 1) placeholder so the cache keeps counting tokens for
    this layer; static caches get zeros of the full key/value shape instead.
    """

    def __init__(self, layer_idx: int, kv_shape: tuple[int, int], removed: dict[str, tuple]) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.kv_shape = kv_shape
        self.removed = removed

    def forward(self, hidden_states: torch.Tensor, *args, cache=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            batch, tokens = hidden_states.shape[:2]
            layer = cache.layers[self.layer_idx] if hasattr(cache, "layers") else None
            dynamic = layer is None or not getattr(layer, "is_compileable", False)
            heads, dim = (1, 1) if dynamic else self.kv_shape
            placeholder = hidden_states.new_zeros(batch, heads, tokens, dim)
            cache.update(placeholder, placeholder, self.layer_idx, kwargs=kwargs)
        return hidden_states.new_zeros(()), None


class SkippedMLP(nn.Module):
    """Stands in for a dropped MLP sub-layer: contributes exactly zero, computes nothing."""

    def __init__(self, removed: dict[str, tuple]) -> None:
        super().__init__()
        self.removed = removed

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.new_zeros(())


@dataclass
class Pruning:
    """Which blocks of which granularity are dropped, by their index in the original model."""

    granularity: str
    layers: list[int]

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise CompanionError(f"unknown granularity '{self.granularity}'; choose from {', '.join(GRANULARITIES)}")
        self.layers = sorted(set(int(i) for i in self.layers))


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _shapes(layer: nn.Module, names: tuple[str, ...]) -> dict[str, tuple]:
    return {f"{name}.{key}": (tuple(p.shape), p.dtype) for name in names
            for key, p in getattr(layer, name).named_parameters()}


def _remove_layers(model: nn.Module, dropped: list[int]) -> None:
    stack = adapters.decoder(model)
    config = adapters.text_config(model)
    kept = [i for i in range(len(stack.layers)) if i not in set(dropped)]
    stack.layers = nn.ModuleList([stack.layers[i] for i in kept])
    for new_index, layer in enumerate(stack.layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in kept]
    config.num_hidden_layers = len(kept)


def _skip_sublayers(model: nn.Module, granularity: str, dropped: list[int]) -> None:
    family = adapters.family_of(model)
    config = adapters.text_config(model)
    layers = adapters.decoder_layers(model)
    for i in dropped:
        layer = layers[i]
        if granularity == "attn":
            if isinstance(getattr(layer, family.attn), SkippedAttention):
                continue
            removed = _shapes(layer, (family.attn, *family.attn_norms))
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
            setattr(layer, family.attn, SkippedAttention(i, (kv_heads, head_dim), removed))
            norms = family.attn_norms
        else:
            if isinstance(getattr(layer, family.mlp), SkippedMLP):
                continue
            removed = _shapes(layer, (family.mlp, *family.mlp_norms))
            setattr(layer, family.mlp, SkippedMLP(removed))
            norms = family.mlp_norms
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
    num_layers = len(adapters.decoder_layers(model))
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
    stack = adapters.decoder(model)
    config = adapters.text_config(model)
    saved_stack = stack.layers
    layers = list(saved_stack)
    saved_children = [dict(layer.named_children()) for layer in layers]
    saved_config = (config.num_hidden_layers, getattr(config, "layer_types", None))
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
        stack.layers = saved_stack  # _remove_layers replaces the list, never changes it
        config.num_hidden_layers = saved_config[0]
        if saved_config[1] is not None:
            config.layer_types = saved_config[1]
        if saved_pruning is None:
            model.__dict__.pop("companion_pruning", None)
        else:
            model.companion_pruning = saved_pruning
