"""Accuracy and perplexity against the number of dropped blocks, for every method and granularity.

One scoring pass gives every drop order; each distinct dropped set is evaluated once (the dense model
once for all, and two methods that agree on a set share its evaluation), on the one loaded model,
pruned and restored in place. Every order protects the same layers (:mod:`companion.method.orders`),
and the null references, ``random:<seed>`` drop sets and ``last`` (the last prunable blocks), are
evaluated beside the criteria. The random seeds split the examples: seed s of n is evaluated on the
s-th of n interleaved shards of the sample (:func:`random_shard`), so pooled they cover every example
once, each with one random drop set, for the cost of one pruning. One progress bar counts every (pruning, task) evaluation of the sweep.

Examples are spent where they decide the claims: the ``primary_methods`` at the headline K (the K
closest to 37.5 % of the layers) and the dense model are evaluated on ``primary_limit`` examples per task (and ``primary_ppl_chunks`` perplexity windows); every other
pruning on the evaluation settings' ``limit``. The smaller sample is a subset of the larger one.

A sweep writes two tables: the aggregate one (``sweep_<calibration>.json``/``.csv``, one row per
method, granularity, K, task and metric) and the tidy per-example one (``examples_<calibration>.parquet``:
one row per method, granularity, K, task, document and metric, with a ``value``), whose means are the
aggregate table's values.

Drop counts larger than the prunable layers of a model (its layers minus the protected ones, e.g. the
paper profile's K = 16 on a 4-layer test model) are clipped to that count with a note on stderr
(:func:`fit_drops`), so a profile runs on any model; a row's ``K`` is the number actually dropped.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from companion import store
from companion.errors import CompanionError
from companion.experiments.evaluation import EvalSettings, evaluate_entries
from companion.experiments.evaluation import task_data as evaluation_task_data
from companion.experiments.tasks import offline_differences
from companion.io import atomic_write_bytes, atomic_write_text, sha256_file
from companion.method import criteria
from companion.method.calibration import load_documents
from companion.method.orders import (
    DropOrder,
    baseline_order,
    drop_order,
    headline_k,
    kept_layers,
    parse_protect,
)
from companion.method.scoring import Scores, ScoreSettings, cached_scores
from companion.model.loading import LoadedModel
from companion.model.surgery import Pruning, count_parameters, temporarily_pruned
from companion.names import PERPLEXITY_TASK, baseline_names, in_mean_accuracy, primary_metric, random_seed
from companion.provenance import environment, timestamp

log = logging.getLogger(__name__)
COLUMNS = ["model", "calibration", "method", "granularity", "K", "dropped", "protected", "task", "metric", "primary",
           "value", "stderr", "n", "params"]
EXAMPLE_COLUMNS = ["model", "calibration", "method", "granularity", "K", "task", "doc_id", "metric", "value"]
SCHEMA = "companion.sweep/3"


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
    protect: str = "first:2,last:1"
    data_source: str = "auto"
    baselines: list[str] = field(default_factory=lambda: ["random", "last"])
    random_seeds: int = 5
    primary_methods: list[str] = field(default_factory=list)
    primary_limit: int | None = None
    primary_ppl_chunks: int | None = None
    curve_methods: list[str] | None = None

    @property
    def baseline_names(self) -> list[str]:
        """Names of the baseline orders, ``random:0`` … ``random:<seeds-1>`` and ``last``, as chosen."""
        return baseline_names(self.baselines, self.random_seeds)

    def primary_evaluation(self, settings: EvalSettings) -> EvalSettings:
        """``settings`` with the primary tier's example limit and perplexity windows, for the tasks the
        primary comparison reads (those of mean accuracy, whose chance level is above 0, and
        perplexity); the others (LAMBADA) keep ``settings``' limit."""
        return replace(settings, tasks=primary_tier_tasks(settings.tasks), limit=self.primary_limit,
                       ppl_chunks=self.primary_ppl_chunks or settings.ppl_chunks)


def primary_tier_tasks(tasks: list[str]) -> list[str]:
    """The tasks the primary tier enlarges: those of mean accuracy (multiple choice, chance above 0) and
    perplexity, in order."""
    return [t for t in tasks if t == PERPLEXITY_TASK or in_mean_accuracy(t)]


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


