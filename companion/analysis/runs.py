"""A notebook's run: its parameters resolved against a profile, and its results computed once and reused.

:func:`resolve_parameters` turns a notebook's parameters into a :class:`Run` (a profile with overrides
and the results folder ``{results_dir}/{profile}/{model slug}``); :func:`ensure_scores`,
:func:`ensure_sweep` and :func:`ensure_speed` return results already in that folder when they answer
the same request and compute (and write) them otherwise, loading the model only then. Every notebook
of one run therefore shares one scoring pass and one evaluation cache.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from companion.analysis.tables import speed_frame, sweep_frame
from companion.errors import CompanionError
from companion.experiments.evaluation import EvalSettings
from companion.experiments.sweep import SweepSettings, fit_drops, model_drops, profile_sweep
from companion.model.embedded import describe_model
from companion.names import (
    ALL_ENTROPY_METHODS,
    GRANULARITIES,
    PERPLEXITY_TASK,
    SIMILARITY_METHODS,
    task_label,
)
from companion.paths import model_slug
from companion.profiles import csv_list, int_list
from companion.profiles import profile as profile_settings

PARAMETERS = ("profile", "model", "device", "dtype", "data_source", "calibration", "samples", "seqlen", "seed",
              "estimators", "granularities", "drops", "tasks", "limit", "results_dir")
SPEED_BATCH_SIZE = 1
SPEED_WARMUP = 1


@dataclass
class Run:
    """The resolved settings of one notebook run and where its results live."""

    profile: str
    model: str
    device: str
    dtype: str
    calibrations: list[str]
    samples: int
    seqlen: int
    seed: int
    methods: list[str]
    granularities: list[str]
    drops: list[int]
    tasks: list[str]
    limit: int | None
    ppl_seqlen: int
    ppl_chunks: int | None
    speed_drops: list[int]
    speed_prompt: int
    speed_new_tokens: int
    speed_repeats: int
    out_dir: Path
    results_dir: Path
    data_source: str = "auto"
    protect: str = "auto"
    models: list[str] = field(default_factory=list)
    num_layers: int | None = None
    settings: dict = field(default_factory=dict, repr=False)
    parameters: dict = field(default_factory=dict, repr=False)
    _loaded: Any = field(default=None, repr=False, compare=False)
    _identity: Any = field(default=None, repr=False, compare=False)

    @property
    def calibration(self) -> str:
        """The first calibration set, which notebooks 1-4 and 6 use."""
        return self.calibrations[0]

    @property
    def entropy_methods(self) -> list[str]:
        """The entropy estimators among the run's methods (diagnostics included when asked for)."""
        return [m for m in self.methods if m in ALL_ENTROPY_METHODS]

    @property
    def similarity_methods(self) -> list[str]:
        """The similarity criteria among the run's methods."""
        return [m for m in self.methods if m in SIMILARITY_METHODS]

    @property
    def label(self) -> str:
        """How the run's result tables name its model (a local folder by its name, never its path)."""
        from companion.model.loading import portable_spec

        return portable_spec(self.model)

    @property
    def figures_dir(self) -> Path:
        """Where the notebooks save their figures (PNG and SVG)."""
        return self.out_dir / "figures"

    @property
    def max_drop(self) -> int:
        """The largest number of dropped blocks of the sweep."""
        return max(self.drops)

    def for_model(self, model: str) -> Run:
        """The same run for another of the profile's models (its own drop counts and example sizes)."""
        return self if model == self.model else resolve_parameters({**self.parameters, "model": model})

    def sweep_settings(self, calibration: str | None = None) -> SweepSettings:
        """The sweep every notebook runs on ``calibration`` (identical settings, so caches are shared):
        on the first calibration set every K with the primary tier, on the others the headline K."""
        calibration = calibration or self.calibration
        return profile_sweep(self.settings, calibration, list(self.drops), self.num_layers,
                             primary=calibration == self.calibration, samples=self.samples, seqlen=self.seqlen,
                             seed=self.seed, methods=list(self.methods), granularities=list(self.granularities),
                             protect=self.protect, data_source=self.data_source)

    def eval_settings(self) -> EvalSettings:
        """The evaluation settings of the run's sweeps."""
        return EvalSettings(tasks=list(self.tasks), limit=self.limit, ppl_seqlen=self.ppl_seqlen,
                            ppl_chunks=self.ppl_chunks, data_source=self.data_source, progress=False)

    def resolved_device_dtype(self) -> tuple[str, str]:
        """The device and dtype ``load_model`` will use, as strings, without loading anything."""
        from companion.model.loading import resolve_device, resolve_dtype

        device = resolve_device(self.device)
        return str(device), str(resolve_dtype(self.dtype, device)).replace("torch.", "")

    def loaded(self):
        """The model, loaded once per run and only when something has to be computed."""
        if self._loaded is None:
            from companion.model.loading import load_model

            self._loaded = load_model(self.model, self.device, self.dtype)
        return self._loaded

    def identity(self) -> dict | None:
        """The model's identity for the result store, without loading it (``None``: not on disk)."""
        if self._identity is None:
            from companion.model.loading import model_identity

            self._identity = model_identity(self.model, self.device, self.dtype)
        return self._identity

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
            text += f"; WikiText-2 perplexity over {windows} of {self.ppl_seqlen} tokens"
            if sweep.primary_ppl_chunks:
                text += f" ({sweep.primary_ppl_chunks} at the headline K)"
        return text

    def describe_model(self, scores: Mapping[str, Any] | None = None) -> str:
        """The model in words (the embedded registry's description), with its embedding and per-layer
        share of the parameters when ``scores`` (whose ``model`` provenance counts them) are given."""
        parameters = (scores or {}).get("model", {}).get("parameters")
        return describe_model(self.label, parameters)

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
        return (f"Model {self.describe_model()} (profile '{self.profile}') on {device} ({dtype}): prompt of {self.speed_prompt} "
                f"tokens, {self.speed_new_tokens} generated tokens, batch {SPEED_BATCH_SIZE}, median of "
                f"{self.speed_repeats} timed runs after {SPEED_WARMUP} warm-up.")


