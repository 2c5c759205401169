"""The same code on CUDA gives the same numbers as on CPU (skipped where no GPU is visible)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model, make_tiny_tokenizer

from companion.method import criteria
from companion.method.calibration import Windows
from companion.method.scoring import ScoreSettings, collect
from companion.model.loading import LoadedModel
from companion.model.surgery import Pruning, apply_pruning

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
ENTROPY = {n: criteria.get(n).bind() for n in criteria.names(kind="entropy", needs="hidden")}
SIMILARITY = {n: criteria.get(n).bind() for n in criteria.names(kind="similarity", needs="hidden")}


def test_estimators_agree_and_do_not_sync():
    x = torch.randn(4, 64, 48, generator=torch.Generator().manual_seed(0))
    y = x + 0.1 * torch.randn(4, 64, 48, generator=torch.Generator().manual_seed(1))
    cuda_x, cuda_y = x.cuda(), y.cuda()
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_gpu = {name: fn(cuda_x) for name, fn in ENTROPY.items()}
        on_gpu |= {name: fn(cuda_x, cuda_y) for name, fn in SIMILARITY.items()}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name, fn in ENTROPY.items():
        torch.testing.assert_close(on_gpu[name].cpu(), fn(x), rtol=1e-3, atol=1e-3)
    for name, fn in SIMILARITY.items():
        torch.testing.assert_close(on_gpu[name].cpu(), fn(x, y), rtol=1e-4, atol=1e-4)


def test_scoring_on_cuda_matches_cpu():
    windows = Windows(torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(2)), [0] * 4, [0] * 4)
    settings = ScoreSettings(params={"knn": {"k": 3}, "bucket": {"bins": 5}, "renyi": {"alpha": 4.0}}, batch_size=2)
    values = {}
    for device in ("cpu", "cuda"):
        model = make_tiny_model("gemma3").to(device)
        loaded = LoadedModel(model, make_tiny_tokenizer(), "tiny", "memory", "test", torch.device(device),
                             torch.float32)
        values[device] = collect(loaded, windows, settings, progress=False)
    for key, value in values["cpu"].items():
        torch.testing.assert_close(values["cuda"][key], value, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("granularity", ["attn", "layer"])
def test_pruned_generation_on_cuda(granularity):
    model = make_tiny_model("llama").cuda()
    apply_pruning(model, Pruning(granularity, [0, 2]))
    ids = torch.randint(3, 96, (1, 6), device="cuda")
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        uncached = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)
