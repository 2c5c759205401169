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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from companion.analysis.tables import speed_frame, sweep_frame
from companion.errors import CompanionError
from companion.experiments.evaluation import EvalSettings
from companion.experiments.sweep import SweepSettings
from companion.method.scoring import ScoreSettings, read_scores, reusable_scores
from companion.names import ENTROPY_METHODS, GRANULARITIES, PERPLEXITY_TASK, SIMILARITY_METHODS
from companion.paths import model_slug
from companion.profiles import csv_list, int_list
from companion.profiles import profile as profile_settings

PARAMETERS = ("profile", "model", "device", "dtype", "calibration", "samples", "seqlen", "seed", "estimators",
              "granularities", "drops", "tasks", "limit", "results_dir")
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
    protect: str = "auto"
    _loaded: Any = field(default=None, repr=False, compare=False)

    @property
    def calibration(self) -> str:
        """The first calibration set, which notebooks 1-4 and 6 use."""
        return self.calibrations[0]

    @property
    def entropy_methods(self) -> list[str]:
        """The entropy estimators among the run's methods."""
        return [m for m in self.methods if m in ENTROPY_METHODS]

    @property
    def similarity_methods(self) -> list[str]:
        """The similarity criteria among the run's methods."""
        return [m for m in self.methods if m in SIMILARITY_METHODS]

    @property
    def figures_dir(self) -> Path:
        """Where the notebooks save their figures (PNG and SVG)."""
        return self.out_dir / "figures"

    @property
    def max_drop(self) -> int:
        """The largest number of dropped blocks of the sweep."""
        return max(self.drops)

    def sweep_settings(self, calibration: str | None = None) -> SweepSettings:
        """The sweep every notebook runs on ``calibration`` (identical settings, so caches are shared)."""
        return SweepSettings(calibration=calibration or self.calibration, samples=self.samples, seqlen=self.seqlen,
                             seed=self.seed, methods=list(self.methods), granularities=list(self.granularities),
                             drops=list(self.drops), protect=self.protect)

    def eval_settings(self) -> EvalSettings:
        """The evaluation settings of the run's sweeps."""
        return EvalSettings(tasks=list(self.tasks), limit=self.limit, ppl_seqlen=self.ppl_seqlen,
                            ppl_chunks=self.ppl_chunks)

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

    def describe_calibration(self, calibration: str | None = None) -> str:
        """``wikitext2: 8 samples × 128 tokens, seed 2024``."""
        return f"{calibration or self.calibration}: {self.samples} samples × {self.seqlen} tokens, seed {self.seed}"

    def describe_evaluation(self) -> str:
        """The tasks, the example limit and the perplexity setting, in words."""
        tasks = [t for t in self.tasks if t != PERPLEXITY_TASK]
        limit = "all examples" if self.limit is None else f"first {self.limit} examples per task"
        text = f"zero-shot {', '.join(tasks) or 'no tasks'} ({limit})"
        if PERPLEXITY_TASK in self.tasks:
            chunks = "all" if self.ppl_chunks is None else str(self.ppl_chunks)
            windows = "1 window" if self.ppl_chunks == 1 else f"{chunks} windows"
            text += f"; WikiText-2 perplexity over {windows} of {self.ppl_seqlen} tokens"
        return text

    def caption(self, calibration: str | Sequence[str] | None = None, evaluation: bool = False) -> str:
        """The caption text of a figure: model, profile, calibration set and sizes, evaluation limits."""
        cals = [calibration] if isinstance(calibration, str) else list(calibration or [self.calibration])
        text = (f"Model {self.model} (profile '{self.profile}'). Calibration "
                + "; ".join(self.describe_calibration(c) for c in cals) + ".")
        if evaluation:
            text += f" Evaluation: {self.describe_evaluation()}. Drop counts K = {', '.join(map(str, self.drops))}."
        return text

    def describe_speed(self) -> str:
        """The timing setup in words."""
        device, dtype = self.resolved_device_dtype()
        return (f"Model {self.model} (profile '{self.profile}') on {device} ({dtype}): prompt of {self.speed_prompt} "
                f"tokens, {self.speed_new_tokens} generated tokens, batch {SPEED_BATCH_SIZE}, median of "
                f"{self.speed_repeats} timed runs after {SPEED_WARMUP} warm-up.")


def resolve_parameters(values: Mapping[str, Any]) -> Run:
    """A :class:`Run` from the notebook parameters in ``values`` (e.g. ``globals()``); see ``PARAMETERS``.

    Empty strings, 0 and -1 mean "the profile's value", except ``limit = -1``: all examples.
    ``calibration`` and the list parameters are comma-separated. Results go to ``{results_dir}/{profile}/{model slug}``, relative to the working
    directory.
    """
    get = {name: values.get(name) for name in PARAMETERS}
    name = get["profile"] or "smoke"
    prof = profile_settings(name, device=get["device"] or None, dtype=get["dtype"] or None)
    positive = {key: int(get[key]) for key in ("samples", "seqlen", "seed", "limit")
                if get[key] not in (None, "") and int(get[key]) > 0}
    all_examples = get["limit"] not in (None, "") and int(get["limit"]) == -1
    model = get["model"] or prof["models"][0]
    granularities = csv_list(get["granularities"]) or list(prof["granularities"])
    bad = [g for g in granularities if g not in GRANULARITIES]
    if bad:
        raise CompanionError(f"unknown granularity '{bad[0]}'; choose from {', '.join(GRANULARITIES)}")
    drops = int_list(get["drops"]) or list(prof["drops"])
    if 0 not in drops:
        drops = [0, *drops]  # retention needs the dense model
    results_dir = Path(get["results_dir"] or "results")
    return Run(
        profile=name, model=model, device=prof["device"], dtype=prof["dtype"],
        calibrations=csv_list(get["calibration"]) or list(prof["calibrations"]),
        samples=positive.get("samples", prof["samples"]), seqlen=positive.get("seqlen", prof["seqlen"]),
        seed=positive.get("seed", prof["seed"]), methods=csv_list(get["estimators"]) or list(prof["methods"]),
        granularities=granularities, drops=sorted(set(drops)), tasks=csv_list(get["tasks"]) or list(prof["tasks"]),
        limit=None if all_examples else positive.get("limit", prof["limit"]), ppl_seqlen=prof["ppl_seqlen"], ppl_chunks=prof["ppl_chunks"],
        speed_drops=list(prof["speed_drops"]), speed_prompt=prof["speed_prompt"],
        speed_new_tokens=prof["speed_new_tokens"], speed_repeats=prof["speed_repeats"],
        out_dir=results_dir / name / model_slug(model),
    )


