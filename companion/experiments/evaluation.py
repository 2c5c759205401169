"""Evaluation of dense and pruned models: lm-eval tasks and WikiText-2 perplexity, cached per pruning.

Tasks run through lm-evaluation-harness's Python API on the in-memory model (``FastHFLM`` by default:
the same log-likelihoods as stock ``HFLM``, with the LM head computed only where needed). With the
Hub in reach the stock tasks run as they are; offline, :mod:`companion.experiments.tasks` writes configs that
feed the stock tasks from ``COMPANION_DATA_DIR``.

Each task is scored on a seeded random sample of ``limit`` of its examples (perplexity: of its
windows), the same sample for every pruning, so that two prunings can be compared example by example.
A smaller limit draws a subset of a larger one's sample (the first ``limit`` of one seeded permutation).

Each (pruning, task) result is stored as its own JSON file under the key of :mod:`companion.store`
(model identity, pruning, task, task data, few-shot, limit and sample seed, backend, numerics),
written atomically, so reruns skip finished work and an interrupted sweep resumes. Beside the
aggregate rows it keeps **per-example records** (:class:`Records`): for each document its id, ``acc``
(and ``acc_norm``), for multiple-choice tasks ``p_correct`` (the probability of the gold choice
normalised over the choices, :func:`p_correct`) and the log-likelihood of each choice; for each
perplexity window its negative log-likelihood sum and token count.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import numbers
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch
from tqdm.auto import tqdm

from companion import store
from companion.errors import CompanionError
from companion.experiments import EVAL_BATCH_SIZE
from companion.experiments import tasks as offline_tasks
from companion.hub import DATA_SOURCES, hub_reachable, use_hub
from companion.method.calibration import load_rows
from companion.model.loading import LoadedModel
from companion.model.surgery import Pruning
from companion.names import PERPLEXITY_TASK
from companion.paths import cache_dir

if TYPE_CHECKING:
    from lm_eval.models.huggingface import HFLM

SAMPLE_SEED = 1234  # the seed of every task's example sample (lm-eval's default few-shot seed, too)


class Records(TypedDict):
    """Per-example results of one task, column-wise: ``task`` (a group's subtask), ``doc_id`` (the
    document's index in the task's evaluation split, or the window index), ``metrics`` (name -> values:
    ``acc``/``acc_norm`` and, for multiple-choice tasks, ``p_correct`` per document, ``nll``/``tokens``
    per perplexity window) and ``loglik`` (the log-likelihood of each choice, empty for perplexity)."""

    task: list[str]
    doc_id: list[int]
    metrics: dict[str, list[float]]
    loglik: list[list[float]]


@dataclass
class EvalSettings:
    """What to evaluate and how: lm-eval task names (plus ``wikitext2_ppl``), limits, batch size.

    ``limit`` bounds the examples of each lm-eval task, and the perplexity windows where ``ppl_chunks``
    does not set them (:attr:`ppl_windows`: a profile may so evaluate more windows than examples, while
    a limit the user states bounds both, see :func:`companion.pipeline.config.resolve`). ``shard = (i, n)``
    evaluates only the i-th of n interleaved shards of that sample (the random drop sets of a sweep
    split the examples between their seeds, so that each example sees one random drop set).
    """

    tasks: list[str] = field(default_factory=lambda: ["piqa"])
    limit: int | None = None
    num_fewshot: int = 0
    batch_size: int = EVAL_BATCH_SIZE
    fast: bool = True
    ppl_seqlen: int = 512
    ppl_chunks: int | None = None
    data_source: str = "auto"
    progress: bool = True
    sample_seed: int = SAMPLE_SEED
    shard: tuple[int, int] | None = None

    def validate(self) -> None:
        """Unknown tasks and non-positive limits are errors before any work starts."""
        if self.data_source not in DATA_SOURCES:
            raise CompanionError(f"unknown data source '{self.data_source}'; choose from {', '.join(DATA_SOURCES)}")
        if self.data_source == "hub" and not hub_reachable():
            raise CompanionError("--data-source hub, but the Hugging Face Hub is unreachable; use auto or local")
        if self.limit is not None and self.limit < 1:
            raise CompanionError(f"--limit must be a positive number of examples (got {self.limit})")
        if self.ppl_chunks is not None and self.ppl_chunks < 1:
            raise CompanionError(f"perplexity chunks must be positive (got {self.ppl_chunks})")
        if self.shard is not None and not 0 <= self.shard[0] < self.shard[1]:
            raise CompanionError(f"shard (i, n) needs 0 <= i < n (got {self.shard})")
        known = set(known_tasks(self.online)) | {PERPLEXITY_TASK}
        for task in self.tasks:
            if task not in known:
                hint = "" if self.online else " (local data: only tasks with local copies are available)"
                raise CompanionError(f"unknown task '{task}'{hint}; available: {', '.join(sorted(known))}")

    @property
    def ppl_windows(self) -> int | None:
        """How many perplexity windows are evaluated at most, ``ppl_chunks`` where set and else ``limit``
        (``None`` for all)."""
        return self.ppl_chunks if self.ppl_chunks is not None else self.limit

    @property
    def online(self) -> bool:
        """Whether task data come from the Hub (``auto`` when reachable, or ``hub``) or from local copies."""
        return use_hub(self.data_source)


@functools.lru_cache(maxsize=2)
def known_tasks(online: bool) -> tuple[str, ...]:
    """Task names that can be evaluated: all of lm-eval's from the Hub, the offline set from local data."""
    if online:
        from lm_eval.tasks import TaskManager

        return tuple(TaskManager().all_subtasks + TaskManager().all_groups)
    return tuple(offline_tasks.available_tasks())


