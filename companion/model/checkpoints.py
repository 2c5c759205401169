"""Pruned checkpoints on disk: standard transformers folders plus a manifest of what was dropped.

Attention- and MLP-pruned checkpoints are saved with zeros in place of the removed weights (so plain
transformers computes exactly zero for those sub-layers) plus ``companion_pruning.json``, from which
:func:`companion.model.loading.load_model` rebuilds the compute-free model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from companion.errors import CompanionError
from companion.io import atomic_write_json
from companion.model import layouts
from companion.model.surgery import Pruning

MANIFEST = "companion_pruning.json"


def _layers_prefix(model: nn.Module) -> str:
    layers = layouts.decoder_layers(model)
    return next(name for name, module in model.named_modules() if module is layers)


def save_pruned(model: nn.Module, tokenizer, out_dir: str | Path, report: dict | None = None) -> Path:
    """Save a pruned model as a checkpoint plus ``companion_pruning.json``."""
    out_dir = Path(out_dir)
    pruning: Pruning | None = getattr(model, "companion_pruning", None)
    if pruning is None:
        raise CompanionError("the model carries no pruning to save")
    state = model.state_dict()
    if pruning.granularity == "layer":
        _check_rebuilds(model, state)
    else:
        prefix = _layers_prefix(model)
        for i, layer in enumerate(layouts.decoder_layers(model)):
            for module in layer.children():
                for key, (shape, dtype) in getattr(module, "removed", {}).items():
                    state[f"{prefix}.{i}.{key}"] = torch.zeros(shape, dtype=dtype)
    model.save_pretrained(out_dir, state_dict=state)
    tokenizer.save_pretrained(out_dir)
    atomic_write_json(out_dir / MANIFEST, {"schema": "companion.pruning/1", **(report or {}), **asdict(pruning)})
    return out_dir


def _check_rebuilds(model: nn.Module, state: dict) -> None:
    """Refuse to save a layer-pruned model that transformers would not rebuild from its config: the
    parameters of a model built from the config (on the meta device, no memory) must match."""
    with torch.device("meta"):
        rebuilt = AutoModelForCausalLM.from_config(model.config)
    expected = {key: tuple(value.shape) for key, value in rebuilt.state_dict().items()}
    actual = {key: tuple(value.shape) for key, value in state.items()}
    differ = sorted(set(expected.items()) ^ set(actual.items()))
    reason = layouts.NO_LAYER_REMOVAL.get(model.config.model_type)
    if reason:
        raise CompanionError(f"a layer-pruned {model.config.model_type} cannot be saved: {reason}")
    if differ:
        raise CompanionError(f"a layer-pruned {model.config.model_type} does not match what its config rebuilds "
                             f"(first difference: {differ[0][0]}); this family supports attn and mlp pruning only")


def read_manifest(folder: str | Path) -> Pruning | None:
    """The pruning recorded in a checkpoint folder, if any."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return Pruning(data["granularity"], data["layers"])
