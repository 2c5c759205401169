"""Provenance: the data source is an explicit choice, Hub and local give the same content hash, results name
no path of the machine that made them, and only code changes make a commit "dirty"."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from companion.cli import main
from companion.errors import CompanionError
from companion.method import calibration
from companion.method.calibration import (
    C4_VALIDATION_DOCUMENTS,
    content_sha256,
    load_documents,
    load_rows,
)
from companion.provenance import environment, git_commit

C4_ROWS = [f"document {i}\nline two of {i}" for i in range(C4_VALIDATION_DOCUMENTS + 5)]
WIKI_ROWS = ["", " = Title = \n", "", " text one \n", " = = Sub = = \n", " text two \n", " = Other = \n", " x \n"]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A COMPANION_DATA_DIR holding a cut-off C4 head (as the real copy) and WikiText-2 rows."""
    root = tmp_path / "data"
    (root / "c4").mkdir(parents=True)
    (root / "wikitext-2-raw-v1").mkdir()
    body = json.dumps([{"text": t} for t in C4_ROWS[:C4_VALIDATION_DOCUMENTS + 1]], indent=4)
    (root / "c4" / "c4_valid_part_of_0.json").write_text(body[:-40])  # the last document is cut off mid-string
    for split in ("validation", "test"):
        lines = "".join(json.dumps({"text": row}) + "\n" for row in WIKI_ROWS)
        (root / "wikitext-2-raw-v1" / f"{split}.json").write_text(lines)
    monkeypatch.setenv("COMPANION_DATA_DIR", str(root))
    return root


def _hub(monkeypatch, reachable: bool, c4_rows: list[str] = C4_ROWS) -> list[dict]:
    """Make the Hub (un)reachable; a fake ``datasets.load_dataset`` serves the shards and records its calls."""
    calls: list[dict] = []

    def load_dataset(path, name=None, *, split, revision=None, data_files=None):
        calls.append({"path": path, "name": name, "split": split, "revision": revision, "data_files": data_files})
        stop = re.fullmatch(r"\w+(?:\[:(\d+)\])?", split).group(1)
        rows = c4_rows if path == "allenai/c4" else WIKI_ROWS
        return {"text": rows[: int(stop)] if stop else rows}

    monkeypatch.setattr(calibration, "hub_reachable", lambda: reachable)
    monkeypatch.setattr("companion.hub.hub_reachable", lambda: reachable)  # read by companion.hub.use_hub
    monkeypatch.setattr(calibration, "_hub_revision", lambda dataset: "0123abcd")
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def _strings(obj) -> list[str]:
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return [obj] if isinstance(obj, str) else []


def _assert_portable(record: dict) -> None:
    for value in _strings(record):
        assert not value.startswith(("/", "~")) and str(Path.home()) not in value, value
        assert "/tmp" not in value and "pytest-" not in value, value


def test_hub_and_local_give_the_same_texts_and_hash(data_dir, monkeypatch):
    calls = _hub(monkeypatch, reachable=True)
    for source in ("c4", "wikitext2"):
        hub = load_documents(source, data_source="hub")
        local = load_documents(source, data_source="local")
        assert hub.texts == local.texts and hub.sha256 == local.sha256
        assert (hub.origin, local.origin) == ("hub", "local")
        assert load_documents(source).origin == "hub"  # auto prefers the reachable Hub
    assert len(load_documents("c4", data_source="local").texts) == C4_VALIDATION_DOCUMENTS
    c4_call = next(c for c in calls if c["path"] == "allenai/c4")
    assert c4_call["data_files"] == {"validation": "en/c4-validation.00000-of-00008.json.gz"}
    assert c4_call["split"] == f"validation[:{C4_VALIDATION_DOCUMENTS}]" and c4_call["revision"] == "0123abcd"
    rows, where = load_rows("wikitext2", "test", data_source="hub")
    assert rows == WIKI_ROWS and where["sha256"] == load_rows("wikitext2", "test", data_source="local")[1]["sha256"]
    assert where["path"] == "Salesforce/wikitext:wikitext-2-raw-v1" and where["revision"] == "0123abcd"


