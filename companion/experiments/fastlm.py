"""lm-eval's HF model, scoring log-likelihoods with shared context prefixes run once and the LM head only where needed.

Stock ``HFLM`` runs every (context, continuation) request as its own sequence and computes the LM
head (and a log-softmax over the vocabulary) at every input position, then keeps only the
continuation positions. In multiple-choice tasks the choices of one question repeat the same
context (or, as in WinoGrande, the same start of it), and for Gemma-3's 262,144-token vocabulary
the head dominates CPU time. ``FastHFLM`` groups requests by a shared context prefix and scores
them in two kinds of forward pass, each holding at most ``batch_size`` sequences:

1. the prefixes of up to ``batch_size`` groups, left-padded, into a KV cache, with no logits;
2. then these groups' requests, sorted by length and cut into batches: each request's rest of
   context and its continuation but the last token, on top of its group's cache row
   (``batch_select_indices`` copies the rows), with logits only at the positions that predict
   continuation tokens (``logits_to_keep`` as a boolean mask).

Positions are passed explicitly, so padding never shifts them, and left padding keeps every prefix
adjacent to its rest, as in batched generation (which also keeps sliding-window attention exact).
Tokenisation, left truncation at ``max_length``, ``cache_hook`` and the progress bar are stock
lm-eval; the results equal stock up to float rounding (tested to 1e-4).
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import transformers
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

from companion.experiments import EVAL_BATCH_SIZE

__all__ = ["FastHFLM", "make_lm", "target_logprobs"]

log = logging.getLogger(__name__)

Request = tuple[tuple[str, str] | None, list[int], list[int]]


@dataclass
class _Group:
    """Requests (by index) whose contexts share ``prefix``, which leaves at least one context token to each."""

    prefix: list[int]
    members: list[int] = field(default_factory=list)
    contexts: list[list[int]] = field(default_factory=list)
    continuations: list[list[int]] = field(default_factory=list)

    def add(self, index: int, context: list[int], continuation: list[int]) -> None:
        self.prefix = self.prefix[: len(os.path.commonprefix([self.prefix, context[:-1]]))]
        self.members.append(index)
        self.contexts.append(context)
        self.continuations.append(continuation)


class _Row(NamedTuple):
    """One request in the second pass: its tokens after the prefix, and its group's row in the prefix cache."""

    index: int
    tokens: list[int]
    continuation: list[int]
    owner: int


def _cache_rows(cache, rows: torch.Tensor):
    """A KV cache of the given batch ``rows`` of ``cache``, which is left as it was.

    ``batch_select_indices`` rebinds each layer's keys and values to indexed copies, so selecting
    on shallow copies of the cache and its layers copies only the selected rows.
    """
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(rows)
    return selected


def _shares(prefix: list[int], context: list[int]) -> bool:
    """Whether ``context`` joins a group with ``prefix``: they share at least half of each (and one token)."""
    common = len(os.path.commonprefix([prefix, context[:-1]]))
    return common > 0 and 2 * common >= len(prefix) and 2 * common >= len(context) - 1


