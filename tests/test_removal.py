"""Removal criteria: ``ppl`` and ``sleb`` against plain recomputations with ``temporarily_pruned``,
``taylor`` against finite differences and a direct autograd computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_model

from companion.errors import CompanionError
from companion.method.removal import block_parameters, ppl, removal_nll, sleb, taylor
from companion.model.surgery import Pruning, temporarily_pruned

IDS = torch.randint(3, 96, (5, 16), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request):
    return make_tiny_model(request.param, seed=2)


def _mean_nll(model, granularity: str, removed: list[int]) -> float:
    """Calibration NLL per token of the model with ``removed`` blocks removed: a plain full forward."""
    with torch.inference_mode(), temporarily_pruned(model, Pruning(granularity, removed)):
        logits = model(input_ids=IDS, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), IDS[:, 1:].reshape(-1)).item()


@pytest.mark.parametrize("granularity", ["attn", "mlp", "layer"])
def test_ppl_is_the_nll_increase_of_removing_each_block(model, granularity):
    result = ppl(model, IDS, granularity, [0, 1, 2, 3], batch_size=2)
    dense = _mean_nll(model, granularity, [])
    assert result.details["dense_nll"] == pytest.approx(dense, rel=1e-5)
    for block in range(4):
        assert result.scores[block] == pytest.approx(_mean_nll(model, granularity, [block]) - dense, abs=1e-5)
    assert (result.cost.passes, result.cost.backward_passes) == (5, 0)
    for block, per_window in result.details["window_delta"].items():
        assert sum(per_window) / len(per_window) == pytest.approx(result.scores[block], abs=1e-6)
    # the yardstick's machinery on the same windows is the same numbers
    assert removal_nll(model, IDS, granularity, [0, 1, 2, 3]).mean_delta().tolist() == pytest.approx(
        list(result.scores.values()), abs=1e-6)


@pytest.mark.parametrize("granularity", ["attn", "mlp", "layer"])
def test_sleb_equals_a_brute_force_greedy_search(model, granularity):
    candidates = [0, 1, 2, 3] if granularity != "layer" else [1, 2, 3]
    result = sleb(model, IDS, granularity, candidates, k_max=len(candidates) - 1, batch_size=3)
    order, values, remaining = [], [], list(candidates)
    for _ in range(len(candidates) - 1):
        trial = {c: _mean_nll(model, granularity, sorted([*order, c])) for c in remaining}
        best = min(remaining, key=lambda c: (trial[c], c))
        order.append(best)
        values.append(trial[best])
        remaining.remove(best)
    assert result.details["order"] == order
    assert result.details["values"] == pytest.approx(values, abs=1e-5)
    ranked = sorted(result.scores, key=result.scores.get)
    assert ranked == [*order, *remaining] and sorted(result.scores) == candidates
    assert result.cost.passes == sum(len(candidates) - step + 1 for step in range(len(candidates) - 1))


def test_sleb_checks_its_budget(model):
    with pytest.raises(CompanionError, match="k_max"):
        sleb(model, IDS, "attn", [1, 2], k_max=0)
    clipped = sleb(model, IDS, "attn", [1, 2], k_max=3, batch_size=3)  # more steps than candidates: all of them
    assert clipped.details["order"] == sleb(model, IDS, "attn", [1, 2], k_max=2, batch_size=3).details["order"]
    assert len(clipped.details["order"]) == 2


@pytest.mark.parametrize("granularity", ["attn", "mlp", "layer"])
def test_taylor_agrees_with_finite_differences_and_autograd(granularity):
    model = make_tiny_model("gemma3" if granularity == "mlp" else "llama", seed=3).double()
    result = taylor(model, IDS, granularity, [0, 1, 2, 3], batch_size=2)
    assert all(p.grad is None for p in model.parameters())  # the model is left as it was

    def loss() -> torch.Tensor:  # in float64 (transformers' own loss casts the logits to float32)
        logits = model(input_ids=IDS, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), IDS[:, 1:].reshape(-1))

    eps = 1e-3  # the norms compute in float32 even in a float64 model, which bounds how small eps can be
    for block in range(4):
        params = block_parameters(model, granularity, block)
        originals = [p.detach().clone() for p in params]
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, w in zip(params, originals):
                    p.copy_(w * (1 + sign * eps))
            with torch.no_grad():
                values.append(loss().item())
        with torch.no_grad():
            for p, w in zip(params, originals):
                p.copy_(w)
        assert (values[0] - values[1]) / (2 * eps) == pytest.approx(result.details["first_order"][block], rel=1e-3)
    model.zero_grad()
    loss().backward()
    for block in range(4):
        direct = sum((p * p.grad).abs().sum().item() for p in block_parameters(model, granularity, block))
        assert result.scores[block] == pytest.approx(direct, rel=1e-9)
    assert result.cost.backward_passes == 1