@functools.lru_cache(maxsize=None)
def task_manager_for(task: str, online: bool):
    """lm-eval's ``TaskManager`` that can build ``task``: stock from the Hub, else offline configs."""
    from lm_eval.tasks import TaskManager

    if online:
        return TaskManager()
    folder = offline_tasks.write_task_configs(cache_dir() / "lm_eval_tasks", [task])
    return offline_tasks.task_manager(folder)


@functools.lru_cache(maxsize=None)
def task_data(task: str, online: bool) -> dict:
    """Where a task's examples come from: the Hub, or the sha256 of each local source file."""
    if task == PERPLEXITY_TASK:
        _, where = load_rows("wikitext2", "test", data_source="hub" if online else "local")
        return {"origin": where["origin"], "sha256": where["sha256"]}
    if online:
        return {"origin": "hub"}
    return {"origin": "local", "sources": offline_tasks.source_hashes(task)}


def evaluation_key(identity: dict, pruning: Pruning | None, task: str, settings: EvalSettings) -> dict:
    """Every input that can change one task's result (see :mod:`companion.store`); dense = no pruning."""
    key = {"kind": "evaluation", "model": identity,
           "pruning": None if pruning is None or not pruning.layers else asdict(pruning), "task": task,
           "task_data": task_data(task, settings.online), "num_fewshot": settings.num_fewshot,
           "limit": settings.limit, "sample_seed": settings.sample_seed,
           "backend": "FastHFLM" if settings.fast else "HFLM",
           "numerics": store.numerics()}
    if task == PERPLEXITY_TASK:
        key.update(ppl_seqlen=settings.ppl_seqlen, ppl_chunks=settings.ppl_windows)  # the effective windows
    if settings.shard is not None:
        key["shard"] = list(settings.shard)
    return key


