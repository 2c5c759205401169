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

from companion.errors import CompanionError
from companion.io import atomic_write_json
from companion.model import adapters
from companion.model.surgery import Pruning

MANIFEST = "companion_pruning.json"


def _layers_prefix(model: nn.Module) -> str:
    layers = adapters.decoder_layers(model)
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