def examples_path(out_dir: Path, calibration: str) -> Path:
    """Where a sweep on ``calibration`` writes its per-example table (Parquet)."""
    return Path(out_dir) / f"examples_{_file_label(calibration)}.parquet"


def fit_drops(drops: list[int], num_layers: int, protect: str, label: str = "the model", note: bool = True) -> list[int]:
    """``drops`` with counts above the prunable layers clipped to that count (sorted, distinct).

    Only an explicit ``protect`` rule (``first:2,last:1``, indices, ``none``) fixes the prunable count
    before scoring; with ``auto`` it depends on the scores, so ``drops`` is returned as it is. Clipping
    logs one warning (unless ``note`` is False).
    """
    if protect == "auto":
        return sorted(set(drops))
    prunable = num_layers - len(parse_protect(protect, num_layers))
    fitted = sorted({min(k, prunable) for k in drops})
    over = sorted(k for k in set(drops) if k > prunable)
    if over and note:
        log.warning("K = %s exceed the %d prunable layers of %s (%d layers, protected %s); clipped to K = %d",
                    ", ".join(map(str, over)), prunable, label, num_layers, protect, prunable)
    return fitted


def scores_for(model: Callable[[], LoadedModel], settings: SweepSettings, out_dir: Path,
               identity: dict | None = None, progress: bool = True) -> Scores:
    """The scores of the sweep's calibration set, reused from ``out_dir`` when computed for the same key."""
    docs = load_documents(settings.calibration, data_source=settings.data_source)
    return cached_scores(scores_path(out_dir, settings.calibration), model, docs, settings.samples, settings.seqlen,
                         settings.seed, score_settings(settings), identity=identity, progress=progress)


def score_settings(settings: SweepSettings) -> ScoreSettings:
    """What a sweep scores: every criterion of the one hooked pass (the figures read them all), and the
    sweep's criteria that run passes of their own, under the sweep's protected layers, at the sweep's
    granularities; an iterative criterion (``k_max``) runs only as many steps as the sweep's largest K."""
    own = [m for m in settings.methods if m in criteria.scored() and not criteria.get(m).one_pass]
    params = {m: {**criteria.get(m).params, "k_max": max(settings.drops)} for m in own
              if "k_max" in criteria.get(m).params and max(settings.drops) > 0}
    return ScoreSettings(estimators=[*criteria.names(needs="hidden"), *own], params=params, protect=settings.protect,
                         granularities=list(settings.granularities))


def plan(scores: Scores, settings: SweepSettings) -> tuple[list[DropOrder], dict[tuple[str, str, int], Pruning]]:
    """Every drop order (criteria, then baselines) and the pruning of every (method, granularity, K);
    checks all K before evaluating. Every order protects the same layers. Methods outside
    ``curve_methods`` (when set) are evaluated at K = 0 and the headline K only."""
    orders = [drop_order(scores, method, granularity, settings.protect)
              for method in settings.methods for granularity in settings.granularities]
    orders += [baseline_order(name, granularity, scores["num_layers"],
                              kept_layers(scores, settings.protect, granularity))
               for name in settings.baseline_names for granularity in settings.granularities]
    head = headline_k(settings.drops, scores["num_layers"])
    curve = set(settings.methods if settings.curve_methods is None else settings.curve_methods)
    curve |= set(settings.baseline_names)
    prunings = {(order.method, order.granularity, k): Pruning(order.granularity, order.drop_set(k))
                for order in orders for k in settings.drops if order.method in curve or k in (0, head)}
    return orders, prunings


def primary_prunings(prunings: dict[tuple[str, str, int], Pruning], settings: SweepSettings,
                     num_layers: int) -> set[tuple[str, tuple[int, ...]]]:
    """The distinct prunings evaluated on ``primary_limit`` examples: the primary methods at the
    headline K, and the dense model."""
    head = headline_k(settings.drops, num_layers)
    chosen = set(settings.primary_methods)
    return {("dense", ())} | {_pruning_id(p) for (method, _, k), p in prunings.items() if k == head and method in chosen}