def sample_indices(size: int, limit: int | None, seed: int = SAMPLE_SEED,
                   shard: tuple[int, int] | None = None) -> list[int]:
    """A seeded random sample of ``limit`` of ``size`` example indices, sorted (all when ``limit`` is None);
    with ``shard = (i, n)`` every n-th of them from the i-th (the shards of one sample are disjoint and
    together make it; a sample with fewer than n items gives shard i its (i mod size)-th item, so no
    shard is empty).

    The sample is the first ``limit`` entries of one seeded permutation, so a smaller limit draws a
    subset of a larger one's examples and every pruning sees the same ones.
    """
    chosen = list(range(size)) if limit is None or limit >= size else sorted(
        int(i) for i in np.random.default_rng(seed).permutation(size)[:limit])
    if shard is None or not chosen:
        return chosen
    index, count = shard
    return chosen[index::count] or [chosen[index % len(chosen)]]


def _rows_from_lm_eval(results: dict, task: str) -> list[dict]:
    """Tidy rows (metric, value, stderr, n) of one task or group from lm-eval's results dict."""
    table = results.get("groups", {}).get(task) or results["results"][task]
    n = sum(int(v.get("effective", 0)) for v in results.get("n-samples", {}).values())
    rows = []
    for name, value in table.items():
        if "," not in name or "_stderr" in name or not isinstance(value, (int, float)):
            continue
        metric, filt = name.split(",", 1)
        stderr = table.get(f"{metric}_stderr,{filt}")
        rows.append({"task": task, "metric": metric, "value": float(value),
                     "stderr": float(stderr) if isinstance(stderr, (int, float)) else None, "n": n})
    return rows


def gold_choices(task_obj, doc: dict) -> list[int]:
    """The indices of a multiple-choice document's gold choices, found as lm-eval's scoring finds them
    (the target, or the context index of tasks with several contexts such as WinoGrande); indices
    outside the choices are dropped, as lm-eval scores them wrong."""
    gold = task_obj.doc_to_text(doc) if task_obj.multiple_input else task_obj.doc_to_target(doc)
    choices = task_obj.doc_to_choice(doc)
    golds = gold if isinstance(gold, list) else [gold]
    golds = [choices.index(g) if isinstance(g, str) and g in choices else g for g in golds]
    return [int(g) for g in golds if isinstance(g, numbers.Integral) and 0 <= g < len(choices)]


def p_correct(loglik: Sequence[float], golds: Sequence[int]) -> float:
    """The probability of the gold choice(s) normalised over the choices: the softmax of the choices'
    summed log-likelihoods (the quantity ``acc`` takes the argmax of), at the gold."""
    values = np.asarray(loglik, dtype=float)
    weights = np.exp(values - values.max())
    return float(weights[list(golds)].sum() / weights.sum())


def _records_from_lm_eval(samples: dict[str, list[dict]], tasks: dict | None = None) -> Records:
    """Per-example records from lm-eval's logged samples (``log_samples=True``); with the task objects
    (``tasks``: name -> lm-eval task), the documents of multiple-choice tasks also get ``p_correct``
    (when all of them are multiple-choice: every metric has one value per document)."""
    records: Records = {"task": [], "doc_id": [], "metrics": {}, "loglik": []}
    probabilities: list[float | None] = []
    for subtask in sorted(samples):
        task_obj = (tasks or {}).get(subtask)
        choice_task = task_obj is not None and task_obj.OUTPUT_TYPE == "multiple_choice"
        for sample in sorted(samples[subtask], key=lambda s: s["doc_id"]):
            records["task"].append(subtask)
            records["doc_id"].append(int(sample["doc_id"]))
            records["loglik"].append([round(float(r[0]), 5) for r in sample["filtered_resps"]])
            for metric in sample["metrics"]:
                records["metrics"].setdefault(metric, []).append(float(sample[metric]))
            probabilities.append(None)
            if choice_task:
                choices = len(task_obj.doc_to_choice(sample["doc"]))
                loglik = [float(r[0]) for r in sample["filtered_resps"]][:choices]  # not acc_mutual_info's rest
                probabilities[-1] = round(p_correct(loglik, gold_choices(task_obj, sample["doc"])), 6)
    if probabilities and None not in probabilities:
        records["metrics"]["p_correct"] = probabilities
    return records


