"""The one list of the book's figure pages: each is a notebook of ``notebooks/``, executed into
``book/figures/``. The execution order (:func:`execution_order`, used by ``reproduce``), the
placeholders (``book/_tools/make_placeholders.py``) derive from it; tests check that the Figures part
of ``book/_toc.yml``, the notebooks' titles and saved figures, and the README's "Figure → notebook →
results file" table agree with it.

A new figure page is one entry here (in book order) plus its notebook.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FigurePage:
    """One figure page of the book.

    ``notebook``: the name of ``notebooks/<notebook>.ipynb`` (and of the book page
    ``figures/<notebook>``); ``title``: the page title (the notebook's first heading); ``shows``: what
    it shows, one phrase (the placeholder's text); ``computes``: whether it computes results that other
    notebooks read (sweeps, the second calibration set, speed), so it is executed before the read-only
    ones; ``figures``: the names of the figures it saves under ``figures/`` (``<model>`` stands for a
    model's label); ``reads``: the results files it reads (``<cal>``: the profile's first calibration
    set).
    """

    notebook: str
    title: str
    shows: str
    computes: bool
    figures: tuple[str, ...]
    reads: tuple[str, ...]


# In book order (the Figures part of book/_toc.yml).
FIGURE_PAGES: tuple[FigurePage, ...] = (
    FigurePage("entropy_by_depth", "Entropy by depth",
               "the entropy of the hidden states at every block boundary, per estimator and calibration set, "
               "and the entropy increase of every block",
               computes=False, figures=("entropy_by_depth", "delta_entropy_heatmap", "norm_and_scale_free_knn"),
               reads=("scores_<cal>.json",)),
    FigurePage("accuracy_vs_pruning", "Accuracy vs. number of dropped blocks",
               "the mean zero-shot accuracy, the probability on the gold choice and LAMBADA accuracy after "
               "dropping K blocks chosen by entropy, cosine, perplexity and SLEB, at attention and layer "
               "granularity, beside random and last-K drop sets",
               computes=True, figures=("accuracy_vs_pruning", "p_correct_vs_pruning", "lambada_vs_pruning",
                                       "accuracy_per_task_<model>", "perplexity_vs_pruning_<model>"),
               reads=("scores_<cal>.json", "sweep_*.json", "examples_*.parquet")),
    FigurePage("league", "Which criterion knows what a block is worth",
               "what removing each block alone costs on held-out text (the yardstick), each criterion's rank "
               "correlation with it, and what each criterion's drop sets cost",
               computes=True, figures=("yardstick", "league"),
               reads=("yardstick.json", "scores_<cal>.json", "sweep_<cal>.json", "comparisons.csv")),
    FigurePage("entropy_vs_cosine", "Entropy vs. cosine",
               "the entropy and cosine scores of every block side by side: per-block scatter, rank correlation "
               "and overlap of the drop sets",
               computes=False, figures=("entropy_vs_cosine_scatter", "entropy_vs_cosine_overlap"),
               reads=("scores_<cal>.json", "sweep_<cal>.json")),
    FigurePage("estimators", "Estimator comparison",
               "accuracy after pruning with the drop orders of the bucket, KNN and Rényi estimators",
               computes=False, figures=("estimator_ranks", "estimator_correlations", "estimator_accuracy"),
               reads=("scores_<cal>.json", "sweep_<cal>.json", "comparisons.csv")),
    FigurePage("calibration", "Calibration-set ablation",
               "drop orders and accuracy with C4, WikiText-2 and domain calibration sets",
               computes=True, figures=("calibration_profiles", "calibration_delta_heatmap", "calibration_accuracy"),
               reads=("scores_c4.json", "scores_wikitext2.json", "sweep_c4.json", "sweep_wikitext2.json",
                      "comparisons.csv")),
    FigurePage("speedup", "Inference speedup",
               "measured generation speed against the number of dropped attention layers",
               computes=True, figures=("speedup", "speedup_gpu_llama31_8b_shape"),
               reads=("scores_<cal>.json", "speed.json", "results/gpu/speed_llama-3.1-8b-shape.json")),
)


def book_order() -> list[str]:
    """The notebooks in the order of the book's Figures part."""
    return [page.notebook for page in FIGURE_PAGES]


def execution_order() -> list[str]:
    """The notebooks in the order ``reproduce`` executes them: those that compute results first (so the
    read-only ones run once, on final results), each group in book order."""
    return ([page.notebook for page in FIGURE_PAGES if page.computes]
            + [page.notebook for page in FIGURE_PAGES if not page.computes])


def figure_page(notebook: str) -> FigurePage:
    """The entry of ``notebook``; a ``KeyError`` naming the known ones if there is none."""
    for page in FIGURE_PAGES:
        if page.notebook == notebook:
            return page
    raise KeyError(f"no figure page {notebook!r}; known: {', '.join(book_order())}")
