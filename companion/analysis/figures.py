"""The book's figures: one function per figure, each returning a matplotlib ``Figure``.

Figures are built without pyplot's global state (so a notebook shows each exactly once, where its cell
returns it) under one style. Every figure has axis labels, a legend where it shows more than one
series, a title and a caption line below the axes naming model, calibration set, sample counts and
evaluation limits (passed in by the caller; see :meth:`companion.pipeline.run.Run.caption`).
:func:`save_figure` writes PNG and SVG without timestamps, so reruns give identical files.
"""

from __future__ import annotations

import functools
import io
import math
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.patches
import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from companion.method import criteria
from companion.names import LAST, RANDOM

GRANULARITY_LABELS = {"attn": "attention blocks", "mlp": "MLP blocks", "layer": "whole layers"}
CALIBRATION_STYLES = ["-", "--", ":", "-."]
STYLE = {
    **sns.axes_style("whitegrid"),
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 12, "svg.hashsalt": "companion",
    "figure.dpi": 100,
}
CAPTION_SIZE = 8


def label(method: str) -> str:
    """Display name of a criterion (from the criterion registry)."""
    return criteria.label(method)


def color(method: str) -> str:
    """The colour a criterion has in every figure (from the criterion registry)."""
    return criteria.style(method)[0]


def marker(method: str) -> str:
    """The marker a criterion has in every figure (from the criterion registry)."""
    return criteria.style(method)[1]


def _styled(function):
    """Build the figure under :data:`STYLE` (rc parameters are read when artists are created)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE), warnings.catch_warnings():
            # seaborn 0.13 calls a colormap method matplotlib has marked for deprecation
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            return function(*args, **kwargs)

    return wrapper


INLINE_DPI = 80  # the notebooks' (and book's) copies: about a page wide, and small in git; save_figure writes 150


class _NotebookFigure(Figure):
    """A matplotlib figure that shows itself as a PNG in Jupyter, whatever the matplotlib backend."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=INLINE_DPI, bbox_inches="tight", metadata={"Software": None})
        return buffer.getvalue()


def _figure(nrows: int = 1, ncols: int = 1, width: float = 6.4, height: float = 4.0, **kwargs):
    fig = _NotebookFigure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _finish(fig: Figure, title: str, caption: str) -> Figure:
    """Title above, caption (wrapped to the figure width) below the axes; saved with a tight bbox."""
    fig.suptitle(title)
    if caption:
        width = max(40, int(fig.get_figwidth() * 15))
        text = "\n".join(textwrap.fill(part, width) for part in caption.split("\n"))
        fig.text(0.01, 0.0, text, ha="left", va="top", fontsize=CAPTION_SIZE, color="0.25")
    return fig


