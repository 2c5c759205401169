"""The yardstick: removing a block in it equals evaluating the pruned checkpoint that ``prune`` saves,
an identity block costs exactly nothing, and the held-out windows come from distinct documents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_model, make_tiny_tokenizer

from companion.cli import main
from companion.errors import CompanionError
from companion.experiments.yardstick import (
    TABLE_COLUMNS,
    WINDOW_COLUMNS,
    delta_interval,
    heldout_windows,
    measure,
)
from companion.method.calibration import Documents, Windows
from companion.model.loading import load_model

WINDOWS = Windows(torch.randint(3, 96, (4, 20), generator=torch.Generator().manual_seed(0)), [3, 5, 8, 13], [0] * 4)


def _plain_nll(model, ids: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        logits = model(input_ids=ids, use_cache=False).logits
    return np.array([F.cross_entropy(logits[i, :-1], ids[i, 1:], reduction="sum").item() for i in range(len(ids))])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    folders = {}
    for family in ("llama", "gemma3"):
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        make_tiny_model(family).save_pretrained(folder)
        make_tiny_tokenizer().save_pretrained(folder)
        folders[family] = str(folder)
    return folders


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_removing_a_block_equals_evaluating_the_saved_pruned_checkpoint(family, checkpoints, tmp_path, capsys):
    dense = load_model(checkpoints[family], device="cpu")
    result = measure(dense.model, WINDOWS, family, blocks=[1, 3], batch_size=3, n_resamples=200)
    assert list(result.table.columns) == TABLE_COLUMNS and list(result.windows.columns) == WINDOW_COLUMNS
    nll = result.windows.set_index(["granularity", "block", "window"])["nll"].sort_index()
    dense_nll = _plain_nll(dense.model, WINDOWS.input_ids)
    for granularity in ("attn", "mlp", "layer"):
        assert nll.loc[granularity, -1].to_numpy() == pytest.approx(dense_nll, rel=1e-5)
        for block in (1, 3):  # a middle block, and the last (no layer left after it)
            out = tmp_path / f"{granularity}-{block}"
            assert main(["prune", "--model", checkpoints[family], "--device", "cpu", "--granularity", granularity,
                         "--layers", str(block), "--out", str(out)]) == 0
            pruned_nll = _plain_nll(load_model(str(out), device="cpu").model, WINDOWS.input_ids)
            mine = nll.loc[granularity, block]
            assert list(mine.index) == WINDOWS.doc_index
            assert mine.to_numpy() == pytest.approx(pruned_nll, rel=1e-5)
            row = result.table.set_index(["granularity", "block"]).loc[(granularity, block)]
            tokens = 4 * 19
            assert row["delta_nll"] == pytest.approx((pruned_nll.sum() - dense_nll.sum()) / tokens, abs=1e-5)
            assert row["ci_low"] <= row["delta_nll"] <= row["ci_high"]
            assert (row["n_windows"], row["tokens"], row["model"]) == (4, tokens, family)
    capsys.readouterr()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_a_block_whose_output_equals_its_input_costs_exactly_nothing(family):
    model = make_tiny_model(family)
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    table = measure(model, WINDOWS, family, blocks=[1, 2], n_resamples=200).table.set_index(["granularity", "block"])
    for granularity in ("attn", "mlp", "layer"):
        assert tuple(table.loc[(granularity, 2), ["delta_nll", "ci_low", "ci_high"]]) == (0.0, 0.0, 0.0)
        assert table.loc[(granularity, 1), "delta_nll"] != 0.0


def test_heldout_windows_come_from_distinct_documents_and_are_seeded():
    texts = [" ".join(f"w{(i * 7 + j) % 90}" for j in range(length)) for i, length in enumerate([5, 40, 12, 50, 33, 60])]
    docs = Documents(texts, "toy", "test", "file", "toy.txt", "0" * 64)
    tokenizer = make_tiny_tokenizer()
    windows = heldout_windows(tokenizer, docs, samples=3, seqlen=30, seed=1)
    assert windows.input_ids.shape == (3, 30)
    assert len(set(windows.doc_index)) == 3 and windows.doc_index == sorted(windows.doc_index)
    assert set(windows.doc_index) <= {1, 3, 4, 5}  # the documents longer than 30 tokens
    for row, doc in zip(windows.input_ids, windows.doc_index):
        assert row.tolist() == tokenizer(texts[doc])["input_ids"][:30]
    assert heldout_windows(tokenizer, docs, samples=3, seqlen=30, seed=1).doc_index == windows.doc_index
    with pytest.raises(CompanionError, match="only 4 documents"):
        heldout_windows(tokenizer, docs, samples=5, seqlen=30)


def test_delta_interval_is_the_ratio_of_sums_with_a_bootstrap_interval():
    rng = np.random.default_rng(0)
    delta, tokens = rng.normal(3.0, 1.0, 20), np.full(20, 10.0)
    value, low, high = delta_interval(delta, tokens, n_resamples=999)
    assert value == pytest.approx(delta.sum() / tokens.sum())
    assert low < value < high and high - low < 4 * delta.std() / np.sqrt(20) / 10 * 1.96


@pytest.mark.integration
@pytest.mark.parametrize("spec", ["gemma-3-270m", "smollm2-135m"])
def test_yardstick_of_an_embedded_model_equals_plain_pruned_forwards(spec):
    """On the real models (Gemma-3's sliding and global layers, its 262k-token head): the first and the
    last block removed in the yardstick equal a full forward of the temporarily pruned model."""
    from companion.model.surgery import Pruning, temporarily_pruned

    loaded = load_model(spec, device="cpu", dtype="float32")
    last = len(loaded.model.model.layers) - 1
    ids = torch.randint(100, 20000, (2, 24), generator=torch.Generator().manual_seed(0))
    result = measure(loaded.model, Windows(ids, [0, 1], [0, 0]), spec, blocks=[0, last], n_resamples=100)
    nll = result.windows.set_index(["granularity", "block", "window"])["nll"].sort_index()
    for granularity in ("attn", "mlp", "layer"):
        for block in (0, last):
            with temporarily_pruned(loaded.model, Pruning(granularity, [block])):
                expected = _plain_nll(loaded.model, ids)
            assert nll.loc[granularity, block].to_numpy() == pytest.approx(expected, rel=1e-5)