# ---------------------------------------------------------------- cached results

def _stem(calibration: str) -> str:
    return Path(calibration).stem


def ensure_scores(run: Run, calibration: str | None = None) -> dict:
    """The scores file of ``run`` on ``calibration`` (the one the sweep uses), computed if missing."""
    from companion.experiments.sweep import scores_for

    settings = run.sweep_settings(calibration)
    path = run.out_dir / f"scores_{_stem(settings.calibration)}.json"
    existing = reusable_scores(path, run.model, settings.calibration, settings.samples, settings.seqlen,
                               settings.seed, ScoreSettings())
    return existing if existing is not None else scores_for(run.loaded(), settings, path, progress=False)


def _same_sweep(stored: dict, run: Run, settings: SweepSettings, scores: dict) -> bool:
    device, dtype = run.resolved_device_dtype()
    return (stored.get("schema") == "companion.sweep/1"
            and stored.get("settings") == asdict(settings)
            and stored.get("evaluation") == asdict(run.eval_settings())
            and stored.get("model", {}).get("spec") == run.model
            and stored.get("model", {}).get("dtype") == dtype
            and stored.get("scores", {}).get("created") == scores.get("created"))


def ensure_sweep(run: Run, calibration: str | None = None, force: bool = False) -> pd.DataFrame:
    """The sweep table of ``run`` on ``calibration``: read from ``sweep_<calibration>.json`` when it holds
    the same settings, evaluation, model, dtype and scores; otherwise run (evaluations are cached)."""
    from companion.experiments.sweep import run_sweep

    settings = run.sweep_settings(calibration)
    scores = ensure_scores(run, settings.calibration)
    path = run.out_dir / f"sweep_{_stem(settings.calibration)}.json"
    if path.exists() and not force:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if _same_sweep(stored, run, settings, scores):
            return sweep_frame(stored["rows"])
    rows = run_sweep(run.loaded(), settings, run.eval_settings(), run.out_dir, progress=False)
    return sweep_frame(rows)


def speed_settings(run: Run, scores: dict, method: str, granularities: Sequence[str]) -> dict:
    """What a speed measurement depends on; ``speed.json`` is reused only when this matches."""
    device, dtype = run.resolved_device_dtype()
    return {"model": run.model, "device": device, "dtype": dtype, "method": method, "protect": run.protect,
            "granularities": list(granularities), "drops": sorted(set(run.speed_drops) | {0}),
            "prompt_len": run.speed_prompt, "new_tokens": run.speed_new_tokens, "batch_size": SPEED_BATCH_SIZE,
            "warmup": SPEED_WARMUP, "repeats": run.speed_repeats, "scores_created": scores.get("created")}


def ensure_speed(run: Run, scores: dict, method: str = "knn", granularities: Sequence[str] = ("attn", "layer"),
                 force: bool = False) -> pd.DataFrame:
    """Speed rows of ``method``'s drop orders at ``granularities``: read from ``speed.json`` in the results
    folder when it was measured with the same settings, otherwise measured (the slow part) and written."""
    from companion.experiments.speed import speed_sweep, write_speed

    settings = speed_settings(run, scores, method, granularities)
    path = run.out_dir / "speed.json"
    if path.exists() and not force:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("settings") == settings and stored.get("rows"):
            return speed_frame(stored["rows"])
    rows: list[dict] = []
    for granularity in granularities:
        rows += speed_sweep(run.loaded(), scores, method, granularity, settings["drops"], run.protect,
                            prompt_len=run.speed_prompt, new_tokens=run.speed_new_tokens,
                            batch_size=SPEED_BATCH_SIZE, warmup=SPEED_WARMUP, repeats=run.speed_repeats)
    write_speed(rows, path, settings)
    return speed_frame(rows)


def load_scores(path: str | Path) -> dict:
    """A scores file (see :func:`companion.method.scoring.read_scores`)."""
    return read_scores(path)


def load_sweep(path: str | Path) -> pd.DataFrame:
    """A sweep table from its ``.json`` (preferred: typed values) or ``.csv`` file."""
    path = Path(path)
    if path.suffix == ".json":
        return sweep_frame(json.loads(path.read_text(encoding="utf-8"))["rows"])
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"dropped": str})
    frame["primary"] = frame["primary"].astype(str).str.lower() == "true"
    return sweep_frame(frame.to_dict("records"))


def load_speed(path: str | Path) -> pd.DataFrame:
    """The rows of a ``speed.json`` written by ``companion.experiments.speed.write_speed``."""
    return speed_frame(json.loads(Path(path).read_text(encoding="utf-8"))["rows"])