def save_figure(fig: Figure, path_stem: str | Path, dpi: int = 150) -> list[Path]:
    """Write ``path_stem.png`` (``dpi``) and ``path_stem.svg``; returns both paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    with matplotlib.rc_context({"svg.hashsalt": "companion"}):
        fig.savefig(paths[0], dpi=dpi, bbox_inches="tight", metadata={"Software": None})
        fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None, "Creator": None})
    return paths


def _k_axis(ax, ks: Sequence[int]) -> None:
    ks = sorted(set(int(k) for k in ks))
    ax.set_xticks(ks)
    ax.set_xlabel("dropped blocks K")


# ---------------------------------------------------------------- 1. entropy by depth

@_styled
def entropy_profile_figure(bands: Mapping[str, pd.DataFrame], stages: Mapping[str, int], *, title: str,
                           caption: str, normalised: bool = True, level: float = 0.95) -> Figure:
    """Entropy at every block boundary per estimator (``bands``: estimator -> boundary, mean, lo, hi),
    with the bootstrap band and a dashed line where each estimator's compression stage ends."""
    fig, axes = _figure(width=7.0, height=4.2)
    ax = axes[0, 0]
    for method, band in bands.items():
        ax.plot(band["boundary"], band["mean"], marker=marker(method), ms=3.5, color=color(method),
                label=label(method))
        ax.fill_between(band["boundary"], band["lo"], band["hi"], color=color(method), alpha=0.2, lw=0)
        if method in stages:
            ax.axvline(stages[method], color=color(method), ls="--", lw=1)
    handles, labels = ax.get_legend_handles_labels()
    handles += [matplotlib.patches.Patch(color="0.6", alpha=0.35), Line2D([], [], color="0.3", ls="--", lw=1)]
    labels += [f"{level:.0%} bootstrap band over samples", "end of compression stage"]
    ax.legend(handles, labels, loc="best")
    ax.set_xlabel("block boundary (0 = embeddings, i = output of layer i)")
    ax.set_ylabel("entropy, min–max scaled to [0, 1]" if normalised else "entropy (nats)")
    num = max(len(b) for b in bands.values())
    ax.set_xticks(range(0, num, max(1, num // 16)))
    return _finish(fig, title, caption)


def _heatmap(ax, data: pd.DataFrame, value_label: str, clip_percentile: float, ylabels: Sequence[str]) -> None:
    """A ΔH heatmap centred at zero (red adds entropy, blue removes it), its scale clipped at the
    ``clip_percentile`` percentile of the absolute ΔH so one or two extreme blocks do not wash out the rest; the
    colour bar says where it is clipped."""
    magnitude = np.abs(data.to_numpy(dtype=float))
    bound = float(np.nanpercentile(magnitude, clip_percentile)) or float(np.nanmax(magnitude)) or 1.0
    clipped = bool(np.nanmax(magnitude) > bound)
    sns.heatmap(data, ax=ax, cmap="RdBu_r", center=0, vmin=-bound, vmax=bound, linewidths=0.4, linecolor="white",
                cbar_kws={"label": value_label + (f"\nclipped at ±{bound:.3g}" if clipped else ""), "shrink": 0.9,
                          "extend": "both" if clipped else "neither"},
                yticklabels=list(ylabels))
    ax.set_xlabel("layer")
    ax.tick_params(axis="y", rotation=0)


@_styled
def delta_heatmap_figure(matrices: Mapping[str, pd.DataFrame], *, title: str, caption: str,
                         value_label: str = "ΔH (nats)", clip_percentile: float = 95) -> Figure:
    """Heatmaps of ΔH, layers across and granularities down, one panel per estimator, each on its own
    colour scale centred at zero (red adds entropy, blue removes it) and clipped at the
    ``clip_percentile`` percentile of the absolute ΔH; the colour bar says where."""
    n = len(matrices)
    num_layers = max(len(m) for m in matrices.values())
    fig, axes = _figure(n, 1, width=max(6.4, 0.32 * num_layers + 2), height=1.3 + 1.5 * n)
    for ax, (method, matrix) in zip(axes[:, 0], matrices.items()):
        data = matrix.T
        _heatmap(ax, data, value_label, clip_percentile, [GRANULARITY_LABELS.get(g, g) for g in data.index])
        ax.set_title(label(method))
        ax.set_ylabel("granularity")
    return _finish(fig, title, caption)


@_styled
def norm_profile_figure(bands: Mapping[str, pd.DataFrame], norm_band: pd.DataFrame, *, title: str, caption: str,
                        level: float = 0.95) -> Figure:
    """Entropy profiles (``bands``: estimator -> band, e.g. KNN and scale-free KNN, each min–max scaled)
    beside the RMS norm of the hidden states at every boundary (log scale), with bootstrap bands."""
    fig, axes = _figure(1, 2, width=10.0, height=4.0)
    left, right = axes[0]
    for method, band in bands.items():
        scaled = {c: (band[c] - band["mean"].min()) / (np.ptp(band["mean"]) or 1.0) for c in ("mean", "lo", "hi")}
        left.plot(band["boundary"], scaled["mean"], marker=marker(method), ms=3.5,
                  color=color(method), label=label(method))
        left.fill_between(band["boundary"], scaled["lo"], scaled["hi"], color=color(method), alpha=0.2, lw=0)
    left.set_ylabel("entropy, min–max scaled to [0, 1]")
    left.legend(loc="best", title=f"{level:.0%} bootstrap band over documents")
    right.plot(norm_band["boundary"], norm_band["mean"], marker=".", color="0.2", label="RMS norm")
    right.fill_between(norm_band["boundary"], norm_band["lo"], norm_band["hi"], color="0.5", alpha=0.25, lw=0)
    right.set_yscale("log")
    right.set_ylabel("RMS norm of the hidden states (mean over tokens)")
    for ax in (left, right):
        ax.set_xlabel("block boundary")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return _finish(fig, title, caption)


# ---------------------------------------------------------------- 2. accuracy vs pruning

def _dodge(ks: pd.Series, index: int, count: int, width: float = 0.03) -> np.ndarray:
    """K shifted sideways by a small step per series, so equal values of several series stay visible."""
    span = max(1.0, float(ks.max() - ks.min())) if len(ks) else 1.0
    return ks.to_numpy(dtype=float) + (index - (count - 1) / 2) * width * span


def _series_styles(frame: pd.DataFrame) -> dict[str, str]:
    calibrations = list(dict.fromkeys(frame["calibration"])) if "calibration" in frame else []
    return {c: CALIBRATION_STYLES[i % len(CALIBRATION_STYLES)] for i, c in enumerate(calibrations)}


@_styled
def accuracy_figure(acc: pd.DataFrame, *, methods: Sequence[str], granularities: Sequence[str], title: str,
                    caption: str, y: str = "mean", dense: float | None = None) -> Figure:
    """Mean accuracy (``y="mean"``) or retention in % of dense (``y="retention"``) against K, one panel per
    granularity, one line per method (and line style per calibration set if there are several), error
    bars of ±1 standard error, a dotted reference line for the dense model. Series are shifted sideways
    by a small step so that equal values stay visible."""
    styles = _series_styles(acc)
    several = len(styles) > 1
    fig, axes = _figure(1, len(granularities), width=4.2 * len(granularities) + 0.6, height=4.0, sharey=True)
    error = "stderr" if y == "mean" else "retention_stderr"
    series = [(m, c, ls) for m in methods for c, ls in styles.items()]
    for ax, granularity in zip(axes[0], granularities):
        for index, (method, calibration, ls) in enumerate(series):
            rows = acc[(acc["method"] == method) & (acc["granularity"] == granularity)
                       & (acc["calibration"] == calibration)].sort_values("K")
            if not rows.empty:
                ax.errorbar(_dodge(rows["K"], index, len(series)), rows[y], yerr=rows[error].fillna(0), color=color(method), ls=ls,
                            marker=marker(method), ms=4, capsize=3, lw=1.4,
                            label=label(method) + (f" ({calibration})" if several else ""))
        reference = 100.0 if y == "retention" else dense
        if reference is not None and not math.isnan(reference):
            ax.axhline(reference, color="0.2", ls=":", lw=1.2, label="dense model")
        ax.set_title(GRANULARITY_LABELS.get(granularity, granularity))
        _k_axis(ax, acc["K"])
        ax.legend(loc="lower left")
    axes[0, 0].set_ylabel("mean accuracy over tasks" if y == "mean" else "retention (% of dense accuracy)")
    return _finish(fig, title, caption)


@_styled
def evidence_figure(acc: pd.DataFrame, band: pd.DataFrame, *, methods: Sequence[str], granularities: Sequence[str],
                    title: str, caption: str, y: str = "mean") -> Figure:
    """Accuracy (``y="mean"``) or retention above chance (``y="chance_retention"``) against K: one row of
    panels per model, one panel per granularity; criteria with ±1 s.e. error bars, the ``last`` baseline
    dashed, the random drop sets as their mean over seeds with the range of the seeds shaded
    (``band``: :func:`companion.analysis.tables.random_band` of the same column), and reference lines
    for the dense model and chance."""
    models = list(dict.fromkeys(acc["model"]))
    fig, axes = _figure(len(models), len(granularities), width=4.2 * len(granularities) + 0.6,
                        height=3.4 * len(models) + 0.6, sharey=y != "mean")
    error = {"mean": "stderr"}.get(y)
    for row, model in enumerate(models):
        for col, granularity in enumerate(granularities):
            ax = axes[row, col]
            here = acc[(acc["model"] == model) & (acc["granularity"] == granularity)]
            seeds = band[(band["model"] == model) & (band["granularity"] == granularity)].sort_values("K")
            if len(seeds):
                ax.fill_between(seeds["K"], seeds["min"], seeds["max"], color=color(RANDOM), alpha=0.25, lw=0)
                ax.plot(seeds["K"], seeds["mean"], color=color(RANDOM), lw=1.4, marker=".",
                        label=f"{label('random')}: mean and range of {int(seeds['seeds'].max())} seeds")
            for index, method in enumerate(dict.fromkeys([*methods, LAST])):
                rows = here[here["method"] == method].sort_values("K")
                if rows.empty:
                    continue
                ax.errorbar(_dodge(rows["K"], index, len(methods) + 1), rows[y],
                            yerr=rows[error].fillna(0) if error else None, color=color(method),
                            ls="--" if method == LAST else "-", marker=marker(method), ms=4,
                            capsize=3 if error else 0, lw=1.4, label=label(method))
            dense = here.loc[here["K"] == 0, y]
            reference = 100.0 if y != "mean" else (float(dense.iloc[0]) if len(dense) else math.nan)
            floor = 0.0 if y != "mean" else float(here["chance"].iloc[0]) if len(here) else math.nan
            ax.axhline(reference, color="0.2", ls=":", lw=1.2, label="dense model")
            ax.axhline(floor, color="#B22222", ls="-.", lw=1.0, label="chance")
            ax.set_title(f"{model}: {GRANULARITY_LABELS.get(granularity, granularity)}")
            _k_axis(ax, here["K"])
            if row == 0 and col == 0:
                ax.legend(loc="best", fontsize=7.5)
        axes[row, 0].set_ylabel("mean accuracy over tasks" if y == "mean"
                                else "retention above chance (% of dense − chance)")
    return _finish(fig, title, caption)


@_styled
def task_figure(tasks: pd.DataFrame, *, methods: Sequence[str], granularities: Sequence[str], title: str,
                caption: str) -> Figure:
    """Small multiples: accuracy of each task (columns) against K per granularity (rows), ±1 s.e."""
    names = sorted(tasks["task"].unique())
    fig, axes = _figure(len(granularities), len(names), width=max(4.5, 2.6 * len(names) + 0.8),
                        height=2.4 * len(granularities) + 0.8, sharex=True)
    for row, granularity in enumerate(granularities):
        for col, task in enumerate(names):
            ax = axes[row, col]
            for index, method in enumerate(methods):
                rows = tasks[(tasks["method"] == method) & (tasks["granularity"] == granularity)
                             & (tasks["task"] == task)].sort_values("K")
                if not rows.empty:
                    ax.errorbar(_dodge(rows["K"], index, len(methods)), rows["value"], yerr=rows["stderr"].fillna(0), color=color(method),
                                marker=marker(method), ms=3, capsize=2, lw=1.2, label=label(method))
            metric = tasks.loc[tasks["task"] == task, "metric"].iloc[0]
            ax.set_title(f"{task} ({GRANULARITY_LABELS.get(granularity, granularity)})", fontsize=9)
            ax.set_ylabel(metric, fontsize=8)
            _k_axis(ax, tasks["K"])
            if row < len(granularities) - 1:
                ax.set_xlabel("")
    handles = [Line2D([], [], color=color(m), marker=marker(m), label=label(m)) for m in methods]
    axes[0, 0].legend(handles=handles, loc="best")
    return _finish(fig, title, caption)


@_styled
def perplexity_figure(ppl: pd.DataFrame, *, methods: Sequence[str], granularities: Sequence[str], title: str,
                      caption: str) -> Figure:
    """WikiText-2 perplexity against K (log scale), one panel per granularity, one line per method."""
    fig, axes = _figure(1, len(granularities), width=4.2 * len(granularities) + 0.6, height=3.8, sharey=True)
    for ax, granularity in zip(axes[0], granularities):
        for method in methods:
            rows = ppl[(ppl["method"] == method) & (ppl["granularity"] == granularity)].sort_values("K")
            if not rows.empty:
                ax.plot(rows["K"], rows["perplexity"], color=color(method), marker=marker(method),
                        ms=4, lw=1.4, label=label(method))
        dense = ppl.loc[ppl["K"] == 0, "perplexity"]
        if len(dense):
            ax.axhline(float(dense.iloc[0]), color="0.2", ls=":", lw=1.2, label="dense model")
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on wide ranges
        ax.set_title(GRANULARITY_LABELS.get(granularity, granularity))
        _k_axis(ax, ppl["K"])
        ax.legend(loc="upper left")
    axes[0, 0].set_ylabel("WikiText-2 perplexity (log scale)")
    return _finish(fig, title, caption)


# ---------------------------------------------------------------- 3. entropy vs cosine

@_styled
def scatter_figure(pairs: pd.DataFrame, correlations: Mapping[str, Mapping[str, float]], *, x_label: str,
                   y_label: str, title: str, caption: str, protected: Sequence[int] = ()) -> Figure:
    """Per-block scatter of two scores (``pairs``: layer, granularity, x, y), one panel per granularity,
    points labelled by layer, Spearman ρ and Kendall τ in each panel's title; ``protected`` layers (the
    entropy criterion's compression stage, never dropped) are drawn hollow."""
    granularities = list(dict.fromkeys(pairs["granularity"]))
    fig, axes = _figure(1, len(granularities), width=4.2 * len(granularities) + 0.4, height=4.0)
    for ax, granularity in zip(axes[0], granularities):
        rows = pairs[pairs["granularity"] == granularity]
        kept = rows[~rows["layer"].isin(protected)]
        held = rows[rows["layer"].isin(protected)]
        ax.scatter(kept["x"], kept["y"], s=28, color=color("knn"), label="prunable block")
        if len(held):
            ax.scatter(held["x"], held["y"], s=28, facecolors="none", edgecolors=color("knn"),
                       label="compression stage (protected)")
        for _, row in rows.iterrows():
            ax.annotate(str(int(row["layer"])), (row["x"], row["y"]), xytext=(3, 2), textcoords="offset points",
                        fontsize=7, color="0.3")
        c = correlations.get(granularity, {})
        ax.set_title(f"{GRANULARITY_LABELS.get(granularity, granularity)}\n"
                     f"Spearman ρ = {c.get('spearman', float('nan')):.2f}, Kendall τ = {c.get('kendall', float('nan')):.2f}",
                     fontsize=10)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.legend(loc="best")
    return _finish(fig, title, caption)


@_styled
def overlap_figure(overlaps: Mapping[str, pd.DataFrame], *, title: str, caption: str,
                   marked: Sequence[int] = ()) -> Figure:
    """Jaccard overlap of the K-block drop sets of two criteria against K, one line per granularity;
    ``marked`` K (the sweep's drop counts) are highlighted."""
    fig, axes = _figure(width=6.4, height=3.8)
    ax = axes[0, 0]
    markers = {"attn": "o", "mlp": "s", "layer": "^"}
    for granularity, table in overlaps.items():
        line, = ax.plot(table["K"], table["jaccard"], marker=markers.get(granularity, "o"), ms=4, lw=1.4,
                        label=GRANULARITY_LABELS.get(granularity, granularity))
        hit = table[table["K"].isin(marked)]
        ax.scatter(hit["K"], hit["jaccard"], s=80, facecolors="none", edgecolors=line.get_color(), lw=1.5)
    ax.scatter([], [], s=80, facecolors="none", edgecolors="0.3", label="K evaluated in the sweep")
    ax.set_ylim(-0.03, 1.03)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("dropped blocks K")
    ax.set_ylabel("Jaccard overlap |A ∩ B| / |A ∪ B|")
    ax.legend(loc="lower right")
    return _finish(fig, title, caption)


# ---------------------------------------------------------------- 4. estimators

@_styled
def rank_heatmap_figure(ranks: Mapping[str, pd.DataFrame], *, title: str, caption: str) -> Figure:
    """Each layer's position in each method's drop order (1 = dropped first; blank = protected), one
    panel per granularity, layers across and methods down."""
    n = len(ranks)
    num_layers = max(len(r) for r in ranks.values())
    fig, axes = _figure(n, 1, width=max(6.4, 0.34 * num_layers + 2), height=1.2 + 0.45 * max(len(r.columns) for r in
                                                                                             ranks.values()) * n + n)
    for ax, (granularity, table) in zip(axes[:, 0], ranks.items()):
        data = table.T
        sns.heatmap(data, ax=ax, cmap="viridis", annot=num_layers <= 36, fmt=".0f", annot_kws={"fontsize": 6.5},
                    cbar_kws={"label": "drop rank (1 = first)", "shrink": 0.9},
                    yticklabels=[label(m) for m in data.index], linewidths=0.4, linecolor="white")
        ax.set_title(GRANULARITY_LABELS.get(granularity, granularity))
        ax.set_xlabel("layer")
        ax.set_ylabel("method")
        ax.tick_params(axis="y", rotation=0)
    return _finish(fig, title, caption)


@_styled
def correlation_heatmap_figure(matrices: Mapping[str, pd.DataFrame], *, title: str, caption: str,
                               value_label: str = "Spearman ρ of per-layer scores") -> Figure:
    """Pairwise rank-correlation matrices of methods, one panel per granularity, annotated."""
    n = len(matrices)
    size = max(len(m) for m in matrices.values())
    fig, axes = _figure(1, n, width=(1.0 + 0.9 * size) * n + 1.2, height=1.4 + 0.8 * size)
    for i, (ax, (granularity, matrix)) in enumerate(zip(axes[0], matrices.items())):
        names = [label(m) for m in matrix.index]
        sns.heatmap(matrix.astype(float), ax=ax, vmin=-1, vmax=1, cmap="RdBu_r", center=0, annot=True, fmt=".2f",
                    square=True, xticklabels=names, yticklabels=names, cbar=i == n - 1,
                    cbar_kws={"label": value_label, "shrink": 0.8})
        ax.set_title(GRANULARITY_LABELS.get(granularity, granularity))
        ax.set_xlabel("method")
        ax.set_ylabel("method" if i == 0 else "")
        ax.tick_params(axis="x", rotation=30)
        ax.tick_params(axis="y", rotation=0)
    return _finish(fig, title, caption)


# ---------------------------------------------------------------- 5. calibration

@_styled
def calibration_profile_figure(bands: Mapping[str, Mapping[str, pd.DataFrame]], *, title: str, caption: str,
                               level: float = 0.95) -> Figure:
    """Entropy profiles per calibration set (``bands``: calibration -> estimator -> band), one panel
    per estimator, min–max scaled per estimator over all calibration sets together."""
    estimators = list(dict.fromkeys(e for per_cal in bands.values() for e in per_cal))
    fig, axes = _figure(1, len(estimators), width=3.6 * len(estimators) + 0.6, height=3.8, sharey=True)
    for ax, estimator in zip(axes[0], estimators):
        for i, (calibration, per_cal) in enumerate(bands.items()):
            band = per_cal.get(estimator)
            if band is None:
                continue
            ls = CALIBRATION_STYLES[i % len(CALIBRATION_STYLES)]
            ax.plot(band["boundary"], band["mean"], color=color(estimator), ls=ls, marker=".", label=calibration)
            ax.fill_between(band["boundary"], band["lo"], band["hi"], color=color(estimator), alpha=0.15, lw=0)
        ax.set_title(label(estimator))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("block boundary")
        ax.legend(title=f"calibration ({level:.0%} band)", loc="best")
    axes[0, 0].set_ylabel("entropy, min–max scaled to [0, 1]")
    return _finish(fig, title, caption)


@_styled
def calibration_heatmap_figure(matrices: Mapping[str, pd.DataFrame], *, method: str, title: str, caption: str,
                               value_label: str = "ΔH (nats)", clip_percentile: float = 95) -> Figure:
    """The paper's Figure 2: ΔH of ``method`` per layer (across) and calibration set (down), one panel
    per granularity (``matrices``: granularity -> :func:`~companion.analysis.tables.delta_by_calibration`)."""
    n = len(matrices)
    num_layers = max(m.shape[1] for m in matrices.values())
    rows = max(len(m) for m in matrices.values())
    fig, axes = _figure(n, 1, width=max(6.4, 0.32 * num_layers + 2), height=1.1 + (0.5 + 0.35 * rows) * n)
    for ax, (granularity, matrix) in zip(axes[:, 0], matrices.items()):
        _heatmap(ax, matrix, value_label, clip_percentile, list(matrix.index))
        ax.set_title(f"{label(method)}, {GRANULARITY_LABELS.get(granularity, granularity)}")
        ax.set_ylabel("calibration set")
    return _finish(fig, title, caption)


# ---------------------------------------------------------------- 6. speed

@_styled
def speed_figure(speed: pd.DataFrame, *, title: str, caption: str) -> Figure:
    """Measured prefill and decode speedup against K (solid, min–max over timed runs) beside the
    FLOP-proportional expectation (dashed), one line colour per granularity; absolute throughput below."""
    fig, axes = _figure(2, 2, width=9.0, height=7.0, sharex=True)
    colors = {"attn": "#0072B2", "mlp": "#009E73", "layer": "#D55E00"}
    for col, phase in enumerate(("prefill", "decode")):
        top, bottom = axes[0, col], axes[1, col]
        for granularity, rows in speed.groupby("granularity", sort=False):
            rows = rows.sort_values("K")
            c = colors.get(granularity, "0.3")
            name = GRANULARITY_LABELS.get(granularity, granularity)
            measured = rows[f"measured_speedup_{phase}"]
            err = [measured - rows[f"measured_speedup_{phase}_lo"], rows[f"measured_speedup_{phase}_hi"] - measured]
            top.errorbar(rows["K"], measured, yerr=np.clip(np.asarray(err, dtype=float), 0, None), color=c, marker="o",
                         ms=4, capsize=3, label=f"{name}: measured")
            top.plot(rows["K"], rows[f"expected_speedup_{phase}"], color=c, ls="--", marker="x", ms=5,
                     label=f"{name}: FLOP-proportional")
            tps = rows[f"{phase}_tps"]
            bottom.errorbar(rows["K"], tps, yerr=np.clip(np.asarray([tps - rows[f"{phase}_tps_lo"],
                                                                      rows[f"{phase}_tps_hi"] - tps], dtype=float), 0, None),
                            color=c, marker="o", ms=4, capsize=3, label=name)
        top.axhline(1.0, color="0.2", ls=":", lw=1)
        top.set_title(f"{phase}: speedup over the dense model")
        top.set_ylabel("speedup (×)")
        top.legend(loc="upper left")
        bottom.set_title(f"{phase}: throughput")
        bottom.set_ylabel("tokens / s")
        bottom.set_ylim(bottom=0)
        _k_axis(bottom, speed["K"])
        bottom.legend(loc="lower left")
    return _finish(fig, title, caption)


# ---------------------------------------------------------------- curves with intervals, and the league

@_styled
def curve_figure(points: pd.DataFrame, *, methods: Sequence[str], granularities: Sequence[str], title: str,
                 caption: str, ylabel: str, chance: Mapping[str, float] | None = None) -> Figure:
    """A measure against K with its 95 % interval at every point (``points``:
    :func:`companion.analysis.tables.curve_points`): one row of panels per model, one panel per
    granularity; the criteria as lines with error bars, ``last`` dashed, the pooled random drop sets as
    a shaded interval, the dense model and (``chance``, per model) the chance level as lines."""
    models = list(dict.fromkeys(points["model"]))
    fig, axes = _figure(len(models), len(granularities), width=4.2 * len(granularities) + 0.6,
                        height=3.4 * len(models) + 0.6)
    shown = [m for m in dict.fromkeys([*methods, LAST]) if m in set(points["method"])]
    for row, model in enumerate(models):
        for col, granularity in enumerate(granularities):
            ax = axes[row, col]
            here = points[(points["model"] == model) & (points["granularity"] == granularity)]
            dense = points[(points["model"] == model) & (points["K"] == 0)]
            pooled = here[here["method"] == RANDOM].sort_values("K")
            if len(pooled):
                ax.fill_between(pooled["K"], pooled["ci_low"], pooled["ci_high"], color=color(RANDOM), alpha=0.25,
                                lw=0)
                ax.plot(pooled["K"], pooled["mean"], color=color(RANDOM), lw=1.2, marker=".",
                        label=f"{label('random')} (seeds pooled), 95 % interval")
            for index, method in enumerate(shown):
                rows = here[here["method"] == method].sort_values("K")
                if rows.empty:
                    continue
                ax.errorbar(_dodge(rows["K"], index, len(shown)), rows["mean"],
                            yerr=[rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]], color=color(method),
                            ls="--" if method == LAST else "-", marker=marker(method), ms=4, capsize=2.5, lw=1.3,
                            label=label(method))
            if len(dense):
                ax.axhline(float(dense["mean"].iloc[0]), color="0.2", ls=":", lw=1.2, label="dense model")
            if chance and model in chance:
                ax.axhline(chance[model], color="#B22222", ls="-.", lw=1.0, label="chance")
            ax.set_title(f"{model}: {GRANULARITY_LABELS.get(granularity, granularity)}")
            _k_axis(ax, here["K"])
            if row == 0 and col == 0:
                ax.legend(loc="best", fontsize=7)
        axes[row, 0].set_ylabel(ylabel)
    return _finish(fig, title, caption)


@_styled
def league_figure(rho: pd.DataFrame, costs: pd.DataFrame, *, methods: Sequence[str], granularities: Sequence[str],
                  title: str, caption: str) -> Figure:
    """Left: each criterion's Spearman ρ with the yardstick (dot and 95 % interval) per granularity, one
    row per model. Right: the held-out cost of each criterion's drop sets (NLL increase per token on
    WikiText-2 test windows) against K per granularity of the curves, with 95 % intervals."""
    models = list(dict.fromkeys(rho["model"]))
    curve_grans = [g for g in granularities if g in set(costs["granularity"])]
    fig, axes = _figure(len(models), 1 + len(curve_grans), width=4.4 + 3.8 * len(curve_grans),
                        height=3.3 * len(models) + 0.8)
    order = [m for m in methods if m in set(rho["criterion"])]
    for row, model in enumerate(models):
        ax = axes[row, 0]
        mine = rho[rho["model"] == model]
        grans = [g for g in GRANULARITY_LABELS if g in set(mine["granularity"])]
        for gi, granularity in enumerate(grans):
            for mi, method in enumerate(order):
                hit = mine[(mine["granularity"] == granularity) & (mine["criterion"] == method)]
                if hit.empty:
                    continue
                y = mi + (gi - (len(grans) - 1) / 2) * 0.22
                value, low, high = (float(hit[c].iloc[0]) for c in ("rho", "ci_low", "ci_high"))
                ax.errorbar([value], [y], xerr=[[value - low if np.isfinite(low) else 0],
                                                [high - value if np.isfinite(high) else 0]],
                            color=color(method), marker=("o", "s", "D")[gi % 3], ms=4, capsize=2, lw=1.2)
        ax.axvline(0, color="0.3", lw=1.0, ls=":")
        ax.set_yticks(range(len(order)), [criteria.short(m) for m in order])
        ax.invert_yaxis()
        ax.set_xlim(-1.05, 1.05)
        ax.set_xlabel("Spearman ρ with the yardstick")
        ax.set_title(f"{model}: ρ per granularity")
        handles = [Line2D([], [], color="0.3", marker=("o", "s", "D")[i % 3], ls="", label=GRANULARITY_LABELS[g])
                   for i, g in enumerate(grans)]
        ax.legend(handles=handles, loc="lower left", fontsize=7)
        for col, granularity in enumerate(curve_grans, start=1):
            ax = axes[row, col]
            here = costs[(costs["model"] == model) & (costs["granularity"] == granularity)]
            shown = [m for m in dict.fromkeys([*methods, RANDOM, LAST]) if m in set(here["method"])]
            for index, method in enumerate(shown):
                rows = here[here["method"] == method].sort_values("K")
                if rows["K"].nunique() < 2:
                    continue
                ax.errorbar(_dodge(rows["K"], index, len(shown)), rows["cost"],
                            yerr=[rows["cost"] - rows["ci_low"], rows["ci_high"] - rows["cost"]], color=color(method),
                            ls="--" if method in (LAST, RANDOM) else "-", marker=marker(method), ms=3.5,
                            capsize=2, lw=1.2, label=label(method))
            ax.set_yscale("symlog", linthresh=0.05)
            ax.set_ylabel("held-out NLL increase (nats/token)")
            ax.set_title(f"{model}: drop sets, {GRANULARITY_LABELS.get(granularity, granularity)}")
            _k_axis(ax, here["K"])
            if row == 0 and col == 1:
                ax.legend(loc="upper left", fontsize=7)
    return _finish(fig, title, caption)


@_styled
def yardstick_figure(table: pd.DataFrame, protected: Mapping[str, Sequence[int]], *, title: str,
                     caption: str) -> Figure:
    """What removing each block alone costs on held-out text (``table``: the yardstick's tidy rows), one
    row of panels per model, one panel per granularity: the NLL increase per token with its 95 %
    interval (symmetric-log scale: a few blocks cost orders of magnitude more); the protected blocks grey."""
    models = list(dict.fromkeys(table["model"]))
    grans = [g for g in GRANULARITY_LABELS if g in set(table["granularity"])]
    fig, axes = _figure(len(models), len(grans), width=4.0 * len(grans) + 0.6, height=3.0 * len(models) + 0.8)
    for row, model in enumerate(models):
        for col, granularity in enumerate(grans):
            ax = axes[row, col]
            here = table[(table["model"] == model) & (table["granularity"] == granularity)].sort_values("block")
            guarded = set(protected.get(model, ()))
            colors = ["0.7" if b in guarded else "#0072B2" for b in here["block"]]
            ax.bar(here["block"], here["delta_nll"], color=colors, width=0.8,
                   yerr=[here["delta_nll"] - here["ci_low"], here["ci_high"] - here["delta_nll"]],
                   error_kw={"lw": 0.8, "capsize": 1.5, "ecolor": "0.2"})
            ax.set_yscale("symlog", linthresh=0.01)
            ax.axhline(0, color="0.3", lw=0.8)
            ax.set_xlabel("block (layer index)")
            ax.set_title(f"{model}: {GRANULARITY_LABELS[granularity]}")
        axes[row, 0].set_ylabel("held-out NLL increase (nats/token)")
    handles = [matplotlib.patches.Patch(color="#0072B2", label="prunable block"),
               matplotlib.patches.Patch(color="0.7", label="protected block")]
    axes[0, 0].legend(handles=handles, loc="upper right", fontsize=7)
    return _finish(fig, title, caption)
