"""The criterion registry: every way of ranking blocks for removal, with what it needs and how it looks.

One :class:`Criterion` per name, in the spirit of lm-eval's task registry: adding a criterion is one
:func:`register` call here plus its function. Everything that lists, validates, labels or colours
criteria (the command line's choices and ``--help``, the configuration's checks, scoring, drop orders,
figure styles, verdict labels) reads this registry. The module imports no torch, so the analysis can
read labels and styles; a criterion's function is named by its import path and loaded only to compute.

What a criterion needs (``needs``) decides how scoring calls its function:

- ``hidden``: the one hooked forward pass. An ``entropy`` criterion maps one point's hidden states
  (samples, tokens, dim) to one value per sample, and a block's score is ΔH = H(out) − H(in); a
  ``similarity`` criterion maps a block's input and output to one value per sample.
- ``forward``: its own forward passes; ``gradients``: its own forward and backward passes. The function
  is called as ``fn(model, input_ids, granularity, candidates, **params)`` with the calibration windows
  and the prunable blocks, and returns the blocks' scores with what they cost (see
  :func:`companion.method.scoring.own_pass_blocks`).
- ``none``: a baseline whose order needs no model (``random:<seed>``, ``last``).

Every criterion drops the blocks with the **lowest** values first unless ``drop_first`` says
``highest``; ties go by layer index.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from companion.errors import CompanionError
from companion.names import LAST, RANDOM, random_seed

Needs = Literal["hidden", "forward", "gradients", "none"]
Kind = Literal["entropy", "similarity", "removal", "baseline"]
Role = Literal["paper", "rival", "diagnostic", "baseline"]


@dataclass(frozen=True)
class Criterion:
    """One block-ranking criterion.

    - ``name``: what users type (``--methods knn,cosine``); ``label`` and ``short``: how figures and
      verdict sentences name it.
    - ``kind`` and ``needs``: what it measures and what scoring must give it (see the module docstring).
    - ``function``: ``"module:attribute"`` of the function that computes it (``None`` for baselines).
    - ``params``: its parameters and their defaults; ``params_of``: another criterion whose parameters it
      takes when it has none of its own (a diagnostic variant takes its paper estimator's ``k`` or ``bins``).
    - ``role``: ``paper`` (the paper's estimators and baseline), ``rival`` (the field's other criteria),
      ``diagnostic`` (ours, never a pruning criterion unless asked for) or ``baseline`` (null references).
    - ``drop_first``: whether the ``lowest`` or the ``highest`` values are dropped first.
    - ``color`` and ``marker``: its style in every figure.
    """

    name: str
    label: str
    kind: Kind
    needs: Needs
    function: str | None
    params: Mapping[str, Any] = field(default_factory=dict)
    params_of: str | None = None
    role: Role = "paper"
    drop_first: Literal["lowest", "highest"] = "lowest"
    short: str = ""
    color: str = "0.3"
    marker: str = "o"
    description: str = ""

    def __post_init__(self) -> None:
        if self.drop_first not in ("lowest", "highest"):
            raise CompanionError(f"criterion {self.name}: drop_first must be 'lowest' or 'highest'")
        if (self.function is None) != (self.needs == "none"):
            raise CompanionError(f"criterion {self.name}: a function is needed exactly when it needs a model")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def load(self) -> Callable[..., Any]:
        """The function that computes the criterion (imported now, so torch is loaded only to compute)."""
        if self.function is None:
            raise CompanionError(f"criterion '{self.name}' is a baseline: it has no function to compute")
        module, _, attribute = self.function.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def bind(self, **params: Any) -> Callable[..., Any]:
        """The function with ``params`` bound, checked against its signature (one-line error otherwise)."""
        fn = self.load()
        try:
            inspect.signature(fn).bind_partial(**params)
        except TypeError as err:
            raise CompanionError(f"bad parameters for criterion '{self.name}': {err}") from None
        return functools.partial(fn, **params)

    @property
    def one_pass(self) -> bool:
        """Whether the criterion is computed from the one hooked forward pass."""
        return self.needs == "hidden"


CRITERIA: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    """Add ``criterion`` to the registry (a name can be registered once)."""
    if criterion.name in CRITERIA:
        raise CompanionError(f"criterion '{criterion.name}' is registered already")
    CRITERIA[criterion.name] = criterion
    return criterion


def unregister(name: str) -> None:
    """Remove a criterion (for tests and plug-ins that register one temporarily)."""
    CRITERIA.pop(name, None)


def get(name: str) -> Criterion:
    """The criterion called ``name``; a seeded random baseline ``random:<seed>`` is ``random``.

    A name that is not registered is a one-line error listing the registered ones.
    """
    base = RANDOM if random_seed(name) is not None else name
    if base not in CRITERIA:
        raise CompanionError(f"unknown criterion '{name}'; choose from {', '.join(CRITERIA)}")
    return CRITERIA[base]


def names(*, kind: str | None = None, role: str | None = None, needs: str | None = None,
          exclude_role: str | None = None) -> tuple[str, ...]:
    """Registered names in registration order, filtered by ``kind``, ``role`` and ``needs``."""
    return tuple(c.name for c in CRITERIA.values()
                 if (kind is None or c.kind == kind) and (role is None or c.role == role)
                 and (needs is None or c.needs == needs) and (exclude_role is None or c.role != exclude_role))


def scored() -> tuple[str, ...]:
    """Every criterion a scoring pass can compute (all but the baselines), in registration order."""
    return tuple(c.name for c in CRITERIA.values() if c.needs != "none")


def check(methods: list[str] | tuple[str, ...], what: str = "criterion") -> None:
    """A one-line error for the first name in ``methods`` that is not a registered criterion."""
    for method in methods:
        if method.split(":")[0] not in CRITERIA:
            raise CompanionError(f"unknown {what} '{method}'; choose from {', '.join(CRITERIA)}")


def label(name: str) -> str:
    """How figures and verdicts name a criterion (a seed of ``random`` keeps its seed)."""
    base = name.split(":")[0]
    if base not in CRITERIA:
        return name
    if random_seed(name) is not None:
        return f"random (seed {random_seed(name)})"
    return CRITERIA[base].label


def short(name: str) -> str:
    """The short name of a criterion in verdict sentences."""
    criterion = CRITERIA.get(name.split(":")[0])
    return (criterion.short or criterion.name) if criterion else name


def style(name: str) -> tuple[str, str]:
    """The colour and marker of a criterion in every figure."""
    criterion = CRITERIA.get(name.split(":")[0])
    return (criterion.color, criterion.marker) if criterion else ("0.3", "o")


def help_text(selection: tuple[str, ...] | None = None) -> str:
    """``name (label)`` for each criterion of ``selection`` (default: all), for ``--help``."""
    return ", ".join(f"{n} ({CRITERIA[n].label})" for n in (selection or tuple(CRITERIA)))


_ESTIMATORS = "companion.method.estimators"

# The paper's entropy estimators, ours, and the similarity criteria: all from the one hooked pass.
register(Criterion("knn", "KNN entropy", "entropy", "hidden", f"{_ESTIMATORS}:knn", {"k": 25}, short="KNN",
                   color="#0072B2", marker="o", description="Kozachenko–Leonenko entropy, ΔH across the block"))
register(Criterion("bucket", "Bucket entropy", "entropy", "hidden", f"{_ESTIMATORS}:bucket", {"bins": 80},
                   short="bucket", color="#009E73", marker="s",
                   description="per-dimension histogram entropy, ΔH across the block"))
register(Criterion("renyi", "Rényi entropy", "entropy", "hidden", f"{_ESTIMATORS}:renyi", {"alpha": 4.0},
                   short="Rényi", color="#CC79A7", marker="^",
                   description="kernel Rényi entropy of order α, ΔH across the block"))
register(Criterion("knn_unit", "Scale-free KNN entropy (ours, not the paper's)", "entropy", "hidden",
                   f"{_ESTIMATORS}:knn_unit", params_of="knn", role="diagnostic", short="scale-free KNN",
                   color="#56B4E9", marker="x", description="KNN on tokens divided by their RMS norm"))
register(Criterion("bucket_mm", "Bucket entropy, Miller–Madow (ours, not the paper's)", "entropy", "hidden",
                   f"{_ESTIMATORS}:bucket_mm", params_of="bucket", role="diagnostic", short="Miller–Madow bucket",
                   color="#7FCDBB", marker="P", description="Bucket with the Miller–Madow bias correction"))
register(Criterion("cosine", "Cosine (1 − cos)", "similarity", "hidden", f"{_ESTIMATORS}:cosine", short="cosine",
                   color="#D55E00", marker="D", description="LLM-Drop / ShortGPT: 1 − mean cos(X, Y)"))
register(Criterion("angular", "Angular distance", "similarity", "hidden", f"{_ESTIMATORS}:angular",
                   role="rival", short="angular", color="#E69F00", marker="v",
                   description="Gromov et al.: mean arccos(cos(X, Y)) / π"))
# The field's criteria that remove blocks and measure what it costs, on (the first few of) the same
# calibration windows and never removing a protected layer. Shortened LLaMA scores PPL and Taylor+ on 10
# samples of 128 tokens: here 5 windows of 256 (the same 1,280 tokens). SLEB, which runs about K times
# as many passes, takes 2 windows (a CPU budget: its paper calibrates on far more).
_REMOVAL = "companion.method.removal"
register(Criterion("ppl", "Perplexity increase (Shortened LLaMA)", "removal", "forward", f"{_REMOVAL}:ppl",
                   {"windows": 5}, role="rival", short="PPL", color="#8C564B", marker="h",
                   description="calibration NLL increase when the block alone is removed"))
register(Criterion("sleb", "Iterative removal (SLEB)", "removal", "forward", f"{_REMOVAL}:sleb",
                   {"windows": 2, "k_max": None}, role="rival", short="SLEB", color="#9467BD", marker="p",
                   description="removes, step by step, the block whose removal raises calibration NLL least"))
register(Criterion("taylor", "Taylor+ (Shortened LLaMA)", "removal", "gradients", f"{_REMOVAL}:taylor",
                   {"windows": 5}, role="rival", short="Taylor+", color="#BCBD22", marker="*",
                   description="Σ |W ⊙ ∂L/∂W| over the block's weights on the calibration windows"))
# Null references: orders that need no model.
register(Criterion(RANDOM, "random drop sets (baseline)", "baseline", "none", None, role="baseline",
                   short="random drop sets", color="0.55", marker=".",
                   description="a seeded random order of the prunable blocks"))
register(Criterion(LAST, "last K (baseline)", "baseline", "none", None, role="baseline", short="last K",
                   color="0.35", marker=".", description="the last prunable blocks first (reverse order)"))