_CPU_ROWS = 8  # logits rows per reduction on a CPU: 8 x 262k floats (8 MiB) stay in cache


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-softmax of each row of ``logits`` ``[tokens, vocab]`` at its target, and its greedy token.

    The full log-softmax is never materialised. On a CPU the rows are reduced a few at a time through
    one reused buffer (maximum and its index, exponentials of the differences, their sum), which stays
    in cache: with Gemma-3's 262k-token vocabulary this is over twice as fast as ``torch.logsumexp``
    and ``argmax`` over the whole matrix, which each stream it from memory several times. An
    accelerator reduces all rows at once. Equal to ``log_softmax(...).gather(...)`` up to float rounding.
    """
    rows = _CPU_ROWS if logits.device.type == "cpu" else max(len(logits), 1)
    lse = torch.empty(len(logits), dtype=logits.dtype, device=logits.device)
    greedy = torch.empty(len(logits), dtype=torch.long, device=logits.device)
    buffer = torch.empty((min(rows, len(logits)), logits.shape[-1]), dtype=logits.dtype, device=logits.device)
    for start in range(0, len(logits), rows):
        chunk = logits[start : start + rows]
        top, greedy[start : start + len(chunk)] = chunk.max(-1)
        shifted = buffer[: len(chunk)]
        torch.sub(chunk, top.unsqueeze(1), out=shifted)
        lse[start : start + len(chunk)] = shifted.exp_().sum(-1).log_().add_(top)
    return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - lse, greedy


# model -> {set of its module classes: whether it passed the probe}
_PROBED: weakref.WeakKeyDictionary[torch.nn.Module, dict[frozenset[type], bool]] = weakref.WeakKeyDictionary()


class FastHFLM(HFLM):
    """``HFLM`` whose causal-LM log-likelihoods run shared context prefixes once and the LM head only where scored.

    Only ``_loglikelihood_tokens`` is overridden (``loglikelihood`` and ``loglikelihood_rolling``
    both go through it): it is the smallest piece that sees contexts and continuations apart, since
    stock ``_model_call`` receives only padded token ids. It applies to decoder-only models whose
    two-pass logits match their one-pass logits on a tiny probe (in-library models of transformers
    releases whose ``logits_to_keep`` takes boolean masks; 5.24 does); other models are scored by
    stock code.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fast = self.backend == "causal" and self._probed()
        if not self._fast:
            log.warning(
                "FastHFLM: %s (%s backend, transformers %s) cannot score continuations on a shared prefix "
                "with logits at chosen positions only; scoring as stock HFLM",
                type(self.model).__name__,
                self.backend,
                transformers.__version__,
            )

    def _probed(self) -> bool:
        """:meth:`_passes_probe`, run once per model and set of module classes.

        The probe tests code paths, which the classes of a model's modules decide: a sweep's many
        prunings of one model need two probes (dense and layer-pruned models share their classes;
        attention pruning adds one), not one per pruning (half a second each with Gemma-3's LM head).
        """
        classes = frozenset(type(module) for module in self.model.modules())
        known = _PROBED.setdefault(self.model, {})
        if classes not in known:
            known[classes] = self._passes_probe()
        return known[classes]

    def _passes_probe(self) -> bool:
        """Whether two-pass scoring of four tiny requests gives the model's one-pass logits.

        Older transformers releases index ``hidden_states[:, logits_to_keep, :]`` and raise on a
        boolean mask, as may remote-code models; a model that ignored ``position_ids``, the
        attention mask or the cache would give different logits.
        """
        if "logits_to_keep" not in inspect.signature(self.model.forward).parameters:
            return False
        vocab = self.model.get_output_embeddings().weight.shape[0]
        ids = [(self.prefix_token_id + step) % vocab for step in range(6)]
        requests = [(None, ids[:3], ids[3:5]), (None, ids[:2] + ids[4:5], ids[3:4]), (None, ids[1:2], ids[1:6]),
                    (None, ids[1:5], ids[2:3])]
        try:
            with torch.no_grad():
                one_pass = torch.cat([
                    self._forward(torch.tensor([ctx + cont[:-1]], device=self.device)).logits[0, -len(cont) :]
                    for _, ctx, cont in requests
                ]).float()
                scored = {row.index: logits for rows, batch_logits in self._logits(requests, 2)
                          for row, logits in zip(rows, batch_logits.split([len(r.continuation) for r in rows]))}
                two_pass = torch.cat([scored[index] for index in range(len(requests))]).float()
        except (IndexError, TypeError, ValueError, AttributeError, RuntimeError):
            return False
        if two_pass.shape != one_pass.shape:
            return False
        tolerance = 1e-3 if self.model.dtype == torch.float32 else 5e-2
        return bool((two_pass - one_pass).abs().max() <= tolerance * one_pass.abs().max().clamp(min=1.0))

    def _forward(self, ids: torch.Tensor, **kwargs):
        """The model's forward pass under lm-eval's no-grad and mixed-precision settings."""
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            return self.model(ids, **kwargs)

    def _groups(self, requests: list[Request]) -> list[_Group]:
        """Requests grouped by shared context prefix (after stock left truncation), longest prefix first.

        Sorted by tokens, requests whose contexts share a prefix are adjacent; a request joins the
        group before it when they share at least half of each other's context. A lone request
        keeps no prefix: it has nothing to share.
        """
        entries = []
        for index, (_, context_enc, continuation_enc) in enumerate(requests):
            assert len(context_enc) > 0
            assert len(continuation_enc) > 0
            assert len(continuation_enc) <= self.max_length
            total_length = len(context_enc) + len(continuation_enc)
            if total_length > self.max_length + 1:
                log.warning(
                    "Combined length of context (%d) and continuation (%d) exceeds model's maximum length "
                    "(%d). Truncating %d tokens from the left.",
                    len(context_enc),
                    len(continuation_enc),
                    self.max_length,
                    total_length - self.max_length + 1,
                )
            context = (context_enc + continuation_enc)[-(self.max_length + 1) :][: -len(continuation_enc)]
            entries.append((context, continuation_enc, index))
        groups: list[_Group] = []
        for context, continuation, index in sorted(entries):
            if not groups or not _shares(groups[-1].prefix, context):
                groups.append(_Group(context[:-1]))
            groups[-1].add(index, context, continuation)
        for group in groups:
            if len(group.members) == 1:
                group.prefix = []
        return sorted(groups, key=lambda group: (-len(group.prefix), group.prefix))

    @staticmethod
    def _windows(groups: list[_Group], batch_size: int) -> Iterator[list[_Group]]:
        """Consecutive groups with at most ``batch_size`` prefixes (lone requests, having none, all together)."""
        shared = [group for group in groups if group.prefix]
        for start in range(0, len(shared), batch_size):
            yield shared[start : start + batch_size]
        lone = [group for group in groups if not group.prefix]
        if lone:
            yield lone

    def _first_pass(self, window: list[_Group]) -> tuple[list[_Row], object | None, torch.Tensor]:
        """The window's second-pass rows, longest first; the KV cache of its prefixes and their mask.

        The prefixes are left-padded into one batch (at most ``batch_size`` of them) and run
        without logits; a window of lone requests has no cache and an empty mask.
        """
        width = max(len(group.prefix) for group in window)  # 0: a window of lone requests (see _windows)
        prefix_mask = torch.zeros((len(window), width), dtype=torch.long)
        cache = None
        if width:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            ids = torch.full((len(window), width), pad, dtype=torch.long)
            for row, group in enumerate(window):
                ids[row, width - len(group.prefix) :] = torch.tensor(group.prefix)
                prefix_mask[row, width - len(group.prefix) :] = 1
            cache = self._forward(
                ids.to(self.device),
                attention_mask=prefix_mask.to(self.device),
                position_ids=(prefix_mask.cumsum(1) - 1).clamp(min=0).to(self.device),
                use_cache=True,
                logits_to_keep=torch.zeros((len(window), width), dtype=torch.bool),
            ).cache
        rows = [
            _Row(index, context[len(group.prefix) :] + continuation[:-1], continuation, row)
            for row, group in enumerate(window)
            for index, context, continuation in zip(group.members, group.contexts, group.continuations, strict=True)
        ]
        rows.sort(key=lambda row: (-len(row.tokens), row.index))
        return rows, cache, prefix_mask

    def _continuation_logits(self, rows: list[_Row], cache, prefix_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[total continuation tokens, vocab]`` of every continuation token of ``rows``, row by row.

        Each row runs on a copy of its group's cache row (lone requests have no cache) and keeps the
        logits at its last ``len(continuation)`` positions. ``cache`` itself is left as it was.
        """
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        length = max(len(row.tokens) for row in rows)
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        real = torch.zeros((len(rows), length), dtype=torch.long)
        keep = torch.zeros((len(rows), length), dtype=torch.bool)
        for i, row in enumerate(rows):
            ids[i, : len(row.tokens)] = torch.tensor(row.tokens)
            real[i, : len(row.tokens)] = 1
            keep[i, len(row.tokens) - len(row.continuation) : len(row.tokens)] = True
        owners = torch.tensor([row.owner for row in rows])
        kwargs = {}
        if cache is not None:
            kwargs["cache"] = _cache_rows(cache, owners)
        visible = prefix_mask[owners]  # no columns for lone requests
        starts = visible.sum(1, keepdim=True)
        return self._forward(
            ids.to(self.device),
            attention_mask=torch.cat([visible, real], dim=1).to(self.device),
            position_ids=(starts + torch.arange(length)).to(self.device),
            use_cache="cache" in kwargs,
            logits_to_keep=keep,
            **kwargs,
        ).logits

    def _logits(self, requests: list[Request], batch_size: int) -> Iterator[tuple[list[_Row], torch.Tensor]]:
        """Batches of at most ``batch_size`` requests, with the logits of their continuation tokens."""
        for window in self._windows(self._groups(requests), batch_size):
            rows, cache, prefix_mask = self._first_pass(window)
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                yield batch, self._continuation_logits(batch, cache, prefix_mask)

    def _score(self, rows: list[_Row], logits: torch.Tensor) -> list[tuple[float, bool]]:
        """(log-likelihood, is greedy) of every request in ``rows`` from its continuation logits."""
        scores = logits if self.softmax_dtype is None else logits.to(self.softmax_dtype)
        device = scores.device
        targets = torch.tensor([token for row in rows for token in row.continuation], device=device)
        request = torch.repeat_interleave(torch.tensor([len(row.continuation) for row in rows], device=device))
        logprobs, greedy = target_logprobs(scores, targets)
        logliks = torch.zeros(len(rows), dtype=scores.dtype, device=device)
        logliks.index_add_(0, request, logprobs)
        misses = torch.zeros(len(rows), dtype=torch.long, device=device)
        misses.index_add_(0, request, (greedy != targets).long())
        return list(zip(logliks.tolist(), (misses == 0).tolist(), strict=True))

    def _loglikelihood_tokens(
        self,
        requests: list[Request],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        """Stock ``HFLM._loglikelihood_tokens`` for causal LMs, running shared context prefixes once."""
        if not self._fast:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        batch_size = self.batch_size
        if batch_size == "auto":
            batch_size = override_bs or self._detect_batch_size()
        batch_size = int(batch_size)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(
            total=len(requests),
            disable=(disable_tqdm or (self.rank != 0)),
            desc="Running loglikelihood requests",
        )
        for rows, logits in self._logits(requests, batch_size):
            for row, answer in zip(rows, self._score(rows, logits), strict=True):
                results[row.index] = answer
                request_str = requests[row.index][0]
                if request_str is not None:
                    # loglikelihood_rolling's windows have no key; it caches per document itself.
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
            pbar.update(len(rows))
        pbar.close()
        return results


def make_lm(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    batch_size: int | str = EVAL_BATCH_SIZE,
    fast: bool = True,
    **kwargs,
) -> HFLM:
    """An lm-eval model wrapping an in-memory model: ``FastHFLM`` if ``fast``, else stock ``HFLM``.

    ``batch_size`` is lm-eval's: requests per forward pass, or ``"auto"`` to find the largest that fits.
    """
    cls = FastHFLM if fast else HFLM
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)
