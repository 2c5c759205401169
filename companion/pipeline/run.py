"""A run of one model: its resolved configuration, where its results live, and its steps in order.

The steps are scores → drop orders → sweeps → comparisons → speed. Each ``ensure_*`` function returns
the result already stored in the run's folder when it answers the same request (the key rules of
:mod:`companion.store`) and computes, writes and returns it otherwise, loading the model only then; the
command line and every notebook call these functions, so they share one scoring pass and one
evaluation cache. Results go to ``{results_dir}/{profile}/{model}``, the model named by its Hub id,
embedded name or folder name (never a path of the machine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from companion import store
from companion.analysis.tables import speed_frame, sweep_frame
from companion.experiments.evaluation import EvalSettings
from companion.experiments.sweep import SweepSettings, fit_drops
from companion.method import criteria
from companion.method.orders import drops_for, headline_k
from companion.model.embedded import describe_model, model_label
from companion.names import PERPLEXITY_TASK, task_label
from companion.paths import model_slug
from companion.pipeline.config import SPEED_BATCH_SIZE, SPEED_WARMUP, RunConfig, resolve

# The notebooks' parameters (a papermill ``parameters`` cell); ``None`` means "the profile's value".
PARAMETERS = ("profile", "model", "device", "dtype", "data_source", "calibration", "samples", "seqlen", "seed",
              "estimators", "granularities", "drops", "tasks", "limit", "results_dir")


@dataclass
class Run:
    """One model's run: the configuration (with the profile's overrides for this model), its drop
    counts fitted to the model's layers, and the model, loaded once and only when something is computed."""

    config: RunConfig
    model: str
    num_layers: int | None
    drops: list[int]
    speed_drops: list[int]
    _loaded: Any = field(default=None, repr=False, compare=False)
    _identity: Any = field(default=None, repr=False, compare=False)

    # -- the settings notebooks read
    profile = property(lambda self: self.config.profile or "custom", doc="the profile's name (``custom`` without one)")
    models = property(lambda self: list(self.config.models), doc="every model of the run")
    calibrations = property(lambda self: list(self.config.calibrations), doc="the calibration sets")
    methods = property(lambda self: list(self.config.methods), doc="the criteria evaluated")
    granularities = property(lambda self: list(self.config.granularities), doc="the granularities")
    tasks = property(lambda self: list(self.config.tasks), doc="the evaluation tasks")
    protect = property(lambda self: self.config.protect, doc="the protected-layers rule of every criterion")
    samples = property(lambda self: self.config.samples, doc="calibration windows")
    seqlen = property(lambda self: self.config.seqlen, doc="tokens per calibration window")
    seed = property(lambda self: self.config.seed, doc="seed of the window draw")
    limit = property(lambda self: self.config.limit, doc="examples per task (None for all)")
    results_dir = property(lambda self: self.config.results_dir, doc="the results folder of every profile")

    @property
    def calibration(self) -> str:
        """The first calibration set, the one the figures use."""
        return self.config.calibrations[0]

    @property
    def entropy_methods(self) -> list[str]:
        """The entropy criteria among the run's methods."""
        return [m for m in self.methods if criteria.get(m).kind == "entropy"]

    @property
    def similarity_methods(self) -> list[str]:
        """The similarity criteria among the run's methods."""
        return [m for m in self.methods if criteria.get(m).kind == "similarity"]

    @property
    def label(self) -> str:
        """How result tables name the model (a local folder by its name, never its path)."""
        return model_label(self.model)

    @property
    def out_dir(self) -> Path:
        """The model's results folder, ``{results_dir}/{profile}/{model}``."""
        return self.config.results_dir / self.profile / model_slug(self.label)

    @property
    def figures_dir(self) -> Path:
        """Where the notebooks save their figures (PNG and SVG)."""
        return self.out_dir / "figures"

    @property
    def max_drop(self) -> int:
        """The largest number of dropped blocks of the sweep."""
        return max(self.drops)

    def for_model(self, model: str) -> Run:
        """The same run for another of its models (that model's drop counts and example sizes)."""
        return self if model == self.model else build_run(self.config.for_model(model), model)

    def sweep_settings(self, calibration: str | None = None) -> SweepSettings:
        """The sweep on ``calibration``: on the first calibration set every K with the primary tier, on
        the others the headline K (and the dense model) on ``limit`` examples, for the primary criteria
        (all criteria when there is no primary tier)."""
        calibration = calibration or self.calibration
        primary = calibration == self.calibration
        c = self.config
        drops, methods = list(self.drops), list(c.methods)
        if not primary and self.num_layers is not None:
            drops = sorted({0, headline_k(drops, self.num_layers)})
        if not primary and c.primary_methods:
            methods = [m for m in methods if m in c.primary_methods]
        return SweepSettings(calibration=calibration, samples=c.samples, seqlen=c.seqlen, seed=c.seed,
                             methods=methods, granularities=list(c.granularities), drops=drops,
                             protect=c.protect, data_source=c.data_source, baselines=list(c.baselines),
                             random_seeds=c.random_seeds, primary_methods=list(c.primary_methods),
                             primary_limit=c.primary_limit if primary else None,
                             primary_ppl_chunks=c.primary_ppl_chunks if primary else None,
                             curve_methods=None if c.curve_methods is None else list(c.curve_methods))

    def eval_settings(self) -> EvalSettings:
        """The evaluation settings of the run's sweeps (without lm-eval's progress bars: a sweep has its own)."""
        return evaluation_settings(self.config)

    def speed_settings(self, method: str = "knn", granularities: Sequence[str] = ("attn", "layer")) -> dict:
        """The measurement settings of a speed run of ``method``'s orders at ``granularities``; the run's
        limit caps the timed repeats."""
        c = self.config
        repeats = c.speed_repeats if c.limit is None else min(c.speed_repeats, c.limit)
        return {"method": method, "protect": c.protect, "granularities": list(granularities),
                "drops": sorted(set(self.speed_drops) | {0}), "prompt_len": c.speed_prompt,
                "new_tokens": c.speed_new_tokens, "batch_size": SPEED_BATCH_SIZE, "warmup": SPEED_WARMUP,
                "repeats": repeats}

    def resolved_device_dtype(self) -> tuple[str, str]:
        """The device and dtype ``load_model`` will use, as strings, without loading anything."""
        from companion.model.loading import resolve_device, resolve_dtype

        device = resolve_device(self.config.device)
        return str(device), str(resolve_dtype(self.config.dtype, device)).replace("torch.", "")

    def loaded(self):
        """The model, loaded once per run and only when something has to be computed."""
        if self._loaded is None:
            from companion.model.loading import load_model

            self._loaded = load_model(self.model, self.config.device, self.config.dtype)
        return self._loaded

    def release(self) -> None:
        """Forget the loaded model (the next step that needs it loads it again)."""
        self._loaded = None

    def identity(self) -> dict | None:
        """The model's identity for the result store, without loading it (``None``: not on disk)."""
        if self._identity is None:
            from companion.model.loading import model_identity

            self._identity = model_identity(self.model, self.config.device, self.config.dtype)
        return self._identity

    # -- how figures describe the run
    def describe_calibration(self, calibration: str | None = None) -> str:
        """``wikitext2: 8 samples × 128 tokens, seed 2024``."""
        return f"{calibration or self.calibration}: {self.samples} samples × {self.seqlen} tokens, seed {self.seed}"

    def describe_evaluation(self) -> str:
        """The tasks, the example samples and the perplexity setting, in words."""
        tasks = [task_label(t) for t in self.tasks if t != PERPLEXITY_TASK]
        sweep = self.sweep_settings()
        limit = "all examples" if self.limit is None else f"a seeded random sample of {self.limit} examples per task"
        if sweep.primary_limit and self.limit is not None:
            limit += (f", {sweep.primary_limit} for the dense model and {', '.join(sweep.primary_methods)} at the "
                      "headline K")
        text = f"zero-shot {', '.join(tasks) or 'no tasks'} ({limit})"
        if PERPLEXITY_TASK in self.tasks:
            cap = self.eval_settings().ppl_windows
            windows = "all windows" if cap is None else "1 window" if cap == 1 else f"{cap} windows"
            text += f"; WikiText-2 perplexity over {windows} of {self.config.ppl_seqlen} tokens"
            if sweep.primary_ppl_chunks:
                text += f" ({sweep.primary_ppl_chunks} at the headline K)"
        return text

    def describe_model(self, scores: Mapping[str, Any] | None = None) -> str:
        """The model in words, with its embedding and per-layer share of the parameters when ``scores``
        (whose ``model`` provenance counts them) are given."""
        return describe_model(self.label, (scores or {}).get("model", {}).get("parameters"))

    def caption(self, calibration: str | Sequence[str] | None = None, evaluation: bool = False) -> str:
        """The caption text of a figure: model, profile, calibration set and sizes, evaluation limits."""
        cals = [calibration] if isinstance(calibration, str) else list(calibration or [self.calibration])
        text = (f"Model {self.describe_model()} (profile '{self.profile}'). Calibration "
                + "; ".join(self.describe_calibration(c) for c in cals) + ".")
        if evaluation:
            text += f" Evaluation: {self.describe_evaluation()}. Drop counts K = {', '.join(map(str, self.drops))}."
        return text

    def describe_speed(self) -> str:
        """The timing setup in words."""
        device, dtype = self.resolved_device_dtype()
        settings = self.speed_settings()
        return (f"Model {self.describe_model()} (profile '{self.profile}') on {device} ({dtype}): prompt of "
                f"{settings['prompt_len']} tokens, {settings['new_tokens']} generated tokens, batch "
                f"{SPEED_BATCH_SIZE}, median of {settings['repeats']} timed runs after {SPEED_WARMUP} warm-up.")


