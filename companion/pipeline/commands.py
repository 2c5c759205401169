"""The single actions behind the command line's subcommands: score a model into a file, derive an order,
prune and save a checkpoint, evaluate, time, write offline task configs, plan from a model config.

Each takes plain values (parsed by ``companion.cli``), does the work through the method and
experiments layers, writes its result files atomically, and returns what the command line reports.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from companion import store
from companion.errors import CompanionError
from companion.io import atomic_write_json, sha256_file
from companion.pipeline.config import RunConfig, int_list


def file_ref(path: str | Path) -> dict:
    """A user-given file as results record it: its name and content hash, never where it lies."""
    return {"name": Path(path).name, "sha256": sha256_file(path)}


def score_to_file(model: str, device: str, dtype: str, data: str, split: str | None, data_source: str,
                  samples: int, seqlen: int, seed: int, settings, out: str | Path, force: bool = False,
                  progress: bool = True) -> tuple[dict, bool]:
    """Score every block of ``model`` on ``data`` into ``out`` (a scores file); returns the scores and
    whether they were reused (the file already held scores for the same key)."""
    import functools

    from companion.method.calibration import load_documents
    from companion.method.scoring import cached_scores, scores_key
    from companion.model.loading import load_model, model_identity

    for name, value in (("samples", samples), ("seqlen", seqlen)):
        if value < 1:
            raise CompanionError(f"--{name} must be positive (got {value})")
    settings.validate()
    docs = load_documents(data, split, data_source=data_source)
    loader = functools.lru_cache(maxsize=1)(lambda: load_model(model, device, dtype))
    identity = model_identity(model, device, dtype) or loader().identity()
    key = scores_key(identity, docs.provenance(), samples, seqlen, seed, settings)
    reused = not force and store.read(out, key) is not None
    scores = cached_scores(out, loader, docs, samples, seqlen, seed, settings, identity, progress=progress,
                           force=force)
    return scores, reused


def drop_order_of(scores_path: str | Path, method: str, granularity: str, protect: str):
    """The drop order of ``method`` at ``granularity`` from a scores file."""
    from companion.method.orders import drop_order
    from companion.method.scoring import read_scores

    return drop_order(read_scores(scores_path), method, granularity, protect)


def chosen_pruning(granularity: str, layers: str | None, scores: str | None, method: str, protect: str,
                   drop: int | None) -> tuple[Any, dict]:
    """The pruning a command asks for: explicit ``layers`` (comma-separated), or the first ``drop`` blocks
    of ``method``'s order from ``scores``; with how it was chosen, for the checkpoint's manifest."""
    from companion.model.surgery import Pruning

    if layers is not None:
        return Pruning(granularity, int_list(layers)), {"selection": "explicit --layers"}
    if scores is None or drop is None:
        raise CompanionError("give --scores and --drop (or explicit --layers)")
    order = drop_order_of(scores, method, granularity, protect)
    return Pruning(granularity, order.drop_set(drop)), {"scores": file_ref(scores), "order": order.to_json()}


def prune_to_folder(model: str, device: str, dtype: str, pruning, source: dict, out: str | Path) -> dict:
    """Prune ``model`` and save the checkpoint to ``out``; returns the parameter counts."""
    from companion.model.checkpoints import save_pruned
    from companion.model.loading import load_model
    from companion.model.surgery import apply_pruning

    loaded = load_model(model, device, dtype)
    report = apply_pruning(loaded.model, pruning)
    save_pruned(loaded.model, loaded.tokenizer, out, {**report, "base_model": loaded.provenance(), **source})
    return report


def describe(model: str, device: str, dtype: str) -> dict:
    """A model in numbers: provenance, block layouts, attention and MoE layers, prunable attention blocks,
    parameters (all and active per token) and the pruning it carries."""
    from companion.model.layouts import active_parameters, layer_blocks, layouts_of, prunable, text_config
    from companion.model.loading import load_model
    from companion.model.surgery import count_parameters

    loaded = load_model(model, device, dtype)
    config = text_config(loaded.model)
    blocks = layer_blocks(loaded.model)
    pruning = getattr(loaded.model, "companion_pruning", None)
    return {**loaded.provenance(), "layouts": layouts_of(loaded.model), "hidden_size": config.hidden_size,
            "attention_layers": sum(b.attention for b in blocks), "moe_layers": sum(b.moe for b in blocks),
            "prunable_attn": prunable(loaded.model, "attn"), "parameters": count_parameters(loaded.model),
            "active_parameters": active_parameters(loaded.model, config),
            "pruning": None if pruning is None else {"granularity": pruning.granularity, "layers": pruning.layers}}


def evaluate_model(model: str, device: str, dtype: str, settings, pruning=None, out: str | Path | None = None
                   ) -> list[dict]:
    """Evaluate ``model`` (pruned by ``pruning`` first, or as its own manifest says) on ``settings``'
    tasks; writes the rows to ``out`` when given."""
    from companion.experiments.evaluation import evaluate
    from companion.model.loading import load_model
    from companion.model.surgery import apply_pruning
    from companion.provenance import environment, timestamp

    settings.validate()
    loaded = load_model(model, device, dtype)
    if pruning is not None and pruning.layers:
        apply_pruning(loaded.model, pruning)
    else:
        pruning = getattr(loaded.model, "companion_pruning", None)
    rows = evaluate(loaded, settings, pruning)
    if out:
        atomic_write_json(out, {"schema": "companion.eval/1", "created": timestamp(), "model": loaded.provenance(),
                                "pruning": None if pruning is None else vars(pruning), "settings": asdict(settings),
                                "environment": environment(), "rows": rows})
    return rows


def speed_to_file(model: str, device: str, dtype: str, scores_path: str | Path, method: str, protect: str,
                  granularities: list[str], drops: list[int], measure: dict, out: str | Path) -> list[dict]:
    """Time the drop orders of ``method`` at ``granularities``; writes ``out`` (JSON and a CSV beside it)."""
    from companion.experiments.speed import speed_key, speed_runs, write_speed
    from companion.method.scoring import read_scores
    from companion.model.loading import load_model

    loaded = load_model(model, device, dtype)
    scores = read_scores(scores_path)
    drops = sorted(set(drops) | {0})
    settings = {"method": method, "protect": protect, "granularities": granularities, "drops": drops, **measure}
    rows = speed_runs(loaded, scores, settings)
    write_speed(rows, out, {"model": loaded.provenance(), "scores": file_ref(scores_path), **settings},
                speed_key(loaded.identity(), scores, settings))
    return rows


def plan_from_model_config(config: RunConfig, model_config: str | Path, tflops: float, mfu: float,
                           bandwidth: float, chars_per_token: float) -> str:
    """The plan of ``config`` for a model known only by its ``config.json``, timed from FLOPs."""
    from transformers import AutoConfig

    from companion.experiments import plan as planning
    from companion.pipeline.run import Run, run_plan

    try:
        values = json.loads(Path(model_config).read_text(encoding="utf-8"))
        model_cfg = AutoConfig.for_model(**values)
    except (OSError, ValueError, KeyError) as exc:
        raise CompanionError(f"cannot read the model config {model_config} ({exc})") from exc
    layers = model_cfg.get_text_config().num_hidden_layers
    drops = sorted({0, *config.drops})
    texts = [config.summary()]
    for model in config.models:
        run = Run(config=config.for_model(model), model=model, num_layers=layers, drops=drops,
                  speed_drops=sorted(set(config.speed_drops)))
        plan = run_plan(run, planning.char_lengths(chars_per_token))
        plan.notes.append(f"tokens estimated as characters / {chars_per_token:g}")
        throughput = planning.throughput_from_flops(model_cfg, tflops, mfu, planning.typical_length(plan), bandwidth)
        texts.append(planning.format_plan(plan, throughput))
    return "\n".join(texts)


def write_tasks(out: str | Path, tasks: list[str] | None) -> tuple[Path, dict[str, str]]:
    """Write offline lm-eval task configs to ``out``; returns the folder and how local copies differ."""
    from companion.experiments.tasks import offline_differences, write_task_configs

    return write_task_configs(Path(out), tasks or None), offline_differences()