def resolve_parameters(values: Mapping[str, Any]) -> Run:
    """A :class:`Run` from the notebook parameters in ``values`` (e.g. ``globals()``); see ``PARAMETERS``.

    ``None`` means "the profile's value", except ``limit = -1``: all examples. ``calibration`` and the
    list parameters are comma-separated strings or lists. Results go to
    ``{results_dir}/{profile}/{model slug}``, relative to the working directory. The protected layers
    are the profile's; drop counts above the model's prunable layers are clipped (see
    :func:`companion.experiments.sweep.fit_drops`); a limit also caps the timed speed repeats.
    """
    get = {name: values.get(name) for name in PARAMETERS}
    name = get["profile"] or "smoke"
    models = [get["model"]] if get["model"] else list(profile_settings(name)["models"])
    model = models[0]
    prof = profile_settings(name, model, device=get["device"], dtype=get["dtype"], data_source=get["data_source"])
    chosen = {key: int(get[key]) for key in ("samples", "seqlen", "seed", "limit") if get[key] is not None}
    bad = [key for key in ("samples", "seqlen") if key in chosen and chosen[key] < 1]
    if bad or chosen.get("limit", 1) == 0 or chosen.get("limit", 1) < -1:
        raise CompanionError(f"parameter {(bad or ['limit'])[0]} must be positive (limit: -1 for all examples)")
    granularities = csv_list(get["granularities"]) or list(prof["granularities"])
    bad = [g for g in granularities if g not in GRANULARITIES]
    if bad:
        raise CompanionError(f"unknown granularity '{bad[0]}'; choose from {', '.join(GRANULARITIES)}")
    from companion.model.loading import model_num_layers

    layers = model_num_layers(model)
    drops = sorted({0, *int_list(get["drops"])}) if get["drops"] else model_drops(prof, layers)  # 0: the dense model
    limit = chosen.get("limit", prof["limit"])
    limit = None if limit == -1 else limit
    protect = prof["protect"]
    speed_drops = sorted(set(prof["speed_drops"]))
    if protect != "auto" and layers is not None:
        drops = fit_drops(drops, layers, protect, model_slug(model))
        speed_drops = fit_drops(speed_drops, layers, protect, note=False)
    results_dir = Path(get["results_dir"] or "results")
    return Run(
        profile=name, model=model, device=prof["device"], dtype=prof["dtype"],
        calibrations=csv_list(get["calibration"]) or list(prof["calibrations"]),
        samples=chosen.get("samples", prof["samples"]), seqlen=chosen.get("seqlen", prof["seqlen"]),
        seed=chosen.get("seed", prof["seed"]), methods=csv_list(get["estimators"]) or list(prof["methods"]),
        granularities=granularities, drops=sorted(set(drops)), tasks=csv_list(get["tasks"]) or list(prof["tasks"]),
        limit=limit, ppl_seqlen=prof["ppl_seqlen"], ppl_chunks=prof["ppl_chunks"],
        speed_drops=speed_drops, speed_prompt=prof["speed_prompt"], speed_new_tokens=prof["speed_new_tokens"],
        speed_repeats=prof["speed_repeats"] if limit is None else min(prof["speed_repeats"], limit),
        out_dir=results_dir / name / model_slug(model), results_dir=results_dir, data_source=prof["data_source"],
        protect=protect, models=models, num_layers=layers, settings=prof, parameters=dict(get),
    )


# ---------------------------------------------------------------- results, from the store

def ensure_scores(run: Run, calibration: str | None = None) -> dict:
    """The scores of ``run`` on ``calibration`` (the ones its sweep uses): reused when computed for the
    same key (see :mod:`companion.store`), computed otherwise, loading the model only then."""
    from companion.experiments.sweep import scores_for

    return scores_for(run.loaded, run.sweep_settings(calibration), run.out_dir, run.identity(), progress=False)