def evaluation_settings(config: RunConfig, fast: bool = True, progress: bool = False) -> EvalSettings:
    """The evaluation settings of a configuration: its tasks, limit, batch size and perplexity windows;
    ``fast`` picks FastHFLM over stock lm-eval, ``progress`` shows lm-eval's progress bars."""
    return EvalSettings(tasks=list(config.tasks), limit=config.limit, batch_size=config.eval_batch_size, fast=fast,
                        ppl_seqlen=config.ppl_seqlen, ppl_chunks=config.ppl_chunks, data_source=config.data_source,
                        progress=progress)


def build_run(config: RunConfig, model: str | None = None) -> Run:
    """The run of ``model`` (default: the configuration's first) with its drop counts: the stated or
    profile's K, or K at the profile's fractions of the model's layers; K above the prunable layers is
    clipped (:func:`companion.experiments.sweep.fit_drops`)."""
    from companion.model.loading import model_num_layers

    model = model or config.models[0]
    layers = model_num_layers(model)
    if config.drop_fractions and layers is not None:
        drops = drops_for(layers, config.drop_fractions)
    else:
        drops = sorted({0, *config.drops})
    speed_drops = sorted(set(config.speed_drops))
    if config.protect != "auto" and layers is not None:
        drops = fit_drops(drops, layers, config.protect, model_label(model))
        speed_drops = fit_drops(speed_drops, layers, config.protect, note=False)
    return Run(config=config, model=model, num_layers=layers, drops=sorted(set(drops)), speed_drops=speed_drops)