@functools.lru_cache(maxsize=None)
def loaded_task(task: str, online: bool, num_fewshot: int) -> dict:
    """lm-eval's loaded task dict (tasks and groups) for ``task``, built once per process and reused for
    every pruning: building MMLU's 57 subtasks alone takes many seconds. Few-shot settings as
    ``simple_evaluate`` applies them."""
    loaded = task_manager_for(task, online).load([task])
    for task_obj in loaded["tasks"].values():
        if task_obj.get_config("num_fewshot") != 0:
            task_obj.set_config(key="num_fewshot", value=num_fewshot)
        task_obj.set_fewshot_seed(seed=SAMPLE_SEED)
        _hold_eval_docs(task_obj)
    return loaded


def _hold_eval_docs(task_obj) -> None:
    """Make ``task_obj`` read its evaluation documents from a list built once.

    lm-eval re-runs ``process_docs`` and formats every Arrow row of the split each time a task reads
    its documents (to pick a sample, it walks them all), about a second per pruning on HellaSwag.
    """
    docs = list(task_obj.eval_docs)
    setattr(task_obj, "test_docs" if task_obj.has_test_docs() else "validation_docs", lambda: docs)


def run_lm_eval(lm: HFLM, task: str, settings: EvalSettings) -> tuple[list[dict], Records]:
    """Evaluate lm-eval model ``lm`` (wrapping the possibly pruned in-memory model) on one lm-eval task
    or group, on the seeded sample of ``settings.limit`` examples of each (sub)task; aggregate rows and
    per-example records."""
    from lm_eval.evaluator import evaluate as lm_eval_evaluate

    task_dict = loaded_task(task, settings.online, settings.num_fewshot)
    samples = {name: sample_indices(len(task_obj.eval_docs), settings.limit, settings.sample_seed, settings.shard)
               for name, task_obj in task_dict["tasks"].items()}
    results = lm_eval_evaluate(lm=lm, task_dict=task_dict, samples=samples, log_samples=True,
                               bootstrap_iters=1000, verbosity="ERROR")
    records = _records_from_lm_eval(results["samples"], task_dict["tasks"])
    rows = _rows_from_lm_eval(results, task)
    if "p_correct" in records["metrics"]:  # the mean over all documents (of all of a group's subtasks)
        values = np.asarray(records["metrics"]["p_correct"])
        stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
        rows.append({"task": task, "metric": "p_correct", "value": float(values.mean()), "stderr": stderr,
                     "n": len(values)})
    return rows, records


def perplexity(loaded: LoadedModel, seqlen: int = 512, chunks: int | None = None, data_source: str = "auto",
               progress: bool = True, seed: int = SAMPLE_SEED,
               shard: tuple[int, int] | None = None) -> tuple[list[dict], Records]:
    """WikiText-2 test perplexity as GPTQ/SparseGPT compute it: rows joined by blank lines, tokenized
    once, cut into consecutive ``seqlen`` windows; a seeded sample of ``chunks`` of them (or all), or
    its ``shard`` (see :func:`sample_indices`).

    The records hold each window's summed negative log-likelihood and its predicted-token count, so
    that perplexity can be compared window by window; the row's perplexity is exp(Σ nll / Σ tokens).
    """
    all_windows = _wikitext_windows(loaded.tokenizer, seqlen, data_source)
    chosen = sample_indices(len(all_windows), chunks, seed, shard)
    device = next(loaded.model.parameters()).device
    losses = []
    with torch.inference_mode():
        for index in tqdm(chosen, desc="perplexity", unit="window", leave=False, disable=not progress):
            batch = all_windows[index][None].to(device)
            losses.append(loaded.model(input_ids=batch, labels=batch, use_cache=False).loss.float())
    nll = torch.stack(losses).cpu() * (seqlen - 1)  # the loss is a mean over seqlen - 1 predicted tokens
    if not torch.isfinite(nll).all():
        raise CompanionError("perplexity is not finite (NaN or Inf in the model's outputs); try another --dtype")
    per_token = nll / (seqlen - 1)
    mean = per_token.mean().item()
    stderr = (per_token.std().item() / math.sqrt(len(nll))) * math.exp(mean) if len(nll) > 1 else None
    records: Records = {"task": [PERPLEXITY_TASK] * len(chosen), "doc_id": chosen,
                        "metrics": {"nll": [round(v, 4) for v in nll.tolist()],
                                    "tokens": [float(seqlen - 1)] * len(chosen)}, "loglik": []}
    return [{"task": PERPLEXITY_TASK, "metric": "perplexity", "value": math.exp(mean), "stderr": stderr,
             "n": len(chosen) * seqlen}], records