def ensure_sweep(run: Run, calibration: str | None = None) -> pd.DataFrame:
    """The sweep table of ``run`` on ``calibration``: reused when computed for the same key, else run
    (each evaluation is itself reused when stored under the same key)."""
    from companion.experiments.sweep import run_sweep

    sweep = run_sweep(run.loaded, run.sweep_settings(calibration), run.eval_settings(), run.out_dir,
                      run.identity(), progress=False)
    return sweep_frame(sweep["rows"])


def model_runs(run: Run) -> list[Run]:
    """One run per model of the profile (or the one model the parameters name), the first being ``run``."""
    return [run.for_model(model) for model in run.models]


def ensure_examples(run: Run, calibration: str | None = None) -> pd.DataFrame:
    """The tidy per-example table of ``run``'s sweep on ``calibration`` (the sweep is computed if needed)."""
    from companion.experiments.sweep import read_examples

    ensure_sweep(run, calibration)
    return read_examples(run.out_dir, calibration or run.calibration)


def comparisons_path(run: Run) -> Path:
    """Where a profile's comparisons table lives: ``{results_dir}/{profile}/comparisons.csv``."""
    return run.results_dir / run.profile / "comparisons.csv"


def ensure_comparisons(run: Run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-example tables of every model and calibration set of ``run``'s profile, and the paired
    comparisons computed from them: criteria and baselines within each calibration set
    (:func:`companion.analysis.comparisons.comparisons`) and each criterion across the first two
    calibration sets (:func:`~companion.analysis.comparisons.calibration_comparisons`).

    The table is stored (``comparisons.json``, keyed by the per-example tables' hashes and the code that
    compares them) and written as ``comparisons.csv``; it is reused while neither changes.
    """
    from companion import store
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


def speed_settings(run: Run, method: str, granularities: Sequence[str]) -> dict:
    """The measurement settings of a speed run of ``method``'s orders at ``granularities``."""
    return {"method": method, "protect": run.protect, "granularities": list(granularities),
            "drops": sorted(set(run.speed_drops) | {0}), "prompt_len": run.speed_prompt,
            "new_tokens": run.speed_new_tokens, "batch_size": SPEED_BATCH_SIZE, "warmup": SPEED_WARMUP,
            "repeats": run.speed_repeats}


def ensure_speed(run: Run, scores: dict, method: str = "knn",
                 granularities: Sequence[str] = ("attn", "layer")) -> pd.DataFrame:
    """Speed rows of ``method``'s drop orders at ``granularities``: reused from ``speed.json`` when measured
    for the same key (model, machine, scores, settings), otherwise measured (the slow part) and written."""
    from companion import store
    from companion.experiments.speed import speed_key, speed_sweep, write_speed

    settings = speed_settings(run, method, granularities)
    path = run.out_dir / "speed.json"
    identity = run.identity()
    key = speed_key(identity, scores, settings) if identity is not None else None
    stored = store.read(path, key) if key is not None else None
    if stored is not None:
        return speed_frame(stored["rows"])
    with store.locked(path):
        loaded = run.loaded()
        key = speed_key(loaded.identity(), scores, settings)
        rows: list[dict] = []
        for granularity in granularities:
            rows += speed_sweep(loaded, scores, method, granularity, settings["drops"], run.protect,
                                prompt_len=run.speed_prompt, new_tokens=run.speed_new_tokens,
                                batch_size=SPEED_BATCH_SIZE, warmup=SPEED_WARMUP, repeats=run.speed_repeats)
        write_speed(rows, path, {"model": loaded.provenance(), **settings}, key)
    return speed_frame(rows)


def run_plan(run: Run, models: Sequence[str], lengths) -> Any:
    """The :class:`companion.experiments.plan.Plan` of ``run`` for ``models``: its sweeps on every
    calibration set and the speed runs of the speedup notebook (KNN order, attention and layers)."""
    from companion.experiments.plan import build_plan

    speed = speed_settings(run, "knn", ("attn", "layer"))
    return build_plan(models, [run.sweep_settings(c) for c in run.calibrations], run.eval_settings(), lengths,
                      {"granularities": speed["granularities"], "drops": speed["drops"], "prompt": run.speed_prompt,
                       "new_tokens": run.speed_new_tokens, "warmup": SPEED_WARMUP, "repeats": run.speed_repeats})


def load_sweep(path: str | Path) -> pd.DataFrame:
    """A sweep table from its ``.json`` (preferred: typed values) or ``.csv`` file."""
    path = Path(path)
    if path.suffix == ".json":
        return sweep_frame(json.loads(path.read_text(encoding="utf-8"))["rows"])
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"dropped": str, "protected": str})
    frame["primary"] = frame["primary"].astype(str).str.lower() == "true"
    return sweep_frame(frame.to_dict("records"))


def load_speed_settings(path: str | Path) -> dict:
    """The timing settings (device, dtype, batch, prompt, new tokens, warm-up, repeats) of a ``speed.json``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))["settings"]


def load_speed(path: str | Path) -> pd.DataFrame:
    """The rows of a ``speed.json`` written by ``companion.experiments.speed.write_speed``."""
    return speed_frame(json.loads(Path(path).read_text(encoding="utf-8"))["rows"])
