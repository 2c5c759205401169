"""lm-eval's HF model, scoring log-likelihoods without full-vocabulary logits at every position.

Stock ``HFLM`` runs the LM head (and a log-softmax over the vocabulary) at every input
position, then keeps only the continuation positions. For Gemma-3's 262,144-token
vocabulary that head dominates CPU time. ``FastHFLM`` asks the model for logits only at the
continuation positions, through transformers' ``logits_to_keep`` argument given as a boolean
``(batch, sequence)`` mask: the model runs its own decoder, final norm, LM head and any final
logit soft-capping, just on fewer rows. Everything else (tokenisation, left truncation at
``max_length``, the Collator's length sorting and one-token-continuation grouping, batching,
``cache_hook``, the progress bar) is stock lm-eval, so results equal stock up to float rounding.
"""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F
import transformers
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat
from tqdm import tqdm

__all__ = ["FastHFLM", "make_lm"]

log = logging.getLogger(__name__)

Request = tuple[tuple[str, str] | None, list[int], list[int]]


def _sort_key(req: Request) -> tuple[int, tuple[int, ...]]:
    """Stock lm-eval's order: longest context+continuation first, ties by tokens."""
    toks = req[1] + req[2]
    return -len(toks), tuple(toks)


def _group_key(req: Request) -> list[int]:
    """Stock lm-eval's key for reusing one forward pass across one-token continuations."""
    return req[1] + req[2][:-1]


class FastHFLM(HFLM):
    """``HFLM`` whose causal-LM log-likelihoods compute logits only at continuation positions.

    Only ``_loglikelihood_tokens`` is overridden (``loglikelihood`` and ``loglikelihood_rolling``
    both go through it): it is the smallest piece that knows which positions are scored, since
    stock ``_model_call`` receives only the padded token ids. It applies to decoder-only models
    that take a boolean ``logits_to_keep`` mask (checked once, on a tiny probe); other models are
    scored by stock code.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fast = self.backend == "causal" and self._honours_logits_mask()
        if not self._fast:
            log.warning(
                "FastHFLM: %s (%s backend, transformers %s) cannot give logits at chosen positions only; "
                "scoring as stock HFLM",
                type(self.model).__name__,
                self.backend,
                transformers.__version__,
            )

    def _honours_logits_mask(self) -> bool:
        """Whether ``model(ids, logits_to_keep=<bool [batch, seq] mask>)`` returns logits at just the masked positions.

        True for in-library models of transformers releases whose ``slice_logits_to_keep`` takes
        boolean masks (5.24 does); older releases index ``hidden_states[:, logits_to_keep, :]``
        and raise, as may remote-code models.
        """
        if "logits_to_keep" not in inspect.signature(self.model.forward).parameters:
            return False
        ids = torch.full((2, 3), self.prefix_token_id, dtype=torch.long, device=self.device)
        keep = torch.tensor([[False, True, False], [True, False, True]])
        try:
            with torch.no_grad():
                logits = self.model(ids, logits_to_keep=keep).logits
        except (IndexError, TypeError, ValueError):
            return False
        return logits.ndim == 2 and logits.shape[0] == 3

    def _continuation_logits(self, inps: torch.Tensor, inplens: list[int], contlens: list[int]) -> torch.Tensor:
        """Logits ``[sum(contlens), vocab]``: row i of ``inps`` at positions ``[inplens[i] - contlens[i], inplens[i])``.

        Those are the positions stock keeps (``_select_cont_toks``), in the same order. The model
        call is stock ``_model_call``'s plus a boolean ``logits_to_keep`` mask, kept on the CPU so
        that it indexes hidden states on any device (also a model spread over several GPUs).
        """
        positions = torch.arange(inps.shape[1]).unsqueeze(0)
        ends = torch.tensor(inplens).unsqueeze(1)
        keep = (positions >= ends - torch.tensor(contlens).unsqueeze(1)) & (positions < ends)
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            return self.model(inps, logits_to_keep=keep).logits

    def _loglikelihood_tokens(
        self,
        requests: list[Request],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        """Stock ``HFLM._loglikelihood_tokens`` for causal LMs, with the LM head at continuation positions only."""
        if not self._fast:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        res: list[tuple[float, bool]] = []
        re_ord = Collator(
            requests,
            sort_fn=_sort_key,
            group_by="contexts" if self.logits_cache else None,
            group_fn=_group_key,
        )
        n_reordered_requests = len(re_ord)
        batch_size = self.batch_size if self.batch_size != "auto" else override_bs if override_bs is not None else 0
        batch_fn = (
            self._batch_scheduler
            if self.batch_size == "auto" and n_reordered_requests > 0 and not override_bs
            else None
        )
        if batch_fn is not None:
            self.batch_sizes = {}
        pbar = tqdm(
            total=len(requests),
            disable=(disable_tqdm or (self.rank != 0)),
            desc="Running loglikelihood requests",
        )
        for chunk in re_ord.get_batched(n=batch_size, batch_fn=batch_fn):
            inps = []
            for _, context_enc, continuation_enc in chunk:
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
                inps.append(
                    torch.tensor(
                        (context_enc + continuation_enc)[-(self.max_length + 1) :][:-1],
                        dtype=torch.long,
                        device=self.device,
                    )
                )
            inplens = [len(inp) for inp in inps]
            contlens = [len(continuation_enc) for _, _, continuation_enc in chunk]
            batched_inps = pad_and_concat(max(inplens), inps, padding_side="right")  # [batch, padding_len_inp]
            multi_logits = F.log_softmax(
                self._continuation_logits(batched_inps, inplens, contlens),
                dim=-1,
                dtype=self.softmax_dtype,
            ).split(contlens)  # per request [contlen, vocab]
            for (request_str, ctx_tokens, cont_toks), logits in zip(chunk, multi_logits, strict=True):
                logits = logits.unsqueeze(0)  # [1, contlen, vocab]
                greedy_tokens = logits.argmax(dim=-1)
                # As stock: one-token continuations sharing context+continuation[:-1] reuse these logits.
                for member_str, member_toks, member_logits in re_ord.get_cache(
                    req_str=request_str,
                    cxt_toks=ctx_tokens,
                    cont_toks=cont_toks,
                    logits=logits,
                ):
                    target = torch.tensor(member_toks, dtype=torch.long, device=self.device).unsqueeze(0)
                    max_equal = (greedy_tokens[:, -target.shape[1] :] == target).all()
                    token_logprobs = torch.gather(member_logits, 2, target.unsqueeze(-1)).squeeze(-1)
                    answer = (float(token_logprobs.sum()), bool(max_equal))
                    res.append(answer)
                    if member_str is not None:
                        # loglikelihood_rolling's windows have no key; it caches per document itself.
                        self.cache_hook.add_partial("loglikelihood", member_str, answer)
                    pbar.update(1)
        pbar.close()
        return re_ord.get_original(res)


def make_lm(
    model: transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase,
    batch_size: int = 8,
    fast: bool = True,
    **kwargs,
) -> HFLM:
    """An lm-eval model wrapping an in-memory model: ``FastHFLM`` if ``fast``, else stock ``HFLM``."""
    cls = FastHFLM if fast else HFLM
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)