def test_a_different_hub_text_shows_in_the_hash(data_dir, monkeypatch):
    _hub(monkeypatch, reachable=True, c4_rows=["changed"] + C4_ROWS[1:])
    assert load_documents("c4", data_source="hub").sha256 != load_documents("c4", data_source="local").sha256
    assert content_sha256(["ab", "c"]) != content_sha256(["a", "bc"])


def test_data_source_choices_fail_in_one_line(data_dir, monkeypatch, tmp_path):
    _hub(monkeypatch, reachable=False)
    assert load_documents("c4").origin == "local"  # auto falls back to the local copy
    with pytest.raises(CompanionError, match="asked from the Hub, but the Hugging Face Hub is unreachable") as err:
        load_rows("c4", data_source="hub")
    assert "\n" not in str(err.value)
    with pytest.raises(CompanionError, match="unknown data source 'cloud'"):
        load_rows("c4", data_source="cloud")
    (data_dir / "c4" / "c4_valid_part_of_0.json").unlink()
    with pytest.raises(CompanionError, match=r"expected .*c4/c4_valid_part_of_0\.json \(set COMPANION_DATA_DIR") as err:
        load_documents("c4", data_source="local")
    assert "\n" not in str(err.value)
    monkeypatch.delenv("COMPANION_DATA_DIR")
    with pytest.raises(CompanionError, match="COMPANION_DATA_DIR is not set; set it to the folder that holds "
                                             "wikitext-2-raw-v1/validation.json"):
        load_documents("wikitext2", data_source="local")
    with pytest.raises(CompanionError, match="wikitext2:train is read from the Hub only"):
        load_rows("wikitext2", "train", data_source="local")
    (tmp_path / "mine.txt").write_text("one\n\ntwo\n")
    with pytest.raises(CompanionError, match="data source 'hub' applies to wikitext2 and c4"):
        load_documents(str(tmp_path / "mine.txt"), data_source="hub")


def test_local_c4_with_too_few_documents_is_an_error(data_dir, monkeypatch):
    _hub(monkeypatch, reachable=False)
    (data_dir / "c4" / "c4_valid_part_of_0.json").write_text(json.dumps([{"text": "only one"}]))
    with pytest.raises(CompanionError, match=f"holds 1 complete documents, expected {C4_VALIDATION_DOCUMENTS}"):
        load_documents("c4")


def test_score_cli_data_source(data_dir, monkeypatch, capsys):
    _hub(monkeypatch, reachable=False)
    code = main(["score", "--data", "c4", "--data-source", "hub", "--out", "unused.json"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Hugging Face Hub is unreachable" in lines[0]
    with pytest.raises(SystemExit):
        main(["score", "--data-source", "cloud"])


def test_provenance_names_no_path(data_dir, monkeypatch, tmp_path, tiny_checkpoint):
    from companion.model.loading import load_model

    _hub(monkeypatch, reachable=False)
    docs = load_documents("c4")
    assert docs.provenance()["path"] == "c4/c4_valid_part_of_0.json"
    _assert_portable(docs.provenance())
    _assert_portable(load_rows("wikitext2", "test")[1])
    (tmp_path / "mine.txt").write_text("one\n\ntwo\n")
    mine = load_documents(str(tmp_path / "mine.txt")).provenance()
    assert (mine["path"], mine["origin"], mine["sha256"]) == ("mine.txt", "file", content_sha256(["one", "two\n"]))
    _assert_portable(mine)
    loaded = load_model(tiny_checkpoint("llama"), device="cpu")
    model = loaded.provenance()
    assert model["spec"] == "tiny-llama" and model["fingerprint"] and "path" not in model
    assert Path(loaded.path).is_absolute()
    _assert_portable(model)
    _assert_portable(environment())


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                   capture_output=True)


def test_git_commit_is_dirty_only_for_code(tmp_path):
    assert git_commit(tmp_path) is None
    for name in ("companion/code.py", "results/run/table.csv", "book/figures/fig.ipynb", "generated/nb.ipynb"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("v1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "init")
    clean = git_commit(tmp_path)
    assert clean and re.fullmatch(r"[0-9a-f]{40}", clean)
    for name in ("results/run/table.csv", "book/figures/fig.ipynb", "generated/nb.ipynb"):
        (tmp_path / name).write_text("v2\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert git_commit(tmp_path) == clean
    (tmp_path / "companion/code.py").write_text("v2\n")
    assert git_commit(tmp_path) == clean + "-dirty"
