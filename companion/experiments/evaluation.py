"""Evaluation of dense and pruned models: lm-eval tasks and WikiText-2 perplexity, cached per pruning.

Tasks run through lm-evaluation-harness's Python API on the in-memory model (``FastHFLM`` by default:
the same log-likelihoods as stock ``HFLM``, with the LM head computed only where needed). With the
Hub in reach the stock tasks run as they are; offline, :mod:`companion.experiments.tasks` writes configs that
feed the stock tasks from ``COMPANION_DATA_DIR``.

Each (pruning, task) result is stored as its own JSON file under the key of :mod:`companion.store`
(model identity, pruning, task, task data, few-shot, limit, backend, numerics), written atomically, so
reruns skip finished work and an interrupted sweep resumes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from companion import store
from companion.errors import CompanionError
from companion.experiments import tasks as offline_tasks
from companion.hub import hub_reachable
from companion.method.calibration import load_rows
from companion.model.loading import LoadedModel
from companion.model.surgery import Pruning
from companion.names import PERPLEXITY_TASK
from companion.paths import cache_dir
from companion.profiles import EVAL_BATCH_SIZE

DATA_SOURCES = ("auto", "hub", "local")


@dataclass
class EvalSettings:
    """What to evaluate and how: lm-eval task names (plus ``wikitext2_ppl``), limits, batch size.

    ``limit`` bounds every task: the examples of each lm-eval task and the perplexity windows (at most
    ``limit`` windows, fewer when ``ppl_chunks`` is smaller: :attr:`ppl_windows`).
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
        known = set(known_tasks(self.online)) | {PERPLEXITY_TASK}
        for task in self.tasks:
            if task not in known:
                hint = "" if self.online else " (local data: only tasks with local copies are available)"
                raise CompanionError(f"unknown task '{task}'{hint}; available: {', '.join(sorted(known))}")

    @property
    def ppl_windows(self) -> int | None:
        """The smaller of ``ppl_chunks`` and ``limit``, the most perplexity windows evaluated (``None`` for all)."""
        caps = [cap for cap in (self.ppl_chunks, self.limit) if cap is not None]
        return min(caps) if caps else None

    @property
    def online(self) -> bool:
        """Whether task data come from the Hub (``auto`` when reachable, or ``hub``) or from local copies."""
        return self.data_source == "hub" or (self.data_source == "auto" and hub_reachable())


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
           "limit": settings.limit, "backend": "FastHFLM" if settings.fast else "HFLM",
           "numerics": store.numerics()}
    if task == PERPLEXITY_TASK:
        key.update(ppl_seqlen=settings.ppl_seqlen, ppl_chunks=settings.ppl_windows)  # the effective windows
    return key


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


def run_lm_eval(loaded: LoadedModel, task: str, settings: EvalSettings) -> list[dict]:
    """Evaluate the (possibly pruned) in-memory model on one lm-eval task or group."""
    from lm_eval import simple_evaluate

    from companion.experiments.fastlm import make_lm

    lm = make_lm(loaded.model, loaded.tokenizer, batch_size=settings.batch_size, fast=settings.fast)
    results = simple_evaluate(model=lm, tasks=[task], num_fewshot=settings.num_fewshot, limit=settings.limit,
                              task_manager=task_manager_for(task, settings.online), log_samples=False,
                              bootstrap_iters=1000, verbosity="ERROR")
    return _rows_from_lm_eval(results, task)


def perplexity(loaded: LoadedModel, seqlen: int = 512, chunks: int | None = None, data_source: str = "auto",
               progress: bool = True) -> list[dict]:
    """WikiText-2 test perplexity as GPTQ/SparseGPT compute it: rows joined by blank lines, tokenized
    once, cut into consecutive ``seqlen`` windows (the first ``chunks`` of them, or all)."""
    rows, _ = load_rows("wikitext2", "test", data_source=data_source)
    ids = loaded.tokenizer("\n\n".join(rows), return_tensors="pt").input_ids[0]
    windows = ids[: (ids.numel() // seqlen) * seqlen].view(-1, seqlen)[:chunks]
    device = next(loaded.model.parameters()).device
    losses = []
    with torch.inference_mode():
        for window in tqdm(windows, desc="perplexity", unit="window", leave=False,
                           disable=not progress):
            batch = window[None].to(device)
            losses.append(loaded.model(input_ids=batch, labels=batch, use_cache=False).loss.float())
    nll = torch.stack(losses).cpu()
    if not torch.isfinite(nll).all():
        raise CompanionError("perplexity is not finite (NaN or Inf in the model's outputs); try another --dtype")
    mean = nll.mean().item()
    stderr = (nll.std().item() / math.sqrt(len(nll))) * math.exp(mean) if len(nll) > 1 else None
    return [{"task": PERPLEXITY_TASK, "metric": "perplexity", "value": math.exp(mean), "stderr": stderr,
             "n": int(windows.numel())}]


def evaluate(loaded: LoadedModel, settings: EvalSettings, pruning: Pruning | None = None,
             cache: Path | None = None, done: Callable[[str], None] | None = None) -> list[dict]:
    """Rows (task, metric, value, stderr, n) for every task in ``settings``; stored results are reused.

    ``pruning`` only labels the stored entry: the caller applies it to ``loaded.model`` beforehand.
    ``done`` is called with each task's name once it is evaluated or reused (a sweep's progress bar).
    """
    settings.validate()
    cache = Path(cache) if cache is not None else cache_dir() / "evaluations"
    identity = loaded.identity()
    rows = []
    for task in settings.tasks:
        key = evaluation_key(identity, pruning, task, settings)
        entry = store.cached(store.entry_path(cache, key), key,
                             lambda task=task: {"rows": _run_task(loaded, task, settings)})
        rows.extend(entry["rows"])
        if done is not None:
            done(task)
    return rows


def _run_task(loaded: LoadedModel, task: str, settings: EvalSettings) -> list[dict]:
    if task == PERPLEXITY_TASK:
        source = "hub" if settings.online else "local"
        return perplexity(loaded, settings.ppl_seqlen, settings.ppl_windows, source, settings.progress)
    with contextlib.redirect_stderr(sys.stderr if settings.progress else io.StringIO()):  # lm-eval's bars
        return run_lm_eval(loaded, task, settings)