def sweep_key(scores: Scores, settings: SweepSettings, eval_settings: EvalSettings, identity: dict) -> dict:
    """Every input that can change a sweep table (see :mod:`companion.store`)."""
    evaluation = {k: v for k, v in asdict(eval_settings).items() if k not in ("batch_size", "progress", "data_source")}
    evaluation["ppl_windows"] = eval_settings.ppl_windows  # what is evaluated, not only what was asked for
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
    stored = store.read(sweep_path(out_dir, settings.calibration), key)
    if stored is not None and not _examples_match(stored, out_dir, settings.calibration):
        sweep_path(out_dir, settings.calibration).unlink()  # its per-example table is missing or changed
        stored = None
    if stored is None:
        distinct = len({_evaluation_id(key[0], p, settings, eval_settings.limit) for key, p in prunings.items()})
        log.info("%s: %d distinct evaluations (prunings; random seeds on shards) × %d tasks = %d (stored ones "
                 "are reused)",
                 calibration_label(settings.calibration), distinct, len(eval_settings.tasks),
                 distinct * len(eval_settings.tasks))

    def compute() -> dict:
        loaded = model()
        rows, examples = _evaluate_prunings(loaded, identity["spec"], settings, eval_settings, orders, prunings,
                                            out_dir, progress)
        path = examples_path(out_dir, settings.calibration)
        atomic_write_bytes(path, examples.to_parquet(index=False, compression="zstd"))
        content = {"schema": SCHEMA, "created": timestamp(), "model": loaded.provenance(),
                   "settings": _portable(settings), "evaluation": asdict(eval_settings), "environment": environment(),
                   "scores": {"file": scores_path(out_dir, settings.calibration).name,
                              "key_sha256": scores["key_sha256"], "created": scores["created"],
                              "data": {k: v for k, v in scores["data"].items() if k != "windows"}},
                   "orders": [order.to_json() for order in orders],
                   "distinct_prunings": len({_pruning_id(p) for p in prunings.values()}),
                   "task_data": task_data_notes(eval_settings.tasks, eval_settings.online),
                   "examples": {"file": path.name, "rows": len(examples), "sha256": sha256_file(path)}, "rows": rows}
        write_csv(rows, sweep_path(out_dir, settings.calibration).with_suffix(".csv"))
        return content

    return store.cached(sweep_path(out_dir, settings.calibration), key, compute)


def _examples_match(sweep: dict, out_dir: Path, calibration: str) -> bool:
    """Whether the per-example table a stored sweep names is beside it, unchanged."""
    path = examples_path(out_dir, calibration)
    return path.exists() and sweep.get("examples", {}).get("sha256") == sha256_file(path)


def read_examples(out_dir: Path, calibration: str) -> pd.DataFrame:
    """The per-example table of the sweep on ``calibration`` in ``out_dir``."""
    path = examples_path(out_dir, calibration)
    if not path.exists():
        raise CompanionError(f"no per-example table {path.name} in {out_dir}: run the sweep first")
    return pd.read_parquet(path)


def _pruning_id(pruning: Pruning) -> tuple[str, tuple[int, ...]]:
    return (pruning.granularity, tuple(pruning.layers)) if pruning.layers else ("dense", ())


def random_shard(method: str, settings: SweepSettings, limit: int | None) -> tuple[int, int] | None:
    """The examples' shard a random drop set is evaluated on: seed s of n takes the s-th of n interleaved
    shards of the sample (:func:`companion.experiments.evaluation.sample_indices`), so the seeds pooled
    cover every example once, at the cost of one pruning; other methods, and every seed when the sample
    (``limit`` examples per task) is too small to give each seed one, take the whole sample."""
    seed = random_seed(method)
    if seed is None or settings.random_seeds < 2 or (limit is not None and limit < settings.random_seeds):
        return None
    return (seed, settings.random_seeds)


