"""Accuracy and perplexity against the number of dropped blocks, for every method and granularity.

One scoring pass gives every drop order; each distinct dropped set is evaluated once (the dense model
once for all, and two methods that agree on a set share its evaluation), on the one loaded model,
pruned and restored in place. The result is one tidy table. One progress bar counts every (pruning,
task) evaluation of the sweep.

Drop counts larger than the prunable layers of a model (its layers minus the protected ones, e.g. the
paper profile's K = 16 on a 4-layer test model) are clipped to that count with a note on stderr
(:func:`fit_drops`), so a profile runs on any model; a rows' ``K`` is the number actually dropped.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from companion import store
from companion.errors import CompanionError
from companion.experiments.evaluation import EvalSettings, evaluate
from companion.experiments.evaluation import task_data as evaluation_task_data
from companion.experiments.tasks import offline_differences
from companion.io import atomic_write_text
from companion.method.calibration import load_documents
from companion.method.orders import DropOrder, drop_order, parse_protect
from companion.method.scoring import Scores, ScoreSettings, cached_scores
from companion.model.loading import LoadedModel
from companion.model.surgery import Pruning, count_parameters, temporarily_pruned
from companion.names import primary_metric
from companion.provenance import environment, timestamp

COLUMNS = ["model", "calibration", "method", "granularity", "K", "dropped", "protected", "task", "metric", "primary",
           "value", "stderr", "n", "params"]
SCHEMA = "companion.sweep/2"


@dataclass
class SweepSettings:
    """Calibration, methods, granularities, drop counts and protected layers of a sweep."""

    calibration: str = "wikitext2"
    samples: int = 64
    seqlen: int = 256
    seed: int = 2024
    methods: list[str] = field(default_factory=lambda: ["knn", "bucket", "cosine"])
    granularities: list[str] = field(default_factory=lambda: ["attn", "layer"])
    drops: list[int] = field(default_factory=lambda: [0, 2, 4])
    protect: str = "auto"
    data_source: str = "auto"


def calibration_label(calibration: str) -> str:
    """How tables name a calibration: a file by its stem, a named source as given (``c4:train``)."""
    return Path(calibration).stem


def _file_label(calibration: str) -> str:
    return calibration_label(calibration).replace(":", "-")


def scores_path(out_dir: Path, calibration: str) -> Path:
    """Where a sweep keeps the scores of ``calibration`` (``c4:train`` -> ``scores_c4-train.json``)."""
    return Path(out_dir) / f"scores_{_file_label(calibration)}.json"


def sweep_path(out_dir: Path, calibration: str) -> Path:
    """Where a sweep on ``calibration`` writes its table (``.json``; a ``.csv`` beside it)."""
    return Path(out_dir) / f"sweep_{_file_label(calibration)}.json"


def fit_drops(drops: list[int], num_layers: int, protect: str, label: str = "the model", note: bool = True) -> list[int]:
    """``drops`` with counts above the prunable layers clipped to that count (sorted, distinct).

    Only an explicit ``protect`` rule (``first:2,last:1``, indices, ``none``) fixes the prunable count
    before scoring; with ``auto`` it depends on the scores, so ``drops`` is returned as it is. Clipping
    prints one note on stderr (unless ``note`` is False).
    """
    if protect == "auto":
        return sorted(set(drops))
    prunable = num_layers - len(parse_protect(protect, num_layers))
    fitted = sorted({min(k, prunable) for k in drops})
    over = sorted(k for k in set(drops) if k > prunable)
    if over and note:
        print(f"note: K = {', '.join(map(str, over))} exceed the {prunable} prunable layers of {label} "
              f"({num_layers} layers, protected {protect}); clipped to K = {prunable}", file=sys.stderr)
    return fitted


def scores_for(model: Callable[[], LoadedModel], settings: SweepSettings, out_dir: Path,
               identity: dict | None = None, progress: bool = True) -> Scores:
    """The scores of the sweep's calibration set, reused from ``out_dir`` when computed for the same key."""
    docs = load_documents(settings.calibration, data_source=settings.data_source)
    return cached_scores(scores_path(out_dir, settings.calibration), model, docs, settings.samples, settings.seqlen,
                         settings.seed, ScoreSettings(), identity=identity, progress=progress)


def plan(scores: Scores, settings: SweepSettings) -> tuple[list[DropOrder], dict[tuple[str, str, int], Pruning]]:
    """Every drop order and the pruning of every (method, granularity, K); checks all K before evaluating."""
    orders, prunings = [], {}
    for method in settings.methods:
        for granularity in settings.granularities:
            order = drop_order(scores, method, granularity, settings.protect)
            orders.append(order)
            for k in settings.drops:
                prunings[(method, granularity, k)] = Pruning(granularity, order.drop_set(k))
    return orders, prunings


def sweep_key(scores: Scores, settings: SweepSettings, eval_settings: EvalSettings, identity: dict) -> dict:
    """Every input that can change a sweep table (see :mod:`companion.store`)."""
    evaluation = {k: v for k, v in asdict(eval_settings).items() if k not in ("batch_size", "progress", "data_source")}
    task_data = {task: evaluation_task_data(task, eval_settings.online) for task in eval_settings.tasks}
    return {"kind": "sweep", "scores": scores["key_sha256"], "settings": _portable(settings), "evaluation": evaluation,
            "task_data": task_data, "model": identity, "numerics": store.numerics()}


