"""Named settings of whole runs: ``smoke`` (CI, minutes), ``default`` (the embedded model on a laptop
CPU) and ``paper`` (the paper's models and setup on a GPU). Command-line flags and ``MODEL=``/``DEVICE=``
override single fields.

``paper`` follows the released EntroDrop code: fp16, layers 0, 1 and the last protected for every
criterion (``protect``), calibration on C4 *train* shard 0 (``c4:train``: a calibration is ``source`` or
``source:split``; it is read from the Hub only, so offline runs must choose another one, e.g.
``--calibration c4,wikitext2``), 128 × 256 tokens, seed 2024, K = 4, 8, 12, 16. Where it departs:
the 13 tasks include two the paper does not name (``GUESSED_PAPER_TASKS``), WikiText-2 is the second
calibration set (the paper also used law and medicine corpora), and K = 0 is added as the reference.

``default`` studies both embedded models with the paper code's protocol (layers 0, 1 and the last
protected for every criterion) and spends examples where they decide the claims: the dense model, KNN
and cosine at the headline K (the K closest to 37.5 % of the layers) on ``primary_limit`` examples per
task; the curves (KNN, cosine, ``last`` and five ``random`` seeds at every K, the K at ``drop_fractions``
of the model's layers) and the secondary ablations (bucket, Rényi, the second calibration set, at the
headline K) on ``limit``. ``primary_limit`` is sized so that the 95 % interval of the primary
comparison (KNN minus cosine, mean accuracy) is at most ±3 points: the interval's half-width shrinks as
one over the square root of the examples, projected from an earlier run's disagreement rate between the
two prunings. ``models_overrides`` adjusts the sizes per model: Gemma-3-270M's prunings disagree more
often, so it gets 400 examples per task against SmolLM2's 380 (and its 262k-token LM head makes each
example about 1.7 times as costly).

``limit`` bounds every task: the examples of each lm-eval task, the perplexity windows, and the timed
repeats of a speed run (``speed_repeats`` is capped at ``limit``), so a first run with a small limit
takes minutes. Drop counts larger than a model's prunable layers are clipped to that count, with a
note (see :func:`companion.experiments.sweep.fit_drops`)."""

from __future__ import annotations

from collections.abc import Iterable

from companion.errors import CompanionError
from companion.names import GUESSED_PAPER_TASKS, PAPER_TASKS, PERPLEXITY_TASK

# lm-eval batch size (requests per forward pass) unless set: FastHFLM was fastest at 16 of 8/16/32 on a
# 2-core CPU, where stock HFLM is as fast at 8 as at 16 (benchmarks/README.md).
EVAL_BATCH_SIZE = 16

PROFILES: dict[str, dict] = {
    "smoke": {
        "models": ["gemma-3-270m"], "calibrations": ["wikitext2", "c4"], "samples": 8, "seqlen": 128, "seed": 2024,
        "methods": ["knn", "bucket", "renyi", "cosine"], "granularities": ["attn", "layer"], "drops": [0, 4],
        "tasks": ["piqa", "wikitext2_ppl"], "limit": 8, "ppl_seqlen": 128, "ppl_chunks": 1,
        "speed_drops": [0, 4], "speed_prompt": 64, "speed_new_tokens": 4, "speed_repeats": 1,
        "device": "auto", "dtype": "auto", "data_source": "auto", "protect": "first:2,last:1",
        "curve_methods": ["knn", "cosine"], "primary_methods": ["knn", "cosine"], "baselines": ["random", "last"],
        "random_seeds": 2,
    },
    "default": {
        "models": ["gemma-3-270m", "smollm2-135m"], "calibrations": ["c4", "wikitext2"], "samples": 64, "seqlen": 256,
        "seed": 2024, "methods": ["knn", "bucket", "renyi", "cosine"], "granularities": ["attn", "layer"],
        "drop_fractions": [0.125, 0.25, 0.375, 0.5, 0.625], "curve_methods": ["knn", "cosine"],
        "primary_methods": ["knn", "cosine"], "baselines": ["random", "last"], "random_seeds": 5,
        "tasks": ["piqa", "arc_easy", "hellaswag", "winogrande", "wikitext2_ppl"], "limit": 8, "primary_limit": 380,
        "ppl_seqlen": 512, "ppl_chunks": 1, "primary_ppl_chunks": 16,
        "speed_drops": [0, 4, 8], "speed_prompt": 256, "speed_new_tokens": 32, "speed_repeats": 3,
        "device": "auto", "dtype": "auto", "data_source": "auto", "protect": "first:2,last:1",
        "models_overrides": {"gemma-3-270m": {"primary_limit": 400}},
    },
    "paper": {
        "models": ["meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3"], "calibrations": ["c4:train", "wikitext2"],
        "samples": 128, "seqlen": 256, "seed": 2024, "methods": ["knn", "bucket", "renyi", "cosine"],
        "granularities": ["attn", "layer"], "drops": [0, 4, 8, 12, 16],
        "tasks": [*PAPER_TASKS, *GUESSED_PAPER_TASKS, PERPLEXITY_TASK],
        "limit": None, "ppl_seqlen": 2048, "ppl_chunks": None,
        "speed_drops": [0, 4, 8, 12, 16], "speed_prompt": 1024, "speed_new_tokens": 128, "speed_repeats": 10,
        "device": "auto", "dtype": "float16", "data_source": "auto", "protect": "first:2,last:1",
        "baselines": ["random", "last"], "random_seeds": 5,
    },
}


OPTIONAL = {"drop_fractions": None, "curve_methods": None, "primary_methods": [], "baselines": [], "random_seeds": 0,
            "primary_limit": None, "primary_ppl_chunks": None, "models_overrides": {}}


def profile(name: str, model: str | None = None, **overrides) -> dict:
    """The settings of profile ``name`` (for ``model``, with its ``models_overrides``) with non-empty
    ``overrides`` applied."""
    if name not in PROFILES:
        raise CompanionError(f"unknown profile '{name}'; choose from {', '.join(PROFILES)}")
    settings = {**OPTIONAL, **PROFILES[name]}
    settings.update(settings["models_overrides"].get(model, {}))
    settings.update({k: v for k, v in overrides.items() if v not in (None, "", [])})
    return settings


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
