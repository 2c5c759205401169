"""Criteria that remove blocks and measure what it costs: one-shot perplexity (``ppl``), iterative
removal (``sleb``) and the first-order Taylor estimate (``taylor``).

All three score the candidate blocks of one granularity on calibration windows (token ids of shape
(samples, seqlen)); lower values are dropped first. Each returns a :class:`CriterionResult` with its
compute cost, so criteria can be compared for what they cost as well as for what they find.

The perplexity criteria share one exact, incremental evaluation (:func:`removal_nll`): a pass of the
model with the already removed blocks removed caches the hidden state at the input of every decoder
layer, and removing one more block ``b`` then only runs the layers from ``b`` on, starting from that
cached state. The layers before ``b`` compute the same thing with and without ``b``, so this equals
evaluating the pruned model from scratch. The later layers run inside the model's own forward pass
(the decoder's layer list is cut to its tail for the call and the cached state substituted at the
first layer's input), so the model's own masks (sliding and global), rotary embeddings, final norm,
logit soft-capping and LM head are used. The held-out yardstick
(:mod:`companion.experiments.yardstick`) is the same function on other windows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from companion.errors import CompanionError
from companion.model.layouts import decoder, decoder_layers, text_config
from companion.model.surgery import Pruning, temporarily_pruned

LOGITS_BUDGET = 2**27  # floats of logits per forward pass (512 MiB in fp32) when no batch size is given


@dataclass
class Cost:
    """What a criterion computed: ``passes`` over all its windows (a pass may start mid-stack),
    ``layer_passes`` decoder layers run over all windows, summed over passes (a full pass of an
    L-layer model counts L), ``backward_passes`` over all windows, and wall-clock ``seconds``."""

    passes: int = 0
    layer_passes: int = 0
    backward_passes: int = 0
    seconds: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.passes + other.passes, self.layer_passes + other.layer_passes,
                    self.backward_passes + other.backward_passes, self.seconds + other.seconds)


@dataclass
class RemovalNLL:
    """Summed negative log-likelihood per window of the model with ``removed_blocks`` removed
    (``base``, shape (windows,)) and with each of ``blocks`` removed as well (``nll``, shape
    (len(blocks), windows)); ``tokens`` counts the predicted tokens of each window."""

    granularity: str
    blocks: list[int]
    removed_blocks: list[int]
    base: torch.Tensor
    nll: torch.Tensor
    tokens: torch.Tensor
    cost: Cost

    def mean_delta(self) -> torch.Tensor:
        """Increase of NLL per token over all windows when each block is removed, shape (len(blocks),)."""
        return (self.nll.sum(1) - self.base.sum()) / self.tokens.sum()


@dataclass
class CriterionResult:
    """One criterion's ``scores`` (candidate block -> value, lower dropped first), its cost, and
    criterion-specific ``details`` (for ``sleb`` the removal order and each step's value)."""

    criterion: str
    granularity: str
    scores: dict[int, float]
    cost: Cost
    details: dict = field(default_factory=dict)


def default_batch_size(model: nn.Module, seqlen: int) -> int:
    """Windows per forward pass such that the logits stay within ``LOGITS_BUDGET`` floats."""
    return max(1, LOGITS_BUDGET // (seqlen * text_config(model).vocab_size))


def _window_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Summed NLL of each window's next tokens, shape (batch,); one window's logits at a time, so the
    log-softmax over a large vocabulary is never materialised for the whole batch."""
    dtype = torch.promote_types(logits.dtype, torch.float32)  # at least fp32, as transformers' loss
    return torch.stack([F.cross_entropy(logits[b, :-1].to(dtype), input_ids[b, 1:], reduction="sum")
                        for b in range(len(input_ids))])


@contextmanager
def _removed(model: nn.Module, granularity: str, blocks: Sequence[int]) -> Iterator[None]:
    with temporarily_pruned(model, Pruning(granularity, list(blocks))) if blocks else nullcontext():
        yield


@contextmanager
def _tail(model: nn.Module, start: int) -> Iterator[nn.ModuleList]:
    """The decoder's layer list (and ``layer_types``, ``num_hidden_layers``) cut to ``layers[start:]``
    for the duration of the block, so the model's forward runs only those layers."""
    stack, config = decoder(model), text_config(model)
    saved = stack.layers, config.num_hidden_layers, getattr(config, "layer_types", None)
    stack.layers = nn.ModuleList(list(saved[0])[start:])
    config.num_hidden_layers = len(stack.layers)
    if saved[2] is not None:
        config.layer_types = list(saved[2])[start:]
    try:
        yield stack.layers
    finally:
        stack.layers = saved[0]
        config.num_hidden_layers = saved[1]
        if saved[2] is not None:
            config.layer_types = saved[2]


def _replace_input(hidden: torch.Tensor):
    def hook(module, args, kwargs):
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}
    return hook


def _replace_output(hidden: torch.Tensor):
    def hook(module, args, output):
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
    return hook


def _original_indices(granularity: str, num_layers: int, removed: Sequence[int]) -> list[int]:
    """The original index of each decoder layer present after ``removed`` blocks are removed."""
    return [i for i in range(num_layers) if granularity != "layer" or i not in set(removed)]


def _capture_pass(model: nn.Module, input_ids: torch.Tensor, present: list[int]) -> tuple[dict, torch.Tensor]:
    """One full pass: the hidden state at each present layer's input (by original index) and the NLLs."""
    inputs: dict[int, torch.Tensor] = {}

    def keeper(index: int):
        def hook(module, args, kwargs):
            inputs[index] = args[0] if args else kwargs["hidden_states"]
        return hook

    handles = [layer.register_forward_pre_hook(keeper(index), with_kwargs=True)
               for index, layer in zip(present, decoder_layers(model))]
    try:
        logits = model(input_ids=input_ids, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    return inputs, _window_nll(logits, input_ids)


def _tail_pass(model: nn.Module, input_ids: torch.Tensor, start: int, hidden: torch.Tensor) -> torch.Tensor:
    """NLLs of the (pruned) model run from present layer ``start`` on, with ``hidden`` as its input.

    When no layer is left after ``start`` the last present layer runs and its output is replaced
    (one layer of waste, at the last block only), so the final norm and head still see ``hidden``.
    """
    count = len(decoder_layers(model))
    first = min(start, count - 1)
    with _tail(model, first) as layers:
        handle = (layers[0].register_forward_pre_hook(_replace_input(hidden), with_kwargs=True) if start < count
                  else layers[0].register_forward_hook(_replace_output(hidden)))
        try:
            logits = model(input_ids=input_ids, use_cache=False).logits
        finally:
            handle.remove()
    return _window_nll(logits, input_ids)


def removal_nll(model: nn.Module, input_ids: torch.Tensor, granularity: str, blocks: Sequence[int],
                removed: Sequence[int] = (), batch_size: int | None = None) -> RemovalNLL:
    """Per-window summed NLL of ``model`` with ``removed`` blocks removed, and with each of ``blocks``
    removed in addition, computed incrementally from cached layer inputs (exact; see the module docstring).

    Block indices refer to the model's decoder layers as they are now. ``input_ids`` (windows, seqlen)
    are full windows (no padding); every window's tokens after the first are predicted.
    """
    start_time = time.perf_counter()
    num_layers = len(decoder_layers(model))
    blocks, removed = [int(b) for b in blocks], sorted(int(b) for b in removed)
    bad = [b for b in [*blocks, *removed] if not 0 <= b < num_layers]
    if bad:
        raise CompanionError(f"cannot remove {granularity} block {bad[0]}: the model has {num_layers} layers")
    if set(blocks) & set(removed):
        raise CompanionError(f"{granularity} block {min(set(blocks) & set(removed))} is already removed")
    if input_ids.ndim != 2 or input_ids.shape[1] < 2:
        raise CompanionError("windows must be token ids of shape (samples, seqlen) with seqlen >= 2")
    device = next(model.parameters()).device
    batch_size = batch_size or default_batch_size(model, input_ids.shape[1])
    present = _original_indices(granularity, num_layers, removed)
    base, nll = [], []
    with torch.inference_mode():
        for lo in range(0, len(input_ids), batch_size):
            ids = input_ids[lo:lo + batch_size].to(device)
            with _removed(model, granularity, removed):
                inputs, dense = _capture_pass(model, ids, present)
            base.append(dense)
            row = []
            for b in blocks:
                pruned = sorted([*removed, b])
                with _removed(model, granularity, pruned):
                    start = sum(1 for i in _original_indices(granularity, num_layers, pruned) if i < b)
                    row.append(_tail_pass(model, ids, start, inputs[b]))
            nll.append(torch.stack(row) if row else dense.new_zeros((0, len(ids))))
        base_nll, all_nll = torch.cat(base).cpu(), torch.cat(nll, dim=1).cpu()
    if not (torch.isfinite(base_nll).all() and torch.isfinite(all_nll).all()):
        raise CompanionError("the negative log-likelihood is not finite (NaN or Inf in the model's outputs); "
                             "try another --dtype")
    tokens = torch.full((len(input_ids),), float(input_ids.shape[1] - 1))
    layer_passes = len(present) + sum(max(1, len(present) - present.index(b) - (granularity == "layer")) for b in blocks)
    cost = Cost(passes=1 + len(blocks), layer_passes=layer_passes, seconds=time.perf_counter() - start_time)
    return RemovalNLL(granularity, blocks, removed, base_nll, all_nll, tokens, cost)


def ppl(model: nn.Module, input_ids: torch.Tensor, granularity: str, candidates: Sequence[int],
        batch_size: int | None = None, windows: int | None = None) -> CriterionResult:
    """Shortened LLaMA's one-shot PPL criterion: the increase of calibration NLL per token (the log of
    the perplexity ratio, which orders blocks as perplexity does) when the block alone is removed.
    Lowest first: the block whose removal costs least is dropped first. ``details["window_delta"]``
    holds each block's NLL increase per token on each window, for intervals that resample windows.
    ``windows``: only the first that many calibration windows (the small sets the paper scores with)."""
    input_ids = input_ids[:windows]
    result = removal_nll(model, input_ids, granularity, candidates, batch_size=batch_size)
    delta = result.mean_delta().tolist()
    windows = ((result.nll - result.base) / result.tokens).tolist()
    dense = (result.base.sum() / result.tokens.sum()).item()
    return CriterionResult("ppl", granularity, dict(zip(result.blocks, delta)), result.cost,
                           {"dense_nll": dense, "tokens": int(result.tokens.sum().item()),
                            "window_delta": dict(zip(result.blocks, windows))})


def sleb(model: nn.Module, input_ids: torch.Tensor, granularity: str, candidates: Sequence[int],
         k_max: int | None = None, batch_size: int | None = None, windows: int | None = None) -> CriterionResult:
    """SLEB's iterative removal (BlockPruner's over attention and MLP sub-blocks): at each of ``k_max``
    steps (default: until one candidate is left; at most the candidates), remove the candidate whose removal, given the blocks
    already removed, leaves the lowest calibration NLL per token (the lowest perplexity); ties go to the
    lower index. ``windows``: only the first that many calibration windows.

    ``details``: ``order`` (blocks in removal order), ``values`` (NLL per token after each step) and
    ``dense_nll``. ``scores``: the step at which a block is removed (0 first); candidates still present
    after ``k_max`` steps follow, ranked by the NLL their removal would have given at the last step.
    Lowest first.
    """
    candidates = sorted(int(b) for b in candidates)
    input_ids = input_ids[:windows]
    k_max = max(len(candidates) - 1, 1) if k_max is None else min(k_max, len(candidates))
    if k_max < 1:
        raise CompanionError(f"sleb needs k_max >= 1 and a candidate block (got k_max {k_max}, "
                             f"{len(candidates)} candidates)")
    order: list[int] = []
    values: list[float] = []
    cost, dense = Cost(), None
    remaining = list(candidates)
    for _ in range(k_max):
        step = removal_nll(model, input_ids, granularity, remaining, order, batch_size)
        cost = cost + step.cost
        per_token = step.nll.sum(1) / step.tokens.sum()
        if dense is None:
            dense = (step.base.sum() / step.tokens.sum()).item()
        best = int(torch.argmin(per_token))
        order.append(remaining.pop(best))
        values.append(per_token[best].item())
    leftover = sorted(zip(per_token.tolist()[:best] + per_token.tolist()[best + 1:], remaining))
    scores = {b: float(i) for i, b in enumerate(order)}
    scores.update({b: float(k_max + i) for i, (_, b) in enumerate(leftover)})
    return CriterionResult("sleb", granularity, scores, cost, {"order": order, "values": values, "dense_nll": dense})


def block_parameters(model: nn.Module, granularity: str, block: int) -> list[nn.Parameter]:
    """The parameters that removing ``block`` at ``granularity`` removes (the sub-layer and its norms,
    or the whole layer), found by removing it and seeing which parameters are gone."""
    before = {id(p): p for p in model.parameters()}
    with temporarily_pruned(model, Pruning(granularity, [block])):
        left = {id(p) for p in model.parameters()}
    return [p for key, p in before.items() if key not in left]


def taylor(model: nn.Module, input_ids: torch.Tensor, granularity: str, candidates: Sequence[int],
           batch_size: int = 1, windows: int | None = None) -> CriterionResult:
    """Shortened LLaMA's Taylor criterion: for each block, Σ over its weights of ``|W ⊙ ∂L/∂W|``, with L
    the mean NLL per token of the calibration windows (one backward pass over them). Lowest first.

    Taylor+ is this score with the first and last blocks kept out of the candidates, as the caller's
    protection does. ``details["first_order"]`` holds the signed Σ W ⊙ ∂L/∂W per block: the
    first-order change of L when the block's weights are scaled by (1 + ε) is ε times it, and
    removing them changes L by about minus it. Needs autograd, so it runs outside ``inference_mode``.
    ``windows``: only the first that many calibration windows.
    """
    start_time = time.perf_counter()
    input_ids = input_ids[:windows]
    candidates = sorted(int(b) for b in candidates)
    params = {b: block_parameters(model, granularity, b) for b in candidates}
    chosen = {id(p) for ps in params.values() for p in ps}
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    device = next(model.parameters()).device
    total = input_ids.shape[0] * (input_ids.shape[1] - 1)
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in chosen)
            p.grad = None
        with torch.enable_grad():
            for lo in range(0, len(input_ids), batch_size):
                ids = input_ids[lo:lo + batch_size].to(device)
                logits = model(input_ids=ids, use_cache=False).logits
                loss = _window_nll(logits, ids).sum() / total
                if not torch.isfinite(loss):
                    raise CompanionError("the calibration loss is not finite (NaN or Inf in the model's outputs)")
                loss.backward()
        with torch.no_grad():
            products = {b: [p * (p.grad if p.grad is not None else torch.zeros_like(p)) for p in ps]
                        for b, ps in params.items()}
            scores = torch.stack([sum(t.abs().sum() for t in products[b]) for b in candidates]).tolist()
            first = torch.stack([sum(t.sum() for t in products[b]) for b in candidates]).tolist()
    finally:
        for p, requires_grad, grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad
    layers = len(decoder_layers(model))
    cost = Cost(passes=1, layer_passes=layers, backward_passes=1, seconds=time.perf_counter() - start_time)
    return CriterionResult("taylor", granularity, dict(zip(candidates, scores)), cost,
                           {"first_order": dict(zip(candidates, first))})