@functools.lru_cache(maxsize=4)
def _wikitext_windows(tokenizer, seqlen: int, data_source: str) -> torch.Tensor:
    """WikiText-2 test as consecutive ``seqlen``-token windows, tokenized once per tokenizer: every
    pruning of a sweep reads the same windows (tokenizing the split takes a second or two)."""
    rows, _ = load_rows("wikitext2", "test", data_source=data_source)
    ids = tokenizer("\n\n".join(rows), return_tensors="pt").input_ids[0]
    return ids[: (ids.numel() // seqlen) * seqlen].view(-1, seqlen)


def evaluate(loaded: LoadedModel, settings: EvalSettings, pruning: Pruning | None = None,
             cache: Path | None = None, done: Callable[[str], None] | None = None) -> list[dict]:
    """Rows (task, metric, value, stderr, n) for every task in ``settings``; stored results are reused.

    ``pruning`` only labels the stored entry: the caller applies it to ``loaded.model`` beforehand.
    ``done`` is called with each task's name once it is evaluated or reused (a sweep's progress bar).
    """
    return [row for entry in evaluate_entries(loaded, settings, pruning, cache, done) for row in entry["rows"]]


def evaluate_entries(loaded: LoadedModel, settings: EvalSettings, pruning: Pruning | None = None,
                     cache: Path | None = None, done: Callable[[str], None] | None = None) -> list[dict]:
    """The stored entry (``rows`` and per-example ``records``) of every task in ``settings``, computed
    where missing; see :func:`evaluate`."""
    settings.validate()
    cache = Path(cache) if cache is not None else cache_dir() / "evaluations"
    identity = loaded.identity()

    @functools.cache
    def lm() -> HFLM:  # one lm-eval model for all of this pruning's tasks, built only if one is computed
        from companion.experiments.fastlm import make_lm

        with _silenced("lm_eval.models.huggingface"):  # its warnings that a loaded model was passed in
            return make_lm(loaded.model, loaded.tokenizer, batch_size=settings.batch_size, fast=settings.fast)

    entries = []
    for task in settings.tasks:
        key = evaluation_key(identity, pruning, task, settings)
        entries.append(store.cached(store.entry_path(cache, key), key,
                                    lambda task=task: _run_task(loaded, lm, task, settings)))
        if done is not None:
            done(task)
    return entries


@contextlib.contextmanager
def _silenced(logger: str) -> Iterator[None]:
    """Only errors from ``logger`` inside the block."""
    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def _run_task(loaded: LoadedModel, lm: Callable[[], HFLM], task: str, settings: EvalSettings) -> dict:
    if task == PERPLEXITY_TASK:
        source = "hub" if settings.online else "local"
        rows, records = perplexity(loaded, settings.ppl_seqlen, settings.ppl_windows, source, settings.progress,
                                   settings.sample_seed, settings.shard)
    else:
        with contextlib.redirect_stderr(sys.stderr if settings.progress else io.StringIO()):  # lm-eval's bars
            rows, records = run_lm_eval(lm(), task, settings)
    return {"rows": rows, "records": records}