def _portable(settings: SweepSettings) -> dict:
    """The settings as results record them: a calibration file by its name (its content hash is in the scores)."""
    return {**asdict(settings), "calibration": Path(settings.calibration).name}


def run_sweep(model: Callable[[], LoadedModel], settings: SweepSettings, eval_settings: EvalSettings, out_dir: Path,
              identity: dict | None = None, progress: bool = True) -> dict:
    """Score, derive every drop order, evaluate each distinct pruning once; write ``sweep_<calibration>``.

    Returns the sweep's content (rows, orders, provenance). A sweep already in ``out_dir`` for the same
    key is returned as it is; otherwise evaluations stored under ``out_dir/evaluations`` are reused.
    ``model`` is called only when something has to be computed.
    """
    eval_settings.validate()
    out_dir = Path(out_dir)
    identity = identity or model().identity()
    scores = scores_for(model, settings, out_dir, identity, progress)
    orders, prunings = plan(scores, settings)
    key = sweep_key(scores, settings, eval_settings, identity)
    if progress and store.read(sweep_path(out_dir, settings.calibration), key) is None:
        distinct = len({_pruning_id(p) for p in prunings.values()})
        print(f"{calibration_label(settings.calibration)}: {distinct} distinct prunings × "
              f"{len(eval_settings.tasks)} tasks = {distinct * len(eval_settings.tasks)} evaluations "
              "(stored ones are reused)", file=sys.stderr)

    def compute() -> dict:
        loaded = model()
        rows = _evaluate_prunings(loaded, identity["spec"], settings, eval_settings, orders, prunings, out_dir,
                                  progress)
        content = {"schema": SCHEMA, "created": timestamp(), "model": loaded.provenance(),
                   "settings": _portable(settings), "evaluation": asdict(eval_settings), "environment": environment(),
                   "scores": {"file": scores_path(out_dir, settings.calibration).name,
                              "key_sha256": scores["key_sha256"], "created": scores["created"],
                              "data": {k: v for k, v in scores["data"].items() if k != "windows"}},
                   "orders": [order.to_json() for order in orders],
                   "distinct_prunings": len({_pruning_id(p) for p in prunings.values()}),
                   "task_data": task_data_notes(eval_settings.tasks, eval_settings.online), "rows": rows}
        write_csv(rows, sweep_path(out_dir, settings.calibration).with_suffix(".csv"))
        return content

    return store.cached(sweep_path(out_dir, settings.calibration), key, compute)


def _pruning_id(pruning: Pruning) -> tuple[str, tuple[int, ...]]:
    return (pruning.granularity, tuple(pruning.layers)) if pruning.layers else ("dense", ())


def _evaluate_prunings(loaded: LoadedModel, model_label: str, settings: SweepSettings, eval_settings: EvalSettings,
                       orders: list[DropOrder], prunings: dict[tuple[str, str, int], Pruning], out_dir: Path,
                       progress: bool) -> list[dict]:
    """Evaluate each distinct pruning once (the dense model once for all) and expand to tidy rows."""
    cache = out_dir / "evaluations"  # kept beside the results, so committed results make reruns cheap
    distinct = {_pruning_id(p) for p in prunings.values()}
    results, params = {}, {}
    dense_params = count_parameters(loaded.model)
    bar = tqdm(total=len(distinct) * len(eval_settings.tasks), desc="evaluations", unit="eval", disable=not progress)
    for key in sorted(distinct):
        granularity, layers = key
        bar.set_postfix_str("dense" if granularity == "dense" else f"{granularity} {' '.join(map(str, layers))}")
        if granularity == "dense":
            results[key] = evaluate(loaded, eval_settings, cache=cache, done=lambda _: bar.update())
            params[key] = dense_params
            continue
        pruning = Pruning(granularity, list(layers))
        with temporarily_pruned(loaded.model, pruning) as report:  # on a pruned checkpoint: the union
            results[key] = evaluate(loaded, eval_settings, loaded.model.companion_pruning, cache,
                                    done=lambda _: bar.update())
            params[key] = report["params_after"]
    bar.close()
    protected = {(o.method, o.granularity): " ".join(map(str, o.protected)) for o in orders}
    rows = []
    for (method, granularity, k), pruning in prunings.items():
        key = _pruning_id(pruning)
        for row in results[key]:
            rows.append({"model": model_label, "calibration": calibration_label(settings.calibration), "method": method,
                         "granularity": granularity, "K": k, "dropped": " ".join(map(str, pruning.layers)),
                         "protected": protected[(method, granularity)],
                         "task": row["task"], "metric": row["metric"],
                         "primary": row["metric"] == primary_metric(row["task"]), "value": row["value"],
                         "stderr": row["stderr"], "n": row["n"], "params": params[key]})
    return rows


def task_data_notes(tasks: list[str], online: bool) -> dict[str, str]:
    """Where each task's data came from; from local copies, how they differ from the Hub's."""
    if online:
        return {task: "Hugging Face Hub (stock lm-eval task)" for task in tasks}
    notes = {**offline_differences(), "wikitext2_ppl": "the rows of wikitext-2-raw-v1 test, as on the Hub."}
    return {task: f"local copy under COMPANION_DATA_DIR. {notes.get(task, '')}".strip() for task in tasks}


def write_csv(rows: list[dict], path: Path) -> None:
    """Write sweep ``rows`` as CSV, atomically."""
    if not rows:
        raise CompanionError("nothing to write: the sweep produced no rows")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
