"""The numbers behind the book's figures, computed from scores files, sweep tables and speed results.

Three kinds of functions:

- **Run parameters and cached results.** :func:`resolve_parameters` turns a notebook's parameters into a
  :class:`Run` (a profile with overrides and the results folder ``{results_dir}/{profile}/{model slug}``);
  :func:`ensure_scores`, :func:`ensure_sweep` and :func:`ensure_speed` return results already in that
  folder when they answer the same request and compute (and write) them otherwise, loading the model
  only then. Every notebook of one run therefore shares one scoring pass and one evaluation cache.
- **Pure functions** of those results (no model, no plotting): bootstrap bands of entropy profiles,
  min–max normalisation, ΔH matrices, rank correlations, drop-set overlaps, mean accuracy and retention.
- **Verdicts**: one-line comparisons by fixed, stated rules, so the book's summary can say whether a
  run supports a claim without hard-coding numbers.

:func:`glue_values` publishes a notebook's key numbers with ``myst_nb.glue`` (as plain Python values).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from .errors import CompanionError
from .evaluation import PERPLEXITY_TASK, EvalSettings
from .profiles import profile as profile_settings
from .pruning import GRANULARITIES, DropOrder, compression_stage, drop_order
from .scoring import ENTROPY_NAMES, ScoreSettings, read_scores, reusable_scores
from .sweep import SweepSettings

PARAMETERS = ("profile", "model", "device", "dtype", "calibration", "samples", "seqlen", "seed", "estimators",
              "granularities", "drops", "tasks", "limit", "results_dir")
SIMILARITY_NAMES = ("cosine", "angular")
HEADLINE_FRACTION = 12 / 32  # the paper's headline: 12 of 32 attention layers dropped
HEADLINE_RETENTION = 95.0  # ... keep "95%+" of the dense accuracy
SPEED_BATCH_SIZE = 1
SPEED_WARMUP = 1


# ---------------------------------------------------------------- run parameters

def _csv(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value or []]


def _ints(value: Any) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError as exc:
        raise CompanionError(f"expected comma-separated integers, got '{value}'") from exc


def model_slug(spec: str) -> str:
    """A model spec as a folder name: ``meta-llama/Llama-3.1-8B`` -> ``meta-llama__Llama-3.1-8B``."""
    return spec.replace("/", "__")


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
        return [m for m in self.methods if m in ENTROPY_NAMES]

    @property
    def similarity_methods(self) -> list[str]:
        """The similarity criteria among the run's methods."""
        return [m for m in self.methods if m in SIMILARITY_NAMES]

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
        from .models import resolve_device, resolve_dtype

        device = resolve_device(self.device)
        return str(device), str(resolve_dtype(self.dtype, device)).replace("torch.", "")

    def loaded(self):
        """The model, loaded once per run and only when something has to be computed."""
        if self._loaded is None:
            from .models import load_model

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
    granularities = _csv(get["granularities"]) or list(prof["granularities"])
    bad = [g for g in granularities if g not in GRANULARITIES]
    if bad:
        raise CompanionError(f"unknown granularity '{bad[0]}'; choose from {', '.join(GRANULARITIES)}")
    drops = _ints(get["drops"]) or list(prof["drops"])
    if 0 not in drops:
        drops = [0, *drops]  # retention needs the dense model
    results_dir = Path(get["results_dir"] or "results")
    return Run(
        profile=name, model=model, device=prof["device"], dtype=prof["dtype"],
        calibrations=_csv(get["calibration"]) or list(prof["calibrations"]),
        samples=positive.get("samples", prof["samples"]), seqlen=positive.get("seqlen", prof["seqlen"]),
        seed=positive.get("seed", prof["seed"]), methods=_csv(get["estimators"]) or list(prof["methods"]),
        granularities=granularities, drops=sorted(set(drops)), tasks=_csv(get["tasks"]) or list(prof["tasks"]),
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
    from .sweep import scores_for

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
    from .sweep import run_sweep

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
    from .speed import speed_sweep, write_speed

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
    """A scores file (see :func:`companion.scoring.read_scores`)."""
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
    """The rows of a ``speed.json`` written by ``companion.speed.write_speed``."""
    return speed_frame(json.loads(Path(path).read_text(encoding="utf-8"))["rows"])


# ---------------------------------------------------------------- entropy profiles

def per_sample(scores: dict, estimator: str, point: str = "boundary") -> np.ndarray:
    """Per-sample entropies of ``estimator``, shape (points, samples): L+1 boundaries or L mid points."""
    try:
        values = scores["per_sample"]["entropy"][estimator][point]
    except KeyError as exc:
        have = ", ".join(sorted(scores.get("per_sample", {}).get("entropy", {})))
        raise CompanionError(f"no per-sample '{point}' entropies of '{estimator}' in the scores (have: {have})") from exc
    return np.asarray(values, dtype=float)


def bootstrap_band(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Percentile bootstrap band of the mean over samples, for each row of ``values`` (points × samples).

    Samples are resampled with replacement, the same draw for every point (the points of one sample are
    paired), ``n_boot`` times. Returns columns ``mean`` (over the original samples), ``lo`` and ``hi``
    (the (1 − level)/2 and (1 + level)/2 quantiles of the bootstrap means); one sample gives lo = hi = mean.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] < 1:
        raise CompanionError(f"expected a (points, samples) array, got shape {values.shape}")
    mean = values.mean(axis=1)
    if values.shape[1] == 1:
        return pd.DataFrame({"mean": mean, "lo": mean, "hi": mean})
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.shape[1], size=(n_boot, values.shape[1]))
    boot = values[:, draws].mean(axis=2)  # (points, n_boot)
    tail = (1 - level) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail], axis=1)
    return pd.DataFrame({"mean": mean, "lo": np.minimum(lo, mean), "hi": np.maximum(hi, mean)})


