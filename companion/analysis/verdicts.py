"""One-line verdicts by fixed, stated rules, so the book's summary can say whether a run supports a
claim without hard-coding numbers."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from companion.method.orders import compression_stage


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, numbers.Real) and math.isnan(value))

def two_stage_verdict(profile: Sequence[float]) -> str:
    """Whether an entropy profile (L+1 boundary values) falls first and then rises to above its minimum."""
    stage = compression_stage(list(profile))
    rises = profile[-1] > profile[stage]
    if stage == 0:
        return "no compression stage: entropy does not fall at first" + ("" if rises else " and does not rise")
    if not rises:
        return f"falls over the first {stage} layers but does not rise again"
    return f"two-stage: falls over the first {stage} layers, then rises"


def noise_verdict(spread: float, sem: float, std: float) -> str:
    """Whether an across-layer spread stands out of the per-window noise (``sem``: the largest standard
    error of a boundary's mean; ``std``: the typical std over windows), in one line."""
    if _missing(spread) or _missing(sem) or _missing(std):
        return "cannot tell"
    if spread < 2 * sem:
        return f"no: the across-layer spread ({spread:.3g}) is below 2 standard errors ({2 * sem:.3g})"
    if spread < std:
        return (f"only on average: the spread ({spread:.3g}) exceeds 2 standard errors ({2 * sem:.3g}) "
                f"but not one window's std ({std:.3g})")
    return f"yes: the spread ({spread:.3g}) exceeds one window's std ({std:.3g})"


def trend_verdict(rho: float, p: float, alpha: float = 0.05) -> str:
    """A negative depth trend described by its Spearman ρ and p-value (significant if p < alpha)."""
    if _missing(rho) or _missing(p):
        return "not measured"
    if rho < 0 and p < alpha:
        return f"yes: ΔH falls with depth (p < {alpha:g})"
    if rho < 0:
        return "weak: ΔH tends to fall with depth, not significant"
    return "no: ΔH does not fall with depth"


def ranking(values: Mapping[str, float]) -> str:
    """Names sorted by value, best first: ``"bucket > knn > renyi"`` (NaN values left out)."""
    ordered = sorted(((v, k) for k, v in values.items() if not _missing(v)), key=lambda t: -t[0])
    return " > ".join(k for _, k in ordered) or "not measured"


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


