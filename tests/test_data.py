"""Calibration documents and the seeded window draw."""

from __future__ import annotations

import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_tiny_tokenizer

from companion.errors import CompanionError
from companion.method import calibration as data
from companion.method.calibration import (
    Documents,
    load_documents,
    sample_windows,
    wikitext_articles,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setattr("companion.hub.hub_reachable", lambda: False)


def _docs(lengths: list[int]) -> Documents:
    texts = [" ".join(f"w{(i + j) % 90}" for j in range(n)) for i, n in enumerate(lengths)]
    return Documents(texts, "toy", "file", "local", "toy", "0" * 64)


def test_windows_follow_the_paper_code_draw():
    docs = _docs([3, 40, 10, 25, 60])
    tokenizer = make_tiny_tokenizer()
    windows = sample_windows(tokenizer, docs, samples=6, seqlen=12, seed=7)
    encoded = tokenizer(docs.texts)["input_ids"]
    rng = random.Random(7)
    expected = []
    while len(expected) < 6:  # the GPTQ / EntroDrop loop, written out
        i = rng.randint(0, len(docs.texts) - 1)
        if len(encoded[i]) <= 12:
            continue
        j = rng.randint(0, len(encoded[i]) - 12 - 1)
        expected.append((i, j))
    assert list(zip(windows.doc_index, windows.offset)) == expected
    for row, (i, j) in zip(windows.input_ids.tolist(), expected):
        assert row == encoded[i][j:j + 12]
    again = sample_windows(tokenizer, docs, samples=6, seqlen=12, seed=7)
    assert again.input_ids.equal(windows.input_ids)
    assert windows.provenance()["windows"] == [list(p) for p in expected]


def test_pool_without_long_documents_is_an_error():
    with pytest.raises(CompanionError, match="no document of 'toy' is longer than the window \\(50 tokens; longest has 40\\)"):
        sample_windows(make_tiny_tokenizer(), _docs([3, 40]), samples=2, seqlen=50, seed=0)


def test_wikitext_articles_split_at_top_level_headings():
    rows = ["", " = A = \n", "", " x y \n", " = = Sub = = \n", " z \n", " = B = \n", " w \n"]
    assert wikitext_articles(rows) == [" = A = \n x y \n = = Sub = = \n z \n", " = B = \n w \n"]


def test_document_files(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nline\n\nsecond doc\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps([{"text": "x"}, {"text": "y"}]))
    pq.write_table(pa.table({"text": ["p", "q"]}), tmp_path / "d.parquet")
    assert load_documents(str(tmp_path / "a.txt")).texts == ["first doc\nline", "second doc\n"]
    assert load_documents(str(tmp_path / "b.jsonl")).texts == ["one", "two"]
    assert load_documents(str(tmp_path / "c.json")).texts == ["x", "y"]
    assert load_documents(str(tmp_path / "d.parquet")).texts == ["p", "q"]
    (tmp_path / "e.csv").write_text("a,b")
    with pytest.raises(CompanionError, match="unsupported document file"):
        load_documents(str(tmp_path / "e.csv"))
    with pytest.raises(CompanionError, match="unknown calibration source 'nope'"):
        load_documents("nope")


def test_named_sources_offline(monkeypatch):
    if not os.environ.get("COMPANION_DATA_DIR"):
        pytest.skip("COMPANION_DATA_DIR is not set")
    wiki = load_documents("wikitext2")
    assert wiki.origin == "local" and wiki.split == "validation" and len(wiki.texts) == 60
    c4 = load_documents("c4")
    assert c4.path == "c4/c4_valid_part_of_0.json" and len(c4.texts) == data.C4_VALIDATION_DOCUMENTS == 1025
    assert c4.texts[0].startswith("The woman who died after falling from a bridge over the A21")
    with pytest.raises(CompanionError, match="wikitext2:train is read from the Hub only"):
        load_documents("wikitext2", "train")
    monkeypatch.delenv("COMPANION_DATA_DIR")
    with pytest.raises(CompanionError, match="COMPANION_DATA_DIR"):
        load_documents("c4")


@pytest.mark.parametrize("reachable", [True, False])
def test_data_come_from_the_hub_when_asked_or_reachable(monkeypatch, reachable):
    from companion import hub

    monkeypatch.setattr(hub, "hub_reachable", lambda: reachable)
    assert [hub.use_hub(source) for source in hub.DATA_SOURCES] == [reachable, True, False]  # auto, hub, local
