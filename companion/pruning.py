"""Drop orders from scores, and pruning of a loaded model at a granularity.

A drop order sorts the prunable blocks by score ascending: entropy increase ΔH for entropy methods,
1 − cos (or the angular distance) for similarity methods; ties go by layer index. Protected layers
(the compression stage) are never dropped.

Pruning a ``layer`` removes decoder layers and fixes the config, so the result is a standard
checkpoint. Pruning ``attn`` or ``mlp`` replaces the sub-layer and its norms by modules that cost
nothing; a skipped attention still advances the KV cache by a one-number-per-token placeholder so the
cache's sequence length (which positions and masks are built from) stays right during ``generate``.
Such checkpoints are saved with zeros in place of the removed weights (so plain transformers computes
exactly zero for those sub-layers) plus a manifest from which :func:`companion.models.load_model`
rebuilds the compute-free model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import adapters
from .errors import CompanionError
from .io import atomic_write_json

GRANULARITIES = ("attn", "mlp", "layer")
MANIFEST = "companion_pruning.json"


def compression_stage(profile: list[float]) -> int:
    """Number of leading layers in the compression stage of an entropy profile (L+1 boundary values).

    The stage ends at the lowest boundary entropy within the first half of the network: the layers
    before it reduce entropy (the paper's "compression"), the ones after it expand it.
    """
    half = max(1, (len(profile) - 1) // 2)
    head = profile[: half + 1]
    return min(range(len(head)), key=lambda i: (head[i], i))


def parse_protect(spec: str, num_layers: int, profile: list[float] | None = None) -> list[int]:
    """Layers never dropped: ``auto`` (the detected compression stage), ``none``, or a comma list of
    ``first:N``, ``last:N`` and layer indices, e.g. ``first:2,last:1`` as the paper's code does."""
    if spec == "auto":
        return list(range(compression_stage(profile))) if profile else []
    if spec in {"none", ""}:
        return []
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(first|last):(\d+)", part)
        if match:
            n = int(match.group(2))
            layers.update(range(n) if match.group(1) == "first" else range(num_layers - n, num_layers))
        elif part.isdigit():
            layers.add(int(part))
        else:
            raise CompanionError(f"bad --protect '{spec}': use auto, none, or e.g. first:2,last:1 or 0,1,17")
    bad = sorted(i for i in layers if not 0 <= i < num_layers)
    if bad:
        raise CompanionError(f"--protect names layer {bad[0]} but the model has {num_layers} layers")
    return sorted(layers)


@dataclass
class DropOrder:
    """Prunable layers sorted by score (lowest first), with what was protected and why."""

    method: str
    granularity: str
    order: list[int]
    protected: list[int]
    values: list[float]
    num_layers: int

    def drop_set(self, k: int) -> list[int]:
        """The ``k`` blocks dropped first, sorted by layer index."""
        if not 0 <= k <= len(self.order):
            raise CompanionError(
                f"cannot drop {k} {self.granularity} blocks: {len(self.order)} of {self.num_layers} are prunable "
                f"({len(self.protected)} protected)"
            )
        return sorted(self.order[:k])

    def rank_string(self) -> str:
        """The paper code's ``drop_layers_order``: entry i is the rank of layer i (protected ranked last)."""
        ranks = [0] * self.num_layers
        for rank, layer in enumerate(self.order + sorted(self.protected)):
            ranks[layer] = rank
        return "_".join(map(str, ranks))

    def to_json(self) -> dict:
        return {**asdict(self), "rank_string": self.rank_string()}


def decode_rank_string(ranks: str) -> list[int]:
    """Layers in drop order from a paper-code rank string (``29_30_28_...``)."""
    values = [int(v) for v in ranks.strip().split("_")]
    return sorted(range(len(values)), key=lambda i: values[i])


def drop_order(scores: dict, method: str, granularity: str, protect: str = "auto") -> DropOrder:
    """The drop order of ``method`` at ``granularity`` from a scores file's content."""
    if granularity not in GRANULARITIES:
        raise CompanionError(f"unknown granularity '{granularity}'; choose from {', '.join(GRANULARITIES)}")
    rows = [b for b in scores["blocks"] if b["method"] == method and b["granularity"] == granularity]
    if not rows:
        methods = sorted({b["method"] for b in scores["blocks"]})
        raise CompanionError(f"method '{method}' is not in the scores file; it has: {', '.join(methods)}")
    num_layers = scores["num_layers"]
    values = [float("nan")] * num_layers
    for row in rows:
        values[row["layer"]] = row["value"]
    profile = scores["profiles"].get(method)
    protected = parse_protect(protect, num_layers, profile)
    order = sorted((i for i in range(num_layers) if i not in protected), key=lambda i: (values[i], i))
    return DropOrder(method, granularity, order, protected, values, num_layers)


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


def apply_pruning(model: nn.Module, pruning: Pruning) -> dict:
    """Drop ``pruning.layers`` at ``pruning.granularity`` in place; returns parameter counts."""
    num_layers = len(adapters.decoder_layers(model))
    bad = [i for i in pruning.layers if not 0 <= i < num_layers]
    if bad:
        raise CompanionError(f"cannot drop layer {bad[0]}: the model has {num_layers} layers")
    if pruning.granularity == "layer" and len(pruning.layers) >= num_layers:
        raise CompanionError(f"cannot drop all {num_layers} layers")
    before = count_parameters(model)
    if pruning.granularity == "layer":
        _remove_layers(model, pruning.layers)
    else:
        _skip_sublayers(model, pruning.granularity, pruning.layers)
    model.companion_pruning = pruning
    return {"params_before": before, "params_after": count_parameters(model)}


def _layers_prefix(model: nn.Module) -> str:
    layers = adapters.decoder(model).layers
    return next(name for name, module in model.named_modules() if module is layers)


def save_pruned(model: nn.Module, tokenizer, out_dir: str | Path, report: dict | None = None) -> Path:
    """Save a pruned model as a checkpoint plus ``companion_pruning.json``."""
    out_dir = Path(out_dir)
    pruning: Pruning | None = getattr(model, "companion_pruning", None)
    if pruning is None:
        raise CompanionError("the model carries no pruning to save")
    state = model.state_dict()
    if pruning.granularity != "layer":
        prefix = _layers_prefix(model)
        for i, layer in enumerate(adapters.decoder_layers(model)):
            for module in layer.children():
                for key, (shape, dtype) in getattr(module, "removed", {}).items():
                    state[f"{prefix}.{i}.{key}"] = torch.zeros(shape, dtype=dtype)
    model.save_pretrained(out_dir, state_dict=state)
    tokenizer.save_pretrained(out_dir)
    atomic_write_json(out_dir / MANIFEST, {"schema": "companion.pruning/1", **(report or {}), **asdict(pruning)})
    return out_dir


def read_manifest(folder: str | Path) -> Pruning | None:
    """The pruning recorded in a checkpoint folder, if any."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return Pruning(data["granularity"], data["layers"])


@contextmanager
def temporarily_pruned(model: nn.Module, pruning: Pruning) -> Iterator[dict]:
    """Apply ``pruning`` inside a ``with`` block and restore the dense model afterwards.

    Sweeps evaluate many prunings of one loaded model this way, without copies or reloads, so the
    same code serves a 270M model on a laptop and an 8B model on one GPU.
    """
    stack = adapters.decoder(model)
    config = adapters.text_config(model)
    layers = list(stack.layers)
    saved_children = [dict(layer.named_children()) for layer in layers]
    saved_config = (config.num_hidden_layers, getattr(config, "layer_types", None))
    saved_indices = {m: m.layer_idx for layer in layers for m in layer.modules() if hasattr(m, "layer_idx")}
    try:
        yield apply_pruning(model, pruning)
    finally:
        for layer, children in zip(layers, saved_children):
            for name, child in children.items():
                setattr(layer, name, child)
        for module, index in saved_indices.items():
            module.layer_idx = index
        stack.layers = nn.ModuleList(layers)
        config.num_hidden_layers = saved_config[0]
        if saved_config[1] is not None:
            config.layer_types = saved_config[1]
        model.__dict__.pop("companion_pruning", None)