def from_parameters(values: Mapping[str, Any]) -> Run:
    """The run of a notebook's parameters (e.g. ``globals()``; see ``PARAMETERS``): ``None`` means "the
    profile's value" (``limit = -1``: all examples); the first model of the run."""
    chosen = {name: values.get(name) for name in PARAMETERS}
    config = resolve(chosen.pop("profile") or "smoke", chosen)
    return build_run(config.for_model(config.models[0]))


def model_runs(run: Run) -> list[Run]:
    """One run per model of the configuration, the first being ``run``."""
    return [run.for_model(model) for model in run.models]


# ---------------------------------------------------------------- the steps, each reused from the store

def ensure_scores(run: Run, calibration: str | None = None, progress: bool = False) -> dict:
    """The scores of ``run`` on ``calibration`` (the ones its sweep uses)."""
    from companion.experiments.sweep import scores_for

    return scores_for(run.loaded, run.sweep_settings(calibration), run.out_dir, run.identity(), progress=progress)


def ensure_sweep(run: Run, calibration: str | None = None, progress: bool = False) -> pd.DataFrame:
    """The sweep table of ``run`` on ``calibration`` (each evaluation is itself reused when stored)."""
    from companion.experiments.sweep import run_sweep

    sweep = run_sweep(run.loaded, run.sweep_settings(calibration), run.eval_settings(), run.out_dir,
                      run.identity(), progress=progress)
    return sweep_frame(sweep["rows"])


