"""Verdicts by fixed, stated rules, so the book's summary can say whether a run supports a claim without
hard-coding numbers.

Each rule returns a :class:`Verdict`: its ``category`` (one fixed word per outcome, what tests and code
compare), the ``numbers`` it rests on, and the one-line ``text`` rendered from them (what the book
shows). The ``*_verdict`` functions return that text alone, for glue.
"""

from __future__ import annotations

import math
import numbers as _numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from companion.method.orders import compression_stage

NOT_MEASURED = "not measured"  # the text of every verdict (and glued value) whose inputs are missing
UNKNOWN = "unknown"  # the category of such a verdict


@dataclass(frozen=True)
class Verdict:
    """The outcome of one rule: ``category``, the ``numbers`` it rests on, and its sentence ``text``."""

    category: str
    text: str
    numbers: Mapping[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


def is_missing(value: Any) -> bool:
    """True for ``None`` and NaN (a value a run did not measure)."""
    return value is None or (isinstance(value, _numbers.Real) and math.isnan(value))


# ---------------------------------------------------------------- entropy profiles

def two_stage(profile: Sequence[float]) -> Verdict:
    """Whether an entropy profile (L+1 boundary values) falls first and then rises to above its minimum.

    Categories: ``two_stage`` (falls, then rises), ``falls_only`` (falls, does not rise again),
    ``no_compression`` (does not fall at first); numbers ``stage`` (layers in the compression stage,
    :func:`companion.method.orders.compression_stage`) and ``rise`` (last boundary minus the stage's end).
    """
    stage = compression_stage(list(profile))
    rise = float(profile[-1] - profile[stage])
    numbers = {"stage": stage, "rise": rise}
    if stage == 0:
        text = "no compression stage: entropy does not fall at first" + ("" if rise > 0 else " and does not rise")
        return Verdict("no_compression", text, numbers)
    if rise <= 0:
        return Verdict("falls_only", f"falls over the first {stage} layers but does not rise again", numbers)
    return Verdict("two_stage", f"two-stage: falls over the first {stage} layers, then rises", numbers)


def two_stage_verdict(profile: Sequence[float]) -> str:
    """The text of :func:`two_stage`."""
    return two_stage(profile).text


def noise(spread: float, sem: float, std: float) -> Verdict:
    """Whether an across-layer spread stands out of the per-window noise (``sem``: the largest standard
    error of a boundary's mean; ``std``: the typical std over windows).

    Categories: ``within_noise`` (spread below 2 standard errors), ``on_average`` (above them, below one
    window's std), ``stands_out`` (above one window's std), ``unknown`` (an input missing).
    """
    if is_missing(spread) or is_missing(sem) or is_missing(std):
        return Verdict(UNKNOWN, "cannot tell")
    numbers = {"spread": spread, "two_sem": 2 * sem, "std": std}
    if spread < 2 * sem:
        return Verdict("within_noise", f"no: the across-layer spread ({spread:.3g}) is below 2 standard errors "
                                       f"({2 * sem:.3g})", numbers)
    if spread < std:
        return Verdict("on_average", f"only on average: the spread ({spread:.3g}) exceeds 2 standard errors "
                                     f"({2 * sem:.3g}) but not one window's std ({std:.3g})", numbers)
    return Verdict("stands_out", f"yes: the spread ({spread:.3g}) exceeds one window's std ({std:.3g})", numbers)


def noise_verdict(spread: float, sem: float, std: float) -> str:
    """The text of :func:`noise`."""
    return noise(spread, sem, std).text


def trend(rho: float, p: float, alpha: float = 0.05) -> Verdict:
    """A negative depth trend described by its Spearman ρ and p-value (significant if p < alpha).

    Categories: ``falls`` (ρ < 0, p < alpha), ``weak`` (ρ < 0, not significant), ``no`` (ρ ≥ 0),
    ``unknown``.
    """
    if is_missing(rho) or is_missing(p):
        return Verdict(UNKNOWN, NOT_MEASURED)
    numbers = {"rho": rho, "p": p, "alpha": alpha}
    if rho < 0 and p < alpha:
        return Verdict("falls", f"yes: ΔH falls with depth (p < {alpha:g})", numbers)
    if rho < 0:
        return Verdict("weak", "weak: ΔH tends to fall with depth, not significant", numbers)
    return Verdict("no", "no: ΔH does not fall with depth", numbers)


def trend_verdict(rho: float, p: float, alpha: float = 0.05) -> str:
    """The text of :func:`trend`."""
    return trend(rho, p, alpha).text


# ---------------------------------------------------------------- rankings and speed

def ranked(values: Mapping[str, float]) -> list[str]:
    """Names sorted by value, best first (ties keep the given order; missing values left out)."""
    ordered = sorted(((v, k) for k, v in values.items() if not is_missing(v)), key=lambda t: -t[0])
    return [k for _, k in ordered]


def ranking(values: Mapping[str, float]) -> str:
    """:func:`ranked` as text: ``"bucket > knn > renyi"`` (``NOT_MEASURED`` if nothing was)."""
    return " > ".join(ranked(values)) or NOT_MEASURED


def speed(efficiency: float, good: float = 0.8, above: float = 1.2) -> Verdict:
    """Whether a measured speedup realises most (≥ ``good``) of its FLOP-proportional gain, or more
    (≥ ``above``); ``efficiency`` is the share realised (see ``tables.speedup_efficiency``).

    Categories: ``beyond``, ``near_linear``, ``sub_linear``, ``none`` (no gain), ``unknown``.
    """
    if is_missing(efficiency):
        return Verdict(UNKNOWN, NOT_MEASURED)
    numbers = {"efficiency": efficiency, "good": good, "above": above}
    if efficiency >= above:
        return Verdict("beyond", "beyond the FLOP-proportional gain", numbers)
    if efficiency >= good:
        return Verdict("near_linear", f"near-linear: ≥ {good:.0%} of the FLOP-proportional gain", numbers)
    if efficiency > 0:
        return Verdict("sub_linear", f"sub-linear: {efficiency:.0%} of the FLOP-proportional gain", numbers)
    return Verdict("none", "no measurable speedup", numbers)


def speed_verdict(efficiency: float, good: float = 0.8, above: float = 1.2) -> str:
    """The text of :func:`speed`."""
    return speed(efficiency, good, above).text


# ---------------------------------------------------------------- paired comparisons, counted

def calibration_change(changed: int, settings: int, largest: float, ci_low: float, ci_high: float,
                       significance: float = 0.05) -> Verdict:
    """Whether a second calibration set changed the accuracy of the prunings: ``changed`` of ``settings``
    paired comparisons (exact McNemar, Holm-adjusted p < ``significance``); ``largest`` is the largest
    difference in points, with its 95 % CI.

    Categories: ``changed`` (at least one setting), ``unchanged``, ``unknown`` (no settings).
    """
    if not settings:
        return Verdict(UNKNOWN, NOT_MEASURED)
    numbers = {"changed": changed, "settings": settings, "largest": largest, "ci_low": ci_low, "ci_high": ci_high}
    if changed:
        return Verdict("changed", f"changes detected in {changed} of {settings} settings (exact McNemar, "
                                  f"Holm-adjusted p < {significance:g})", numbers)
    return Verdict("unchanged", f"no change detected in any of {settings} settings (exact McNemar, Holm-adjusted); "
                                f"the largest difference is {largest:+.1f} points (95 % CI {ci_low:.1f} to "
                                f"{ci_high:.1f})", numbers)


def retention_headline(low: float, high: float, threshold: float) -> Verdict:
    """Whether the 95 % CI ``low``–``high`` of a retention (% of the dense accuracy) lies above
    ``threshold`` % (the paper's headline).

    Categories: ``reached`` (CI above), ``not_reached`` (CI below), ``undecided`` (CI contains it).
    """
    numbers = {"ci_low": low, "ci_high": high, "threshold": threshold}
    interval = f"the 95 % CI of the retention ({low:.1f} to {high:.1f} %)"
    if low >= threshold:
        return Verdict("reached", f"reached: {interval} is above {threshold:g} %", numbers)
    if high < threshold:
        return Verdict("not_reached", f"not reached: {interval} is below {threshold:g} %", numbers)
    return Verdict("undecided", f"cannot tell: {interval} contains {threshold:g} %", numbers)


def curve(name_a: str, name_b: str, ahead_a: int, ahead_b: int, ks: int) -> Verdict:
    """How many of the ``ks`` drop counts of a curve criterion ``a`` and criterion ``b`` are ahead at
    (exact McNemar, Holm-adjusted over the K, p < 0.05).

    Categories: ``a_ahead`` (a ahead somewhere, b nowhere), ``b_ahead``, ``mixed`` (both somewhere),
    ``no_difference``, ``unknown`` (no K).
    """
    if not ks:
        return Verdict(UNKNOWN, NOT_MEASURED)
    numbers = {"ahead_a": ahead_a, "ahead_b": ahead_b, "ks": ks}
    category = ("mixed" if ahead_a and ahead_b else "a_ahead" if ahead_a else "b_ahead" if ahead_b
                else "no_difference")
    return Verdict(category, f"{name_a} ahead at {ahead_a}, {name_b} at {ahead_b}, no detectable difference at "
                             f"{ks - ahead_a - ahead_b} of {ks} K (exact McNemar, Holm-adjusted over the K, p < 0.05)",
                   numbers)