def profile_band(scores: dict, estimator: str, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Bootstrap band of ``estimator``'s entropy at every block boundary (column ``boundary`` 0..L)."""
    band = bootstrap_band(per_sample(scores, estimator), n_boot=n_boot, level=level, seed=seed)
    band.insert(0, "boundary", np.arange(len(band)))
    return band


def minmax(values: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Min–max scaling to [0, 1] by the range of ``reference`` (default: ``values`` itself).

    Estimators differ in units and offsets (KNN is scale-dependent, bucket lies in [0, d·log bins]), so
    profiles share one axis only after such a map; a constant reference maps to 0.
    """
    values = np.asarray(values, dtype=float)
    ref = values if reference is None else np.asarray(reference, dtype=float)
    low, span = np.nanmin(ref), np.nanmax(ref) - np.nanmin(ref)
    return (values - low) / span if span > 0 else np.zeros_like(values)


def normalise_band(band: pd.DataFrame, reference: Sequence[float] | np.ndarray | None = None) -> pd.DataFrame:
    """A band with ``mean``, ``lo`` and ``hi`` min–max scaled by the range of its mean profile (or of
    ``reference``, e.g. the mean profiles of several calibration sets together, to share one scale)."""
    out = band.copy()
    ref = band["mean"] if reference is None else reference
    for column in ("mean", "lo", "hi"):
        out[column] = minmax(band[column], ref)
    return out


def stage_end(scores: dict, estimator: str) -> int:
    """The boundary where ``estimator``'s compression stage ends (= number of compression layers)."""
    return compression_stage(scores["profiles"][estimator])


# ---------------------------------------------------------------- block scores

def block_table(scores: dict) -> pd.DataFrame:
    """The scores file's block records as a table (layer, granularity, method, kind, h_in, h_out, value, value_std)."""
    return pd.DataFrame(scores["blocks"])


def layer_scores(scores: dict, method: str, granularity: str) -> np.ndarray:
    """``method``'s score of every layer at ``granularity`` (ΔH for entropy, 1 − cos or angular for similarity)."""
    values = np.full(scores["num_layers"], np.nan)
    found = False
    for block in scores["blocks"]:
        if block["method"] == method and block["granularity"] == granularity:
            values[block["layer"]] = block["value"]
            found = True
    if not found:
        raise CompanionError(f"no '{method}' scores at granularity '{granularity}' in the scores file")
    return values


def delta_matrix(scores: dict, method: str = "knn", granularities: Sequence[str] = GRANULARITIES) -> pd.DataFrame:
    """ΔH (or the similarity score) of ``method``, one row per layer and one column per granularity."""
    frame = pd.DataFrame({g: layer_scores(scores, method, g) for g in granularities})
    frame.index.name = "layer"
    return frame


def paired_scores(scores: dict, method_x: str, method_y: str, granularities: Sequence[str]) -> pd.DataFrame:
    """Long table (layer, granularity, x, y) of two methods' per-block scores, for scatter plots."""
    parts = [pd.DataFrame({"layer": np.arange(scores["num_layers"]), "granularity": g,
                           "x": layer_scores(scores, method_x, g), "y": layer_scores(scores, method_y, g)})
             for g in granularities]
    return pd.concat(parts, ignore_index=True)


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Spearman's ρ and Kendall's τ (with p-values) between two paired score vectors; NaN pairs dropped."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        nan = float("nan")
        return {"spearman": nan, "spearman_p": nan, "kendall": nan, "kendall_p": nan, "n": int(len(a))}
    rho = stats.spearmanr(a, b)
    tau = stats.kendalltau(a, b)
    return {"spearman": float(rho.statistic), "spearman_p": float(rho.pvalue), "kendall": float(tau.statistic),
            "kendall_p": float(tau.pvalue), "n": int(len(a))}


def method_correlation(scores: dict, method_a: str, method_b: str, granularity: str,
                       layers: Iterable[int] | None = None, scores_b: dict | None = None) -> dict[str, float]:
    """Rank correlation of two methods' per-layer scores at ``granularity`` (optionally over ``layers`` only,
    and with ``method_b`` read from another scores file ``scores_b``, e.g. another calibration set)."""
    a = layer_scores(scores, method_a, granularity)
    b = layer_scores(scores_b if scores_b is not None else scores, method_b, granularity)
    if layers is not None:
        index = sorted(set(layers))
        a, b = a[index], b[index]
    return rank_correlation(a, b)


def correlation_matrix(scores: dict, methods: Sequence[str], granularity: str, kind: str = "spearman") -> pd.DataFrame:
    """Pairwise rank correlations (``spearman`` or ``kendall``) of ``methods`` at ``granularity``."""
    matrix = pd.DataFrame(np.eye(len(methods)), index=list(methods), columns=list(methods))
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            value = method_correlation(scores, a, b, granularity)[kind]
            matrix.loc[a, b] = matrix.loc[b, a] = value
    return matrix


def rank_table(scores: dict, methods: Sequence[str], granularity: str, protect: str = "auto") -> pd.DataFrame:
    """Position of every layer in each method's drop order (1 = dropped first), NaN where protected."""
    table = pd.DataFrame(index=pd.RangeIndex(scores["num_layers"], name="layer"))
    for method in methods:
        order = drop_order(scores, method, granularity, protect)
        column = np.full(scores["num_layers"], np.nan)
        for position, layer in enumerate(order.order, start=1):
            column[layer] = position
        table[method] = column
    return table


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    """``|A ∩ B| / |A ∪ B|`` of two sets of blocks; two empty sets count as identical (1)."""
    a, b = set(a), set(b)
    return 1.0 if not a | b else len(a & b) / len(a | b)


def drop_set_overlap(order_a: DropOrder, order_b: DropOrder, ks: Iterable[int] | None = None) -> pd.DataFrame:
    """For each K: the K-block drop sets of two orders, their common blocks and Jaccard overlap.

    ``ks`` defaults to 1 .. the smaller number of prunable blocks; K beyond either order is skipped.
    """
    limit = min(len(order_a.order), len(order_b.order))
    ks = range(1, limit + 1) if ks is None else [k for k in ks if 0 <= k <= limit]
    rows = []
    for k in ks:
        set_a, set_b = order_a.drop_set(k), order_b.drop_set(k)
        rows.append({"K": k, "a": " ".join(map(str, set_a)), "b": " ".join(map(str, set_b)),
                     "common": len(set(set_a) & set(set_b)), "jaccard": jaccard(set_a, set_b)})
    return pd.DataFrame(rows, columns=["K", "a", "b", "common", "jaccard"])


# ---------------------------------------------------------------- sweep tables

KEYS = ["model", "calibration", "method", "granularity", "K"]


def sweep_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Sweep rows as a typed table: K and n integers, value and stderr floats (missing stderr = NaN)."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise CompanionError("the sweep table is empty")
    frame["K"] = frame["K"].astype(int)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    frame["stderr"] = pd.to_numeric(frame["stderr"], errors="coerce").astype(float)
    frame["dropped"] = frame["dropped"].fillna("").astype(str)
    frame["primary"] = frame["primary"].astype(bool)
    return frame


def task_accuracy(sweep: pd.DataFrame) -> pd.DataFrame:
    """The primary accuracy metric of every task (perplexity excluded), one row per (setting, task)."""
    rows = sweep[sweep["primary"] & (sweep["task"] != PERPLEXITY_TASK)]
    return rows[[*KEYS, "dropped", "task", "metric", "value", "stderr", "n"]].reset_index(drop=True)


def _dense_means(acc: pd.DataFrame) -> dict[tuple, float]:
    dense = acc[acc["K"] == 0]
    return {key: float(group["mean"].iloc[0]) for key, group in dense.groupby(["model", "calibration"])}


def mean_accuracy(sweep: pd.DataFrame) -> pd.DataFrame:
    """Mean primary accuracy over tasks per (model, calibration, method, granularity, K), with retention.

    ``stderr`` of the mean is sqrt(Σ se²) / n_tasks (tasks independent; NaN if a task has none).
    ``retention`` is 100 × mean / dense mean, the dense model being K = 0 of the same model and
    calibration; ``retention_stderr`` treats the dense mean as exact. Perplexity is left out.
    """
    tasks = task_accuracy(sweep)
    if tasks.empty:
        raise CompanionError("the sweep has no accuracy task (only perplexity?)")
    rows = []
    for key, group in tasks.groupby(KEYS, sort=True):
        se = group["stderr"].to_numpy(dtype=float)
        n_tasks = len(group)
        rows.append({**dict(zip(KEYS, key)), "dropped": group["dropped"].iloc[0],
                     "mean": float(group["value"].mean()), "stderr": float(np.sqrt(np.sum(se ** 2)) / n_tasks),
                     "n_tasks": n_tasks, "tasks": " ".join(sorted(group["task"]))})
    acc = pd.DataFrame(rows)
    dense = _dense_means(acc)
    base = np.array([dense.get((m, c), np.nan) for m, c in zip(acc["model"], acc["calibration"])])
    acc["retention"] = 100 * acc["mean"] / base
    acc["retention_stderr"] = 100 * acc["stderr"] / base
    return acc


def perplexity_table(sweep: pd.DataFrame) -> pd.DataFrame:
    """WikiText-2 perplexity per (model, calibration, method, granularity, K); empty if not evaluated."""
    rows = sweep[(sweep["task"] == PERPLEXITY_TASK) & (sweep["metric"] == "perplexity")]
    return rows[[*KEYS, "dropped", "value", "stderr"]].rename(
        columns={"value": "perplexity"}).sort_values(KEYS).reset_index(drop=True)


def dense_accuracy(acc: pd.DataFrame) -> tuple[float, float]:
    """Mean accuracy and its standard error of the dense model (K = 0) in a :func:`mean_accuracy` table."""
    dense = acc[acc["K"] == 0]
    if dense.empty:
        return float("nan"), float("nan")
    return float(dense["mean"].iloc[0]), float(dense["stderr"].iloc[0])


def lookup(table: pd.DataFrame, column: str, **where: Any) -> float:
    """The single value of ``column`` in the rows matching ``where`` (NaN if none)."""
    mask = np.ones(len(table), dtype=bool)
    for key, value in where.items():
        mask &= (table[key] == value).to_numpy()
    values = table.loc[mask, column]
    if len(values) > 1 and values.nunique() > 1:
        raise CompanionError(f"{len(values)} different values of {column} match {where}")
    return float(values.iloc[0]) if len(values) else float("nan")


def mean_retention(acc: pd.DataFrame, method: str, granularity: str, calibration: str | None = None) -> float:
    """Retention averaged over the sweep's K > 0 (one number for how gracefully accuracy decays)."""
    rows = acc[(acc["method"] == method) & (acc["granularity"] == granularity) & (acc["K"] > 0)]
    if calibration is not None:
        rows = rows[rows["calibration"] == calibration]
    return float(rows["retention"].mean()) if len(rows) else float("nan")


def headline_k(drops: Iterable[int], num_layers: int, fraction: float = HEADLINE_FRACTION) -> int:
    """The largest K > 0 of ``drops`` with K ≤ fraction × layers (12 of 32 in the paper); 0 if none."""
    eligible = [k for k in drops if 0 < k <= fraction * num_layers + 1e-9]
    return max(eligible, default=0)


# ---------------------------------------------------------------- speed

def speed_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Speed rows as a table, with speedup spreads (min/max runs over the dense median)."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise CompanionError("no speed rows")
    frame["dropped"] = [" ".join(map(str, d)) if isinstance(d, list) else str(d) for d in frame["dropped"]]
    for phase in ("prefill", "decode"):
        dense = frame[frame["K"] == 0].set_index("granularity")[f"{phase}_tps"]
        base = frame["granularity"].map(dense).astype(float)
        frame[f"measured_speedup_{phase}_lo"] = frame[f"{phase}_tps_lo"] / base
        frame[f"measured_speedup_{phase}_hi"] = frame[f"{phase}_tps_hi"] / base
    return frame.sort_values(["granularity", "K"]).reset_index(drop=True)


def speedup_efficiency(measured: float, expected: float) -> float:
    """Share of the FLOP-proportional gain that was measured: (measured − 1) / (expected − 1)."""
    return (measured - 1) / (expected - 1) if expected != 1 else float("nan")


# ---------------------------------------------------------------- verdicts

def compare(a: float, a_se: float, b: float, b_se: float, z: float = 2.0) -> int:
    """+1 if a > b by more than z combined standard errors, −1 if below, 0 otherwise (or unknown se)."""
    if any(map(_missing, (a, b))):
        return 0
    spread = z * math.sqrt((0 if _missing(a_se) else a_se) ** 2 + (0 if _missing(b_se) else b_se) ** 2)
    if a - b > spread:
        return 1
    if b - a > spread:
        return -1
    return 0


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def versus(a: float, a_se: float, b: float, b_se: float, a_name: str, b_name: str) -> str:
    """``"KNN ahead"``, ``"cosine ahead"`` or ``"tie within 2 s.e."`` (see :func:`compare`)."""
    if any(map(_missing, (a, b))):
        return "not measured"
    result = compare(a, a_se, b, b_se)
    return {1: f"{a_name} ahead", -1: f"{b_name} ahead", 0: "tie within 2 s.e."}[result]


def two_stage_verdict(profile: Sequence[float]) -> str:
    """Whether an entropy profile (L+1 boundary values) falls first and then rises to above its minimum."""
    stage = compression_stage(list(profile))
    rises = profile[-1] > profile[stage]
    if stage == 0:
        return "no compression stage: entropy does not fall at first" + ("" if rises else " and does not rise")
    if not rises:
        return f"falls over the first {stage} layers but does not rise again"
    return f"two-stage: falls over the first {stage} layers, then rises"


def trend_verdict(rho: float, p: float, alpha: float = 0.05) -> str:
    """A negative depth trend described by its Spearman ρ and p-value."""
    if _missing(rho):
        return "not measured"
    if rho < 0 and p < alpha:
        return "yes: ΔH falls with depth (p < 0.05)"
    if rho < 0:
        return "weak: ΔH tends to fall with depth, not significant"
    return "no: ΔH does not fall with depth"


def ranking(values: Mapping[str, float]) -> str:
    """Names sorted by value, best first: ``"bucket > knn > renyi"`` (NaN values left out)."""
    ordered = sorted(((v, k) for k, v in values.items() if not _missing(v)), key=lambda t: -t[0])
    return " > ".join(k for _, k in ordered) or "not measured"


def threshold_verdict(value: float, threshold: float, unit: str = "%") -> str:
    """``"reached (≥ 95%)"`` or ``"not reached (< 95%)"``."""
    if _missing(value):
        return "not measured"
    return f"reached (≥ {threshold:g}{unit})" if value >= threshold else f"not reached (< {threshold:g}{unit})"


def speed_verdict(efficiency: float, good: float = 0.8, above: float = 1.2) -> str:
    """Whether a measured speedup realises most (≥ 80%) of its FLOP-proportional gain, or more (≥ 120%)."""
    if _missing(efficiency):
        return "not measured"
    if efficiency >= above:
        return "beyond the FLOP-proportional gain"
    if efficiency >= good:
        return f"near-linear: ≥ {good:.0%} of the FLOP-proportional gain"
    if efficiency > 0:
        return f"sub-linear: {efficiency:.0%} of the FLOP-proportional gain"
    return "no measurable speedup"


# ---------------------------------------------------------------- key numbers of each notebook

STANDARD_ENTROPY = ("knn", "bucket", "renyi")
STANDARD_METHODS = ("knn", "bucket", "renyi", "cosine")
STANDARD_GRANULARITIES = ("attn", "layer")
NAMES = {"knn": "KNN", "bucket": "bucket", "renyi": "Rényi", "cosine": "cosine", "angular": "angular"}


def run_numbers(run: Run) -> dict[str, Any]:
    """What a run was: model, profile, calibration, sizes, tasks and limits (strings and integers)."""
    return {"model": run.model, "profile": run.profile, "calibration": run.calibration,
            "calibrations": ", ".join(run.calibrations), "samples": run.samples, "seqlen": run.seqlen,
            "seed": run.seed, "tasks": ", ".join(t for t in run.tasks if t != PERPLEXITY_TASK),
            "limit": "all" if run.limit is None else str(run.limit), "drops": ", ".join(map(str, run.drops)),
            "k_max": run.max_drop}


def profile_numbers(scores: dict, estimators: Sequence[str]) -> dict[str, Any]:
    """Entropy-by-depth numbers. Per estimator ``e`` of knn/bucket/renyi: ``{e}_stage_layers`` (layers in
    the compression stage), ``{e}_two_stage`` (verdict), ``{e}_rise`` (H at the last boundary minus the
    minimum, in units of the profile's range), ``{e}_expansion_positive_pct`` (% of expansion-stage layers
    with ΔH > 0), and the depth trend of whole-layer ΔH over the expansion stage: ``{e}_depth_rho``,
    ``{e}_depth_p``, ``{e}_depth_verdict`` (Spearman of ΔH against layer index)."""
    numbers: dict[str, Any] = {"num_layers": scores["num_layers"]}
    for e in STANDARD_ENTROPY:
        if e not in estimators or e not in scores["profiles"]:
            numbers.update({f"{e}_stage_layers": float("nan"), f"{e}_two_stage": "not measured",
                            f"{e}_rise": float("nan"), f"{e}_expansion_positive_pct": float("nan"),
                            f"{e}_depth_rho": float("nan"), f"{e}_depth_p": float("nan"),
                            f"{e}_depth_verdict": "not measured"})
            continue
        prof = scores["profiles"][e]
        stage = compression_stage(prof)
        delta = layer_scores(scores, e, "layer")
        expansion = np.arange(stage, scores["num_layers"])
        trend = rank_correlation(expansion, delta[expansion])
        span = max(prof) - min(prof)
        numbers.update({
            f"{e}_stage_layers": stage, f"{e}_two_stage": two_stage_verdict(prof),
            f"{e}_rise": (prof[-1] - prof[stage]) / span if span > 0 else float("nan"),
            f"{e}_expansion_positive_pct": 100 * float(np.mean(delta[expansion] > 0)),
            f"{e}_depth_rho": trend["spearman"], f"{e}_depth_p": trend["spearman_p"],
            f"{e}_depth_verdict": trend_verdict(trend["spearman"], trend["spearman_p"]),
        })
    return numbers


def accuracy_numbers(acc: pd.DataFrame, ppl: pd.DataFrame, num_layers: int) -> dict[str, Any]:
    """Accuracy-vs-pruning numbers: ``dense_accuracy`` (and ``_stderr``), ``dense_perplexity``, ``k_max``;
    per method ``m`` and granularity ``g`` (knn/bucket/renyi/cosine × attn/layer): ``{m}_{g}_accuracy_max``,
    ``{m}_{g}_retention_max`` (at the largest K), ``{m}_{g}_retention_mean`` (over K > 0),
    ``{m}_{g}_ppl_max``; per granularity ``{g}_knn_vs_cosine`` and ``{g}_bucket_vs_cosine`` (retention at
    the largest K, 2 s.e. rule); the headline: ``headline_k`` (largest K ≤ 37.5% of the layers),
    ``headline_pct``, ``{m}_attn_retention_headline`` and ``{m}_headline_verdict`` (≥ 95%?)."""
    dense, dense_se = dense_accuracy(acc)
    k_max = int(acc["K"].max())
    ks = sorted(acc["K"].unique())
    head = headline_k(ks, num_layers)
    dense_ppl = ppl.loc[ppl["K"] == 0, "perplexity"]
    numbers: dict[str, Any] = {
        "dense_accuracy": dense, "dense_accuracy_stderr": dense_se,
        "dense_perplexity": float(dense_ppl.iloc[0]) if len(dense_ppl) else float("nan"), "k_max": k_max,
        "k_max_pct": 100 * k_max / num_layers, "num_layers": num_layers, "headline_k": head,
        "headline_pct": 100 * head / num_layers, "n_tasks": int(acc["n_tasks"].max()),
    }
    for m in STANDARD_METHODS:
        for g in STANDARD_GRANULARITIES:
            where = {"method": m, "granularity": g, "K": k_max}
            numbers[f"{m}_{g}_accuracy_max"] = lookup(acc, "mean", **where)
            numbers[f"{m}_{g}_retention_max"] = lookup(acc, "retention", **where)
            numbers[f"{m}_{g}_retention_mean"] = mean_retention(acc, m, g)
            numbers[f"{m}_{g}_ppl_max"] = lookup(ppl, "perplexity", **where) if len(ppl) else float("nan")
        numbers[f"{m}_attn_retention_headline"] = lookup(acc, "retention", method=m, granularity="attn", K=head)
        numbers[f"{m}_headline_verdict"] = threshold_verdict(numbers[f"{m}_attn_retention_headline"],
                                                             HEADLINE_RETENTION)
    for g in STANDARD_GRANULARITIES:
        cos = {"method": "cosine", "granularity": g, "K": k_max}
        for m in ("knn", "bucket"):
            where = {"method": m, "granularity": g, "K": k_max}
            numbers[f"{g}_{m}_vs_cosine"] = versus(
                lookup(acc, "retention", **where), lookup(acc, "retention_stderr", **where),
                lookup(acc, "retention", **cos), lookup(acc, "retention_stderr", **cos), NAMES[m], "cosine")
    return numbers


def criteria_numbers(scores: dict, granularities: Sequence[str], k_max: int, method_a: str = "knn",
                     method_b: str = "cosine", protect: str = "auto") -> dict[str, Any]:
    """Entropy-vs-cosine numbers per granularity ``g``: ``spearman_{g}``, ``spearman_p_{g}``, ``kendall_{g}``
    (all layers), ``spearman_prunable_{g}`` (layers outside the entropy's compression stage),
    ``jaccard_{g}_kmax`` (drop sets at the sweep's largest K) and ``jaccard_{g}_mean`` (over all K)."""
    numbers: dict[str, Any] = {}
    for g in granularities:
        order_a, order_b = drop_order(scores, method_a, g, protect), drop_order(scores, method_b, g, protect)
        full = method_correlation(scores, method_a, method_b, g)
        prunable = method_correlation(scores, method_a, method_b, g, layers=order_a.order)
        overlap = drop_set_overlap(order_a, order_b)
        at_max = overlap.loc[overlap["K"] == k_max, "jaccard"]
        numbers.update({f"spearman_{g}": full["spearman"], f"spearman_p_{g}": full["spearman_p"],
                        f"kendall_{g}": full["kendall"], f"spearman_prunable_{g}": prunable["spearman"],
                        f"jaccard_{g}_kmax": float(at_max.iloc[0]) if len(at_max) else float("nan"),
                        f"jaccard_{g}_mean": float(overlap["jaccard"].mean()) if len(overlap) else float("nan")})
    return numbers


def estimator_numbers(scores: dict, acc: pd.DataFrame, estimators: Sequence[str], granularities: Sequence[str],
                      k_max: int, protect: str = "auto") -> dict[str, Any]:
    """Estimator-comparison numbers per granularity ``g``: ``estimator_ranking_{g}`` (by retention averaged
    over K > 0, best first), ``best_estimator_{g}``, ``renyi_last_{g}`` (yes/no), pairwise
    ``spearman_{a}_{b}_{g}`` and ``jaccard_{a}_{b}_{g}_kmax`` for the pairs of knn/bucket/renyi."""
    numbers: dict[str, Any] = {}
    for g in granularities:
        retention = {e: mean_retention(acc, e, g) for e in estimators}
        order = ranking(retention)
        numbers[f"estimator_ranking_{g}"] = order.replace("knn", "KNN").replace("renyi", "Rényi")
        names = order.split(" > ")
        numbers[f"best_estimator_{g}"] = NAMES.get(names[0], names[0])
        numbers[f"renyi_last_{g}"] = ("not measured" if "renyi" not in names
                                      else "yes" if names[-1] == "renyi" else "no")
        for i, a in enumerate(STANDARD_ENTROPY):
            for b in STANDARD_ENTROPY[i + 1:]:
                if a in estimators and b in estimators:
                    numbers[f"spearman_{a}_{b}_{g}"] = method_correlation(scores, a, b, g)["spearman"]
                    overlap = drop_set_overlap(drop_order(scores, a, g, protect), drop_order(scores, b, g, protect),
                                               [k_max])
                    numbers[f"jaccard_{a}_{b}_{g}_kmax"] = (float(overlap["jaccard"].iloc[0]) if len(overlap)
                                                           else float("nan"))
                else:
                    numbers[f"spearman_{a}_{b}_{g}"] = numbers[f"jaccard_{a}_{b}_{g}_kmax"] = float("nan")
        for e in STANDARD_ENTROPY:
            numbers[f"{e}_{g}_retention_mean"] = retention.get(e, float("nan"))
    return numbers


def accuracy_differences(acc: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Mean accuracy on calibration ``second`` minus ``first`` for each (method, granularity, K > 0), with
    the combined standard error and whether the two settings dropped the same blocks."""
    keys = ["method", "granularity", "K"]
    a = acc[(acc["calibration"] == first) & (acc["K"] > 0)].set_index(keys)
    b = acc[(acc["calibration"] == second) & (acc["K"] > 0)].set_index(keys)
    both = a.join(b, lsuffix="_a", rsuffix="_b", how="inner")
    out = pd.DataFrame({"difference": both["mean_b"] - both["mean_a"],
                        "stderr": np.sqrt(both["stderr_a"] ** 2 + both["stderr_b"] ** 2),
                        "same_blocks": both["dropped_a"] == both["dropped_b"]})
    return out.reset_index()


def calibration_numbers(scores: Mapping[str, dict], acc: pd.DataFrame, methods: Sequence[str],
                        granularities: Sequence[str], k_max: int, protect: str = "auto") -> dict[str, Any]:
    """Calibration-ablation numbers comparing the first two calibration sets ``a`` and ``b``:
    ``calib_a``, ``calib_b``; per method ``m`` (knn/bucket/renyi/cosine) and granularity ``g``:
    ``calib_spearman_{m}_{g}`` (per-layer scores of a vs b) and ``calib_jaccard_{m}_{g}_kmax``;
    ``calib_max_acc_diff`` (largest absolute change of mean accuracy over method × granularity × K > 0, in accuracy
    points, i.e. × 100), ``calib_max_acc_diff_se``, ``calib_beyond_2se`` (how many of ``calib_settings``
    differ by more than 2 s.e.), ``calib_same_blocks`` (settings with identical drop sets) and
    ``calib_verdict``."""
    first, second = list(scores)[:2]
    numbers: dict[str, Any] = {"calib_a": first, "calib_b": second}
    for m in STANDARD_METHODS:
        for g in STANDARD_GRANULARITIES:
            if m in methods and g in granularities:
                numbers[f"calib_spearman_{m}_{g}"] = method_correlation(scores[first], m, m, g,
                                                                        scores_b=scores[second])["spearman"]
                overlap = drop_set_overlap(drop_order(scores[first], m, g, protect),
                                           drop_order(scores[second], m, g, protect), [k_max])
                numbers[f"calib_jaccard_{m}_{g}_kmax"] = (float(overlap["jaccard"].iloc[0]) if len(overlap)
                                                         else float("nan"))
            else:
                numbers[f"calib_spearman_{m}_{g}"] = numbers[f"calib_jaccard_{m}_{g}_kmax"] = float("nan")
    diffs = accuracy_differences(acc, first, second)
    if diffs.empty:
        numbers.update(calib_max_acc_diff=float("nan"), calib_max_acc_diff_se=float("nan"), calib_beyond_2se=0,
                       calib_settings=0, calib_same_blocks=0, calib_verdict="not measured")
        return numbers
    worst = diffs.loc[diffs["difference"].abs().idxmax()]
    beyond = int((diffs["difference"].abs() > 2 * diffs["stderr"].fillna(0)).sum())
    numbers.update(calib_max_acc_diff=100 * abs(float(worst["difference"])),
                   calib_max_acc_diff_se=100 * float(worst["stderr"]), calib_beyond_2se=beyond,
                   calib_settings=len(diffs), calib_same_blocks=int(diffs["same_blocks"].sum()),
                   calib_verdict=("barely changes: every difference within 2 s.e." if beyond == 0 else
                                  f"changes beyond 2 s.e. in {beyond} of {len(diffs)} settings"))
    return numbers


def speed_numbers(speed: pd.DataFrame) -> dict[str, Any]:
    """Speed numbers at the largest measured K per granularity ``g`` (attn/layer) and phase ``p``
    (prefill/decode): ``{g}_{p}_speedup`` (measured), ``{g}_{p}_expected`` (FLOPs), ``{g}_{p}_efficiency``
    (share of the FLOP-proportional gain), ``{g}_{p}_verdict``; ``{g}_kv_cache_ratio`` (KV cache held,
    pruned / dense), ``{g}_params_ratio``, ``speed_k_max``, ``speed_device``."""
    k_max = int(speed["K"].max())
    numbers: dict[str, Any] = {"speed_k_max": k_max, "speed_device": str(speed["device"].iloc[0])}
    for g in STANDARD_GRANULARITIES:
        rows = speed[(speed["granularity"] == g) & (speed["K"] == k_max)]
        dense = speed[(speed["granularity"] == g) & (speed["K"] == 0)]
        for p in ("prefill", "decode"):
            measured = float(rows[f"measured_speedup_{p}"].iloc[0]) if len(rows) else float("nan")
            expected = float(rows[f"expected_speedup_{p}"].iloc[0]) if len(rows) else float("nan")
            efficiency = speedup_efficiency(measured, expected)
            numbers.update({f"{g}_{p}_speedup": measured, f"{g}_{p}_expected": expected,
                            f"{g}_{p}_efficiency": efficiency, f"{g}_{p}_verdict": speed_verdict(efficiency)})
        numbers[f"{g}_kv_cache_ratio"] = float(rows["kv_cache_ratio"].iloc[0]) if len(rows) else float("nan")
        numbers[f"{g}_params_ratio"] = (float(rows["params"].iloc[0] / dense["params"].iloc[0])
                                        if len(rows) and len(dense) else float("nan"))
    return numbers


# ---------------------------------------------------------------- publishing

def native(value: Any) -> Any:
    """A plain Python value for glue: numpy scalars unwrapped, None and missing as NaN for numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return float("nan")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return float(value)
    return value


def glue_values(values: Mapping[str, Any]) -> pd.DataFrame:
    """Publish ``values`` with ``myst_nb.glue`` (not displayed) and return them as a table to show."""
    from myst_nb import glue

    clean = {key: native(value) for key, value in values.items()}
    for key, value in clean.items():
        glue(key, value, display=False)
    shown = [f"{v:.6g}" if isinstance(v, float) else str(v) for v in clean.values()]
    return pd.DataFrame({"key": list(clean), "value": shown}).set_index("key")