def ensure_examples(run: Run, calibration: str | None = None) -> pd.DataFrame:
    """The tidy per-example table of ``run``'s sweep on ``calibration`` (the sweep is computed if needed)."""
    from companion.experiments.sweep import read_examples

    ensure_sweep(run, calibration)
    return read_examples(run.out_dir, calibration or run.calibration)


def comparisons_path(run: Run) -> Path:
    """Where a run's comparisons table lives: ``{results_dir}/{profile}/comparisons.csv``."""
    return run.results_dir / run.profile / "comparisons.csv"


def ensure_comparisons(run: Run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-example tables of every model and calibration set of the run, and the paired comparisons
    computed from them: criteria and baselines within each calibration set, each criterion against the
    dense model, and each criterion across the first two calibration sets.

    The table is stored (``comparisons.json``, keyed by the per-example tables' hashes and the code that
    compares them) and written as ``comparisons.csv``; it is reused while neither changes.
    """
    from companion.analysis import comparisons as paired
    from companion.experiments.sweep import examples_path
    from companion.io import atomic_write_text, sha256_file

    members = [(r, c) for r in model_runs(run) for c in r.calibrations]
    examples = pd.concat([ensure_examples(r, c) for r, c in members], ignore_index=True)
    key = {"kind": "comparisons", "code": sha256_file(paired.__file__),
           "examples": {f"{r.model}/{c}": sha256_file(examples_path(r.out_dir, c)) for r, c in members}}

    def compute() -> dict:
        parts = [paired.comparisons(examples), paired.dense_comparisons(examples)]
        if len(run.calibrations) > 1:
            parts.append(paired.calibration_comparisons(examples, run.calibrations[0], run.calibrations[1]))
        table = pd.concat(parts, ignore_index=True)
        atomic_write_text(comparisons_path(run), table.to_csv(index=False, lineterminator="\n"))
        return {"rows": table.astype(object).where(table.notna(), None).to_dict("records")}

    stored = store.cached(comparisons_path(run).with_suffix(".json"), key, compute)
    table = pd.DataFrame(stored["rows"], columns=paired.COLUMNS)
    return examples, table.astype({c: float for c in ("diff", "ci_low", "ci_high", "p_value", "se", "mdd")})


def ensure_speed(run: Run, scores: dict, method: str = "knn",
                 granularities: Sequence[str] = ("attn", "layer")) -> pd.DataFrame:
    """Speed rows of ``method``'s drop orders at ``granularities``: reused from ``speed.json`` when measured
    for the same key (model, machine, scores, settings), otherwise measured (the slow part) and written."""
    from companion.experiments.speed import speed_content, speed_key, speed_runs, write_speed_csv

    settings = run.speed_settings(method, granularities)
    identity = run.identity() or run.loaded().identity()  # a Hub model not on disk is loaded to know it
    path = run.out_dir / "speed.json"

    def compute() -> dict:
        loaded = run.loaded()
        rows = speed_runs(loaded, scores, settings)
        write_speed_csv(rows, path.with_suffix(".csv"))
        return speed_content(rows, {"model": loaded.provenance(), **settings})

    return speed_frame(store.cached(path, speed_key(identity, scores, settings), compute)["rows"])


def ensure_yardstick(run: Run) -> dict:
    """The yardstick of ``run``'s model: the held-out NLL increase per token when each block of each
    granularity alone is removed, with its interval (:mod:`companion.experiments.yardstick`), on
    ``yardstick_windows`` WikiText-2 test documents of ``yardstick_seqlen`` tokens. Stored as
    ``yardstick.json`` (its ``rows``: the tidy table; its ``windows``: every window's NLL, for
    bootstraps that resample windows) and written as the tidy ``yardstick.csv``; returns the stored
    content. Each granularity's time is logged as it finishes."""
    from companion.experiments.yardstick import HELDOUT, heldout_windows, measure
    from companion.io import atomic_write_text
    from companion.method.calibration import load_documents
    from companion.names import GRANULARITIES
    from companion.provenance import environment, timestamp

    c = run.config
    docs = load_documents(*HELDOUT, data_source=c.data_source)
    identity = run.identity() or run.loaded().identity()
    settings = {"documents": f"{HELDOUT[0]}:{HELDOUT[1]}", "windows": c.yardstick_windows,
                "seqlen": c.yardstick_seqlen, "granularities": list(GRANULARITIES)}
    key = {"kind": "yardstick", "model": identity, "documents": docs.provenance()["sha256"], "settings": settings,
           "numerics": store.numerics()}
    path = run.out_dir / "yardstick.json"

    def compute() -> dict:
        loaded = run.loaded()
        windows = heldout_windows(loaded.tokenizer, docs, c.yardstick_windows, c.yardstick_seqlen)
        result = measure(loaded.model, windows, run.label, documents=docs)
        atomic_write_text(path.with_suffix(".csv"), result.table.to_csv(index=False, lineterminator="\n"))
        return {"schema": "companion.yardstick/1", "created": timestamp(), "model": loaded.provenance(),
                "settings": settings, "provenance": result.provenance, "environment": environment(),
                "cost": {g: asdict(cost) for g, cost in result.cost.items()},
                "rows": result.table.to_dict("records"), "windows": result.windows.to_dict("list")}

    return store.cached(path, key, compute)


def league_path(run: Run) -> Path:
    """Where a run's rank correlations with the yardstick live: ``{results_dir}/{profile}/league_rho.csv``."""
    return run.results_dir / run.profile / "league_rho.csv"


def ensure_league(run: Run) -> pd.DataFrame:
    """Spearman's ρ between every criterion of the run (and the ``last`` baseline) and the yardstick,
    per model and granularity, over the prunable blocks, with bootstrap intervals
    (:func:`companion.analysis.league.rho_table`); the yardstick and the first calibration set's scores
    and sweep are computed if needed. Stored as ``league_rho.json`` (keyed by the files it reads and the
    code that computes it) and written as the tidy ``league_rho.csv``."""
    from companion.analysis import league
    from companion.experiments.sweep import scores_path
    from companion.io import atomic_write_text, sha256_file
    from companion.names import GRANULARITIES

    runs = model_runs(run)
    yardsticks = {r.label: ensure_yardstick(r) for r in runs}
    for r in runs:
        ensure_sweep(r)
    key = {"kind": "league", "code": sha256_file(league.__file__),
           "inputs": {r.label: {"yardstick": sha256_file(r.out_dir / "yardstick.json"),
                                "scores": sha256_file(scores_path(r.out_dir, r.calibration))} for r in runs}}

    def compute() -> dict:
        parts = []
        for r in runs:
            scores, sweep = ensure_scores(r), ensure_sweep(r)
            blocks = league.prunable_blocks(scores["num_layers"], league.protected_layers(sweep))
            names = [m for m in r.methods if m in criteria.scored()] + [league.LAST]
            parts.append(league.rho_table(scores, yardsticks[r.label], r.label, names, blocks, GRANULARITIES))
        table = pd.concat(parts, ignore_index=True)
        atomic_write_text(league_path(run), table.to_csv(index=False, lineterminator="\n"))
        return {"rows": table.astype(object).where(table.notna(), None).to_dict("records")}

    stored = store.cached(league_path(run).with_suffix(".json"), key, compute)
    return pd.DataFrame(stored["rows"], columns=league.RHO_COLUMNS).astype(
        {c: float for c in ("rho", "ci_low", "ci_high")})


def ensure_results(run: Run, progress: bool = True) -> None:
    """Every result the figure notebooks read, computed or reused before the first of them runs, so that
    one pass of the notebooks sees its final inputs (a notebook that ran before another one wrote a
    result would run again): per model the scores and sweep of every calibration set and the
    yardstick, the speed runs of the first model, then the comparisons and the league."""
    for each in model_runs(run):
        for calibration in each.calibrations:
            ensure_sweep(each, calibration, progress=progress)
        ensure_yardstick(each)
        if each is run:
            ensure_speed(run, ensure_scores(run))
        else:
            each.release()
    ensure_comparisons(run)
    ensure_league(run)


# ---------------------------------------------------------------- what a run computes, before it starts

def run_plan(run: Run, lengths, speed: bool = True) -> Any:
    """The :class:`companion.experiments.plan.Plan` of ``run``'s model: its sweeps on every calibration
    set and, with ``speed``, the speed runs of the speedup notebook (KNN order, attention and layers)."""
    from companion.experiments import plan as planning
    from companion.experiments.sweep import score_settings
    from companion.method.orders import parse_protect
    from companion.model.loading import model_config
    from companion.names import GRANULARITIES

    timing = run.speed_settings()
    sweeps = [run.sweep_settings(c) for c in run.calibrations]
    plan = planning.build_plan([run.model], sweeps, run.eval_settings(), lengths,
                               {"granularities": timing["granularities"], "drops": timing["drops"],
                                "prompt": timing["prompt_len"], "new_tokens": timing["new_tokens"],
                                "warmup": timing["warmup"], "repeats": timing["repeats"]} if speed else None)
    config = model_config(run.model) if run.num_layers is not None else None
    if config is not None:
        share = planning.tail_share(config)
        protect = "none" if run.protect == "auto" else run.protect
        candidates = run.num_layers - len(parse_protect(protect, run.num_layers))
        c = run.config
        plan.criteria_tokens = sum(planning.own_pass_tokens(score_settings(s), candidates, c.samples, c.seqlen, share)
                                   for s in sweeps)
        plan.yardstick_tokens = planning.yardstick_tokens(run.num_layers, len(GRANULARITIES), c.yardstick_windows,
                                                          c.yardstick_seqlen, share)
    plan.notes[:0] = _plan_notes(run)
    return plan


def _plan_notes(run: Run) -> list[str]:
    from companion.pipeline.config import additions

    return additions(run.config) or ["no profile chosen: only what was asked for (no primary tier, no baselines, "
                                     "no extra K or calibration sets)"]


def plan_text(config: RunConfig, speed: bool = True) -> str:
    """The plan of every model of ``config`` (with the speed runs of the figures when ``speed``), its time
    measured on that model (which is then released), and the total; returns the text."""
    import gc

    from companion.experiments import plan as planning
    from companion.method.calibration import check_available, parse_calibration

    for calibration in config.calibrations:
        check_available(*parse_calibration(calibration), config.data_source)
    texts, total = [config.summary()], 0.0
    for model in config.models:
        run = build_run(config.for_model(model), model)
        loaded = run.loaded()
        plan = run_plan(run, planning.tokenizer_lengths(loaded.tokenizer), speed)
        throughput = planning.measure_throughput(loaded, planning.typical_length(plan), config.eval_batch_size)
        texts.append(planning.format_plan(plan, throughput))
        total += planning.estimate_seconds(plan, throughput)["total"]
        run.release()
        del loaded
        gc.collect()
    if len(config.models) > 1:
        texts.append(f"estimated time of the {len(config.models)} models together: {planning.duration(total)}")
    return "\n".join(texts)


def sweep(config: RunConfig, progress: bool = True) -> list[Path]:
    """Every sweep of ``config``: for each model, its sweep on each calibration set; returns the tables
    written (``sweep_<calibration>.csv``)."""
    from companion.experiments.sweep import sweep_path
    from companion.method.calibration import check_available, parse_calibration

    for calibration in config.calibrations:
        check_available(*parse_calibration(calibration), config.data_source)
    written = []
    for model in config.models:
        run = build_run(config.for_model(model), model)
        for calibration in run.calibrations:
            ensure_sweep(run, calibration, progress=progress)
            written.append(sweep_path(run.out_dir, calibration).with_suffix(".csv"))
        run.release()
    return written
