"""Accuracy and perplexity against the number of dropped blocks, for every method and granularity.

One scoring pass gives every drop order; each distinct dropped set is evaluated once (the dense model
once for all, and two methods that agree on a set share its evaluation), on the one loaded model,
pruned and restored in place. The result is one tidy table.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from companion.errors import CompanionError
from companion.experiments.evaluation import EvalSettings, evaluate
from companion.experiments.tasks import offline_differences
from companion.hub import hub_reachable
from companion.io import atomic_write_json, atomic_write_text
from companion.method.calibration import load_documents, sample_windows
from companion.method.orders import drop_order
from companion.method.scoring import ScoreSettings, reusable_scores, score
from companion.model.loading import LoadedModel
from companion.model.surgery import Pruning, count_parameters, temporarily_pruned
from companion.names import primary_metric
from companion.provenance import environment, timestamp

COLUMNS = ["model", "calibration", "method", "granularity", "K", "dropped", "task", "metric", "primary", "value",
           "stderr", "n", "params"]


@dataclass
class SweepSettings:
    """Calibration, methods, granularities and drop counts of a sweep."""

    calibration: str = "wikitext2"
    samples: int = 64
    seqlen: int = 256
    seed: int = 2024
    methods: list[str] = field(default_factory=lambda: ["knn", "bucket", "cosine"])
    granularities: list[str] = field(default_factory=lambda: ["attn", "layer"])
    drops: list[int] = field(default_factory=lambda: [0, 2, 4])
    protect: str = "auto"


def scores_for(loaded: LoadedModel, settings: SweepSettings, path: Path, progress: bool = True) -> dict:
    """The scores of ``loaded`` on the sweep's calibration set, read from ``path`` when already there."""
    score_settings = ScoreSettings()
    existing = reusable_scores(path, loaded.spec, settings.calibration, settings.samples, settings.seqlen,
                               settings.seed, score_settings)
    if existing is not None:
        return existing
    docs = load_documents(settings.calibration)
    windows = sample_windows(loaded.tokenizer, docs, settings.samples, settings.seqlen, settings.seed)
    result = score(loaded, docs, windows, score_settings, progress=progress)
    atomic_write_json(path, result)
    return result


def plan(scores: dict, settings: SweepSettings) -> dict[tuple[str, str, int], Pruning]:
    """The pruning of every (method, granularity, K); checks all K before any evaluation starts."""
    prunings = {}
    for method in settings.methods:
        for granularity in settings.granularities:
            order = drop_order(scores, method, granularity, settings.protect)
            for k in settings.drops:
                prunings[(method, granularity, k)] = Pruning(granularity, order.drop_set(k))
    return prunings


def run_sweep(loaded: LoadedModel, settings: SweepSettings, eval_settings: EvalSettings, out_dir: Path,
              progress: bool = True) -> list[dict]:
    """Score, derive every drop order, evaluate each distinct pruning once, write ``sweep.csv``/``.json``."""
    eval_settings.validate()
    out_dir = Path(out_dir)
    scores = scores_for(loaded, settings, out_dir / f"scores_{Path(settings.calibration).stem}.json", progress)
    prunings = plan(scores, settings)
    cache = out_dir / "evaluations"  # kept beside the results, so committed results make reruns cheap
    distinct = {(p.granularity, tuple(p.layers)) if p.layers else ("dense", ()) for p in prunings.values()}
    results, params = {}, {}
    dense_params = count_parameters(loaded.model)
    for key in tqdm(sorted(distinct), desc="evaluating prunings", unit="pruning", disable=not progress):
        granularity, layers = key
        if granularity == "dense":
            results[key], params[key] = evaluate(loaded, eval_settings, cache=cache), dense_params
            continue
        pruning = Pruning(granularity, list(layers))
        with temporarily_pruned(loaded.model, pruning) as report:
            results[key], params[key] = evaluate(loaded, eval_settings, pruning, cache), report["params_after"]
    rows = []
    for (method, granularity, k), pruning in prunings.items():
        key = (granularity, tuple(pruning.layers)) if pruning.layers else ("dense", ())
        for row in results[key]:
            rows.append({"model": loaded.spec, "calibration": settings.calibration, "method": method,
                         "granularity": granularity, "K": k, "dropped": " ".join(map(str, pruning.layers)),
                         "task": row["task"], "metric": row["metric"],
                         "primary": row["metric"] == primary_metric(row["task"]), "value": row["value"],
                         "stderr": row["stderr"], "n": row["n"], "params": params[key]})
    write_table(rows, out_dir / f"sweep_{Path(settings.calibration).stem}", {
        "created": timestamp(), "model": loaded.provenance(), "settings": asdict(settings),
        "evaluation": asdict(eval_settings), "environment": environment(),
        "scores": {"path": str(out_dir / f"scores_{Path(settings.calibration).stem}.json"),
                   "created": scores["created"], "data": {k: v for k, v in scores["data"].items() if k != "windows"}},
        "distinct_prunings": len(distinct), "task_data": task_data_notes(eval_settings.tasks)})
    return rows


def task_data_notes(tasks: list[str]) -> dict[str, str]:
    """Where each task's data came from; offline, how the local copy differs from the Hub's."""
    if hub_reachable():
        return {task: "Hugging Face Hub (stock lm-eval task)" for task in tasks}
    notes = {**offline_differences(), "wikitext2_ppl": "the rows of wikitext-2-raw-v1 test, as on the Hub."}
    return {task: f"local copy under COMPANION_DATA_DIR. {notes.get(task, '')}".strip() for task in tasks}


def write_table(rows: list[dict], stem: Path, provenance: dict) -> None:
    """Write ``rows`` as ``stem.csv`` and, with provenance, ``stem.json``; both atomically."""
    if not rows:
        raise CompanionError("nothing to write: the sweep produced no rows")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(stem.with_suffix(".csv"), buffer.getvalue())
    atomic_write_json(stem.with_suffix(".json"), {"schema": "companion.sweep/1", **provenance, "rows": rows})
