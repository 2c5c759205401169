"""The yardstick: what removing each block alone actually costs on held-out text.

For every block of a granularity, the increase of negative log-likelihood per token on held-out
windows when that block alone is removed, with a 95 % interval from resampling the windows (one
window per document, so resampling windows resamples documents). It is the same exact, incremental
evaluation as the ``ppl`` criterion (:func:`companion.method.removal.removal_nll`) on windows no
calibration uses: WikiText-2's test split, whose articles the calibration sources (WikiText-2
validation, C4) do not contain.

Besides the tidy table it keeps every window's NLL (``block = -1`` for the model with nothing
removed), so rank correlations with any criterion can be bootstrapped over the same windows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy.stats import bootstrap
from torch import nn

from companion.errors import CompanionError
from companion.method.calibration import Documents, Windows
from companion.method.removal import Cost, removal_nll
from companion.model.layouts import decoder_layers
from companion.names import GRANULARITIES

log = logging.getLogger(__name__)

HELDOUT = ("wikitext2", "test")  # the held-out documents: load_documents(*HELDOUT)
TABLE_COLUMNS = ["model", "granularity", "block", "delta_nll", "ci_low", "ci_high", "n_windows", "tokens"]
WINDOW_COLUMNS = ["granularity", "block", "window", "nll", "tokens"]


@dataclass
class Yardstick:
    """``table``: one row per block (``TABLE_COLUMNS``); ``windows``: the summed NLL and token count of
    every window for the dense model (``block`` -1) and each block removed (``WINDOW_COLUMNS``,
    ``window`` = the document's index); ``provenance``: the windows and documents; ``cost`` per
    granularity."""

    table: pd.DataFrame
    windows: pd.DataFrame
    provenance: dict
    cost: dict[str, Cost] = field(default_factory=dict)


def heldout_windows(tokenizer, documents: Documents, samples: int = 16, seqlen: int = 256, seed: int = 0) -> Windows:
    """One window per document from ``samples`` distinct documents longer than ``seqlen`` tokens, chosen
    by a seeded permutation and kept in document order: each document's first ``seqlen`` tokens as the
    tokenizer encodes it (so a beginning-of-sequence token is kept where the tokenizer adds one)."""
    if samples < 1 or seqlen < 2:
        raise CompanionError("held-out windows need samples >= 1 and seqlen >= 2")
    encoded = tokenizer(documents.texts)["input_ids"]
    eligible = [i for i, ids in enumerate(encoded) if len(ids) > seqlen]
    if len(eligible) < samples:
        raise CompanionError(f"only {len(eligible)} documents of {documents.source} ({documents.split}) are longer "
                             f"than {seqlen} tokens; ask for at most that many windows or shorter ones")
    order = np.random.default_rng(seed).permutation(len(eligible))[:samples]
    chosen = sorted(eligible[i] for i in order)
    ids = torch.tensor([encoded[i][:seqlen] for i in chosen], dtype=torch.long)
    return Windows(ids, chosen, [0] * len(chosen), seed)


def delta_interval(delta: np.ndarray, tokens: np.ndarray, confidence: float = 0.95, n_resamples: int = 9999,
                   seed: int = 0) -> tuple[float, float, float]:
    """Σ delta / Σ tokens over windows, with its BCa bootstrap interval resampling windows (pairs of
    a window's NLL increase and its token count). Windows that all agree give a zero-width interval."""
    delta, tokens = np.asarray(delta, dtype=float), np.asarray(tokens, dtype=float)
    value = float(delta.sum() / tokens.sum())
    per_token = delta / tokens
    if len(delta) < 2 or np.ptp(per_token) == 0:
        return value, value, value
    result = bootstrap((delta, tokens), lambda d, t, axis: d.sum(axis) / t.sum(axis), paired=True,
                       vectorized=True, confidence_level=confidence, n_resamples=n_resamples,
                       rng=np.random.default_rng(seed))
    return value, float(result.confidence_interval.low), float(result.confidence_interval.high)


def measure(model: nn.Module, windows: Windows, model_name: str, granularities: Sequence[str] = GRANULARITIES,
            blocks: Sequence[int] | None = None, batch_size: int | None = None, confidence: float = 0.95,
            n_resamples: int = 9999, seed: int = 0, documents: Documents | None = None) -> Yardstick:
    """The yardstick of ``model`` on held-out ``windows`` (see :func:`heldout_windows`): every block of
    each granularity (or only ``blocks``) removed alone. Intervals resample windows with ``seed``.
    ``documents`` (the pool the windows were cut from) is recorded in the provenance."""
    unknown = [g for g in granularities if g not in GRANULARITIES]
    if unknown:
        raise CompanionError(f"unknown granularity '{unknown[0]}'; choose from {', '.join(GRANULARITIES)}")
    blocks = list(range(len(decoder_layers(model)))) if blocks is None else [int(b) for b in blocks]
    doc_ids = list(windows.doc_index) or list(range(len(windows.input_ids)))
    rows, long, costs = [], [], {}
    for granularity in granularities:
        start = time.perf_counter()
        result = removal_nll(model, windows.input_ids, granularity, blocks, batch_size=batch_size)
        costs[granularity] = result.cost
        base, tokens = result.base.double().numpy(), result.tokens.double().numpy()
        long += [(granularity, -1, d, n, t) for d, n, t in zip(doc_ids, base, tokens)]
        for block, nll in zip(blocks, result.nll.double().numpy()):
            long += [(granularity, block, d, n, t) for d, n, t in zip(doc_ids, nll, tokens)]
            value, low, high = delta_interval(nll - base, tokens, confidence, n_resamples, seed)
            rows.append((model_name, granularity, block, value, low, high, len(doc_ids), int(tokens.sum())))
        log.info("yardstick %s %s: %d blocks in %.1f s", model_name, granularity, len(blocks),
                 time.perf_counter() - start)
    provenance = {"documents": documents.provenance() if documents is not None else None,
                  "windows": windows.provenance(), "confidence": confidence, "n_resamples": n_resamples,
                  "bootstrap_seed": seed, "unit": "nats per token"}
    return Yardstick(pd.DataFrame(rows, columns=TABLE_COLUMNS), pd.DataFrame(long, columns=WINDOW_COLUMNS),
                     provenance, costs)