def _evaluate_prunings(loaded: LoadedModel, model_label: str, settings: SweepSettings, eval_settings: EvalSettings,
                       orders: list[DropOrder], prunings: dict[tuple[str, str, int], Pruning], out_dir: Path,
                       progress: bool) -> tuple[list[dict], pd.DataFrame]:
    """Evaluate each distinct (pruning, shard) once (the dense model once for all); expand to the
    aggregate rows and the per-example table."""
    cache = out_dir / store.EVALUATIONS  # the result store's entries, beside the results (not committed)
    ids = {key: _evaluation_id(key[0], pruning, settings, eval_settings.limit) for key, pruning in prunings.items()}
    primary = primary_prunings(prunings, settings, orders[0].num_layers) if settings.primary_limit else set()
    wide = settings.primary_evaluation(eval_settings)
    entries, params = {}, {}
    dense_params = count_parameters(loaded.model)
    bar = tqdm(total=len(set(ids.values())) * len(eval_settings.tasks), desc="evaluations", unit="eval",
               disable=not progress)
    for key in sorted(set(ids.values()), key=lambda i: (i[0], i[1], i[2] or (-1, 0))):
        granularity, layers, shard = key
        chosen = [replace(eval_settings, shard=shard)]
        if (granularity, layers) in primary and shard is None:
            rest = [t for t in eval_settings.tasks if t not in wide.tasks]
            chosen = [wide] + ([replace(eval_settings, tasks=rest)] if rest else [])
        bar.set_postfix_str("dense" if granularity == "dense" else f"{granularity} {' '.join(map(str, layers))}")
        if granularity == "dense":
            entries[key] = [e for c in chosen for e in evaluate_entries(loaded, c, cache=cache,
                                                                        done=lambda _: bar.update())]
            params[key] = dense_params
            continue
        with temporarily_pruned(loaded.model, Pruning(granularity, list(layers))) as report:
            entries[key] = [e for c in chosen for e in evaluate_entries(loaded, c, loaded.model.companion_pruning,
                                                                        cache, done=lambda _: bar.update())]
            params[key] = report["params_after"]
    bar.close()
    protected = {(o.method, o.granularity): " ".join(map(str, o.protected)) for o in orders}
    rows, columns = [], {name: [] for name in EXAMPLE_COLUMNS}
    for (method, granularity, k), pruning in prunings.items():
        key = ids[(method, granularity, k)]
        label = {"model": model_label, "calibration": calibration_label(settings.calibration), "method": method,
                 "granularity": granularity, "K": k}
        for entry in entries[key]:
            for row in entry["rows"]:
                rows.append({**label, "dropped": " ".join(map(str, pruning.layers)),
                             "protected": protected[(method, granularity)], "task": row["task"],
                             "metric": row["metric"], "primary": row["metric"] == primary_metric(row["task"]),
                             "value": row["value"], "stderr": row["stderr"], "n": row["n"], "params": params[key]})
            _add_examples(entry["records"], label, columns)
    return rows, pd.DataFrame(columns)


def _evaluation_id(method: str, pruning: Pruning, settings: SweepSettings,
                   limit: int | None) -> tuple[str, tuple[int, ...], tuple[int, int] | None]:
    """What one evaluation is: the pruning and, for a random drop set, its shard of the examples."""
    granularity, layers = _pruning_id(pruning)
    return granularity, layers, None if granularity == "dense" else random_shard(method, settings, limit)


def _add_examples(records: dict, label: dict, columns: dict[str, list]) -> None:
    """Append one evaluation's per-example records to ``columns`` (a list per column of ``EXAMPLE_COLUMNS``)
    as tidy rows: each metric over the examples, then each choice's log-likelihood (metric
    ``loglik:<i>``) over the examples that have that choice. Plain lists: a sweep has thousands of
    evaluations (one per MMLU subtask and pruning), too many for a data frame each."""
    tasks, docs = records["task"], records["doc_id"]
    found: list[tuple[str, int, str, float]] = []
    for metric, values in records["metrics"].items():
        found += [(task, doc, metric, value) for task, doc, value in zip(tasks, docs, values)]
    logliks = records["loglik"] or []
    for i in range(max((len(choices) for choices in logliks), default=0)):
        found += [(task, doc, f"loglik:{i}", choices[i]) for task, doc, choices in zip(tasks, docs, logliks)
                  if i < len(choices) and choices[i] is not None and not math.isnan(choices[i])]
    for name, value in label.items():
        columns[name] += [value] * len(found)
    for index, name in enumerate(("task", "doc_id", "metric", "value")):
        columns[name] += [row[index] for row in found]


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
