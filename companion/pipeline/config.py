"""One typed run configuration, the named profiles as instances of it, and the one resolver.

A :class:`RunConfig` holds every setting of a run, each default stated once (the field's default or the
profile's value), and is validated when it is built: a bad value is a one-line
:class:`~companion.errors.CompanionError`. :func:`resolve` is the only place that turns a profile plus
what the user stated (command-line flags, Make variables, notebook parameters) into a configuration;
the command line, ``make reproduce`` and every notebook go through it, so they run the same settings.

Profiles: ``smoke`` (CI, minutes), ``default`` (both embedded models on a laptop CPU) and ``paper`` (the
paper's models and setup on a GPU). ``paper`` follows the released EntroDrop code: fp16, layers 0, 1
and the last protected for every criterion, calibration on C4 *train* shard 0 (``c4:train``, read from
the Hub only: offline, choose e.g. ``--calibration c4,wikitext2``), 128 × 256 tokens, seed 2024,
K = 4, 8, 12, 16. It departs in naming two tasks the paper counts but does not name
(``GUESSED_PAPER_TASKS``), in WikiText-2 as its second calibration set and in adding K = 0.

``default`` spends a 2-core CPU's two hours where they decide the claims, in the issue's order of
targets: first the dense model and ``primary_methods`` at the headline K (the K closest to 37.5 % of the
layers) on ``primary_limit`` examples per task, sized so that the 95 % interval of the primary
comparison is at most ±3 points (projected from an earlier run's disagreement rates); then the
criteria the curves need, the yardstick, and the curves themselves (``curve_methods``, last-K and the
random drop sets at six K up to the headline one, dense at small K) on ``limit`` examples per task,
the other criteria of the league at the headline K on the same examples, perplexity on 16 windows of
128 tokens at every K, and the second calibration set for the primary criteria at the headline K.
The curves get what the budget leaves (``models_overrides`` gives Gemma-3-270M, whose 262k-token LM
head makes every example about twice as costly, fewer): their per-point intervals are wider than the
±5 points a reader would want, and the book says so and shows the verdicts pooled over K beside them.

What the user states explicitly wins over the profile:

- a ``limit`` bounds every evaluation of the run (examples, perplexity windows, timed speed repeats):
  the primary tier's larger sizes are dropped;
- explicit drop counts replace the profile's fractions;
- explicit criteria restrict the profile's curve and primary criteria to them;
- the additions of a profile (the primary tier, the baselines, extra calibration sets and K) are made
  only when the user chose the profile (``profile=None`` takes the ``default`` profile's plain
  settings without them); :func:`additions` says in words what the chosen profile adds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from companion.errors import CompanionError
from companion.experiments import EVAL_BATCH_SIZE
from companion.hub import DATA_SOURCES
from companion.method import criteria
from companion.names import GRANULARITIES, GUESSED_PAPER_TASKS, PAPER_TASKS, PERPLEXITY_TASK, baseline_names

DEFAULT_PROFILE = "default"
SPEED_BATCH_SIZE = 1
SPEED_WARMUP = 1
# Settings that only a profile the user chose adds, with their "off" values.
ADDITIONS = {"primary_methods": (), "primary_limit": None, "primary_ppl_chunks": None, "baselines": (),
             "random_seeds": 0, "curve_methods": None}


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run. Lists are tuples; ``None`` in an optional size means "all"."""

    profile: str | None
    models: tuple[str, ...]
    calibrations: tuple[str, ...]
    tasks: tuple[str, ...]
    samples: int = 64
    seqlen: int = 256
    seed: int = 2024
    methods: tuple[str, ...] = ("knn", "bucket", "renyi", "cosine")
    granularities: tuple[str, ...] = ("attn", "layer")
    drops: tuple[int, ...] = ()
    drop_fractions: tuple[float, ...] = ()
    protect: str = "first:2,last:1"
    limit: int | None = None
    ppl_seqlen: int = 512
    ppl_chunks: int | None = None
    curve_methods: tuple[str, ...] | None = None
    primary_methods: tuple[str, ...] = ()
    primary_limit: int | None = None
    primary_ppl_chunks: int | None = None
    baselines: tuple[str, ...] = ()
    random_seeds: int = 0
    yardstick_windows: int = 16
    yardstick_seqlen: int = 256
    speed_drops: tuple[int, ...] = (0, 4, 8)
    speed_prompt: int = 256
    speed_new_tokens: int = 32
    speed_repeats: int = 3
    device: str = "auto"
    dtype: str = "auto"
    data_source: str = "auto"
    eval_batch_size: int = EVAL_BATCH_SIZE
    results_dir: Path = Path("results")
    models_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False, repr=False)
    stated: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("models_overrides", "stated"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        object.__setattr__(self, "results_dir", Path(self.results_dir))
        for name in ("samples", "seqlen", "ppl_seqlen", "speed_prompt", "speed_new_tokens", "speed_repeats",
                     "eval_batch_size", "yardstick_windows"):
            _positive(name, getattr(self, name))
        for name in ("limit", "ppl_chunks", "primary_limit", "primary_ppl_chunks"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.random_seeds < 0:
            raise CompanionError(f"random_seeds must be >= 0 (got {self.random_seeds})")
        if not self.models:
            raise CompanionError("a run needs at least one model")
        if not self.calibrations:
            raise CompanionError("a run needs at least one calibration set")
        _known("granularity", self.granularities, GRANULARITIES)
        criteria.check(list(self.methods))
        for name in ("curve_methods", "primary_methods"):
            criteria.check(list(getattr(self, name) or ()))
        _known("baseline", self.baselines, criteria.names(role="baseline"))
        _known("data source", (self.data_source,), DATA_SOURCES)
        if self.yardstick_seqlen < 2:
            raise CompanionError(f"yardstick_seqlen must be at least 2 (got {self.yardstick_seqlen})")
        if any(k < 0 for k in (*self.drops, *self.speed_drops)):
            raise CompanionError("drop counts must be >= 0")
        if any(not 0 < f < 1 for f in self.drop_fractions):
            raise CompanionError("drop fractions must lie between 0 and 1")
        if not re.fullmatch(r"auto|none|((first|last):\d+|\d+)(,((first|last):\d+|\d+))*", self.protect):
            raise CompanionError(f"bad protect rule '{self.protect}': use auto, none, or e.g. first:2,last:1 or 0,1,17")

    @property
    def baseline_names(self) -> list[str]:
        """The baseline orders, ``random:0`` … ``random:<seeds-1>`` and ``last``, as chosen."""
        return baseline_names(self.baselines, self.random_seeds)

    def for_model(self, model: str) -> RunConfig:
        """The configuration of one of the run's models: the profile's ``models_overrides`` for it, under
        what the user stated."""
        return resolve(self.profile, self.stated, model=model)

    def summary(self) -> str:
        """The resolved configuration, one ``name: value`` line per field (what plans and notebooks record)."""
        lines = []
        for f in fields(self):
            if f.name in ("models_overrides", "stated"):
                continue
            value = getattr(self, f.name)
            shown = ", ".join(map(str, value)) if isinstance(value, tuple) else value
            if value is None:
                shown = _NONE_MEANS.get(f.name, "all")
            mark = " (stated)" if f.name in self.stated else ""
            lines.append(f"  {f.name}: {shown}{mark}")
        return "configuration:\n" + "\n".join(lines)


_NONE_MEANS = {"profile": "none (only what was stated)", "primary_limit": "none (no primary tier)",
               "primary_ppl_chunks": "none (no primary tier)", "curve_methods": "every criterion"}


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CompanionError(f"{name} must be a positive integer (got {value!r})")


def _known(what: str, values: Iterable[str], known: Iterable[str]) -> None:
    known = tuple(known)
    for value in values:
        if value not in known:
            raise CompanionError(f"unknown {what} '{value}'; choose from {', '.join(known)}")


PROFILES: dict[str, RunConfig] = {
    "smoke": RunConfig(
        profile="smoke", models=("gemma-3-270m",), calibrations=("wikitext2", "c4"), tasks=("piqa", PERPLEXITY_TASK),
        samples=8, seqlen=128, methods=("knn", "bucket", "renyi", "cosine"), drops=(0, 4), limit=8, ppl_seqlen=128,
        ppl_chunks=1, curve_methods=("knn", "cosine"), primary_methods=("knn", "cosine"),
        baselines=("random", "last"), random_seeds=2, yardstick_windows=2, yardstick_seqlen=64, speed_drops=(0, 4),
        speed_prompt=64, speed_new_tokens=4, speed_repeats=1),
    "default": RunConfig(
        profile="default", models=("gemma-3-270m", "smollm2-135m"), calibrations=("c4", "wikitext2"),
        tasks=("piqa", "arc_easy", "hellaswag", "winogrande", "lambada_openai", PERPLEXITY_TASK),
        methods=("knn", "bucket", "renyi", "cosine", "angular", "ppl", "sleb", "taylor"),
        drop_fractions=(0.05, 0.1, 0.15, 0.2, 0.28, 0.375), curve_methods=("knn", "cosine", "ppl", "sleb"),
        primary_methods=("knn", "cosine"), baselines=("random", "last"), random_seeds=5, limit=20,
        primary_limit=380, ppl_seqlen=128, ppl_chunks=16,
        models_overrides={"gemma-3-270m": {"primary_limit": 400, "limit": 8}}),
    "paper": RunConfig(
        profile="paper", models=("meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3"),
        calibrations=("c4:train", "wikitext2"), tasks=(*PAPER_TASKS, *GUESSED_PAPER_TASKS, PERPLEXITY_TASK),
        samples=128, methods=("knn", "bucket", "renyi", "cosine", "angular", "ppl", "sleb", "taylor"),
        drops=(0, 4, 8, 12, 16), ppl_seqlen=2048, baselines=("random", "last"), random_seeds=5,
        speed_drops=(0, 4, 8, 12, 16), speed_prompt=1024, speed_new_tokens=128, speed_repeats=10, dtype="float16"),
}

# What users may state, and how a stated string is read. Notebook parameters use the same names (plus
# the aliases below), as do the command line's flags (with dashes).
_LISTS = {"models", "calibrations", "tasks", "methods", "granularities", "curve_methods", "primary_methods",
          "baselines"}
_INT_LISTS = {"drops", "speed_drops"}
_ALIASES = {"model": "models", "calibration": "calibrations", "estimators": "methods", "granularity": "granularities"}


def csv_list(value: str | Iterable[object] | None) -> list[str]:
    """A comma-separated flag or parameter (or a list of values) as a list of non-empty strings."""
    if value is None or isinstance(value, str):
        return [v.strip() for v in (value or "").split(",") if v.strip()]
    return [str(v) for v in value]


def int_list(value: str | Iterable[object] | None) -> list[int]:
    """:func:`csv_list` as integers; anything else is a one-line error."""
    try:
        return [int(v) for v in csv_list(value)]
    except ValueError as exc:
        raise CompanionError(f"expected comma-separated integers, got '{value}'") from exc


def _read(name: str, value: Any) -> Any:
    """A stated value as the field's type."""
    if name in _LISTS:
        return tuple(csv_list(value))
    if name in _INT_LISTS:
        return tuple(int_list(value))
    if name == "limit":
        limit = int(value)
        if limit == 0 or limit < -1:
            raise CompanionError("limit must be positive (-1 for all examples)")
        return None if limit == -1 else limit
    if name in ("samples", "seqlen", "seed", "ppl_seqlen", "ppl_chunks", "random_seeds", "eval_batch_size",
                "yardstick_windows", "yardstick_seqlen"):
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise CompanionError(f"{name} must be an integer (got {value!r})") from exc
    return value


def stated(values: Mapping[str, Any]) -> dict[str, Any]:
    """What a user stated, among ``values`` (flags, Make variables or notebook parameters): the names of
    :class:`RunConfig` fields (or their aliases ``model``, ``calibration``, ``estimators``) whose value is
    not ``None``, ``""`` or empty, as given."""
    known = {f.name for f in fields(RunConfig)} - {"profile", "models_overrides", "stated"}
    chosen = {}
    for name, value in values.items():
        name = _ALIASES.get(name, name)
        if name in known and value is not None and value != "" and value != [] and value != ():
            chosen[name] = value
    return chosen


def resolve(profile: str | None = None, overrides: Mapping[str, Any] | None = None,
            model: str | None = None) -> RunConfig:
    """The configuration of a run: ``profile`` (``None``: the default profile's plain settings, without
    its additions), then its ``models_overrides`` for ``model`` (default: the first model), then what the
    user stated in ``overrides`` (see :func:`stated`); validated."""
    if profile is not None and profile not in PROFILES:
        raise CompanionError(f"unknown profile '{profile}'; choose from {', '.join(PROFILES)}")
    given = stated(overrides or {})
    chosen = {name: _read(name, value) for name, value in given.items()}
    base = PROFILES[profile or DEFAULT_PROFILE]
    if profile is None:
        base = replace(base, profile=None, calibrations=base.calibrations[:1], **ADDITIONS)
    models = chosen.get("models") or base.models
    per_model = dict(base.models_overrides.get(model or models[0], {}))
    values = {**per_model, **chosen, "stated": given}
    if "limit" in chosen:  # the user's limit bounds every evaluation, perplexity windows included
        values.update(primary_limit=None, primary_ppl_chunks=None)
        chunks, limit = values.get("ppl_chunks", base.ppl_chunks), chosen["limit"]
        if limit is not None:
            values["ppl_chunks"] = limit if chunks is None else min(chunks, limit)
    if "drops" in chosen:
        values["drop_fractions"] = ()
    if "methods" in chosen:
        for name in ("curve_methods", "primary_methods"):
            given = values.get(name, getattr(base, name))
            if given is not None:
                values[name] = tuple(m for m in given if m in chosen["methods"])
    try:
        return replace(base, **values)
    except TypeError as exc:  # a value of the wrong type, e.g. a string where a number is expected
        raise CompanionError(f"bad setting: {exc}") from exc


def additions(config: RunConfig) -> list[str]:
    """What the chosen profile adds to the stated request, in words (empty without a chosen profile)."""
    if config.profile is None:
        return []
    lines = []
    if config.primary_limit and config.primary_methods:
        lines.append(f"a primary tier: the dense model and {', '.join(config.primary_methods)} at the headline K "
                     f"on {config.primary_limit} examples per task")
    if config.baseline_names:
        lines.append(f"baselines at every K: {', '.join(config.baselines)}"
                     + (f" ({config.random_seeds} seeds)" if "random" in config.baselines else ""))
    if config.drop_fractions and "drops" not in config.stated:
        lines.append(f"K at {', '.join(f'{f:g}' for f in config.drop_fractions)} of each model's layers")
    if len(config.calibrations) > 1 and "calibrations" not in config.stated:
        lines.append(f"the headline K on the second calibration set{'s' if len(config.calibrations) > 2 else ''} "
                     f"{', '.join(config.calibrations[1:])}")
    if config.curve_methods is not None:
        rest = [m for m in config.methods if m not in config.curve_methods]
        if rest:
            lines.append(f"{', '.join(rest)} at the headline K only")
    return [f"profile '{config.profile}' adds {line}" for line in lines]
