"""The result store: a result is reused only for the inputs it was computed from."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import torch
from conftest import make_tiny_model

from companion import store
from companion.cli import main


def _docs(folder, words: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "x.txt"
    path.write_text("\n\n".join(" ".join(f"w{(i * words + j) % 90}" for j in range(40)) for i in range(6)))
    return str(path)


def _score(capsys, model: str, data: str, out: str, *extra: str) -> str:
    capsys.readouterr()
    code = main(["score", "--model", model, "--data", data, "--samples", "4", "--seqlen", "16", "--quiet",
                 "--estimators", "knn,cosine", "--knn-k", "3", "--out", out, *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def test_read_write_and_cached_reuse_only_the_same_key(tmp_path):
    path = tmp_path / "r.json"
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    assert store.cached(path, {"a": 1}, compute)["value"] == 1
    assert store.cached(path, {"a": 1}, compute)["value"] == 1 and len(calls) == 1
    assert store.cached(path, {"a": 2}, compute)["value"] == 2  # another key recomputes and overwrites
    assert store.read(path, {"a": 1}) is None and store.read(path, {"a": 2})["key_sha256"] == store.digest({"a": 2})
    assert store.cached(path, {"a": 2}, compute, force=True)["value"] == 3
    assert store.read(tmp_path / "missing.json", {"a": 1}) is None
    assert store.entry_path(tmp_path, {"b": [1, 2]}) == store.entry_path(tmp_path, {"b": (1, 2)})
    assert store.numerics()["companion_numerics"] == store.NUMERICS_VERSION


@pytest.mark.parametrize("content", ["", '{"key": {"a": 1}, "val', "[1, 2]", '{"value": 1}'])
def test_a_corrupt_or_truncated_entry_is_recomputed_with_a_one_line_warning(tmp_path, caplog, content):
    path = tmp_path / "r.json"
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="companion.store"):
        assert store.cached(path, {"a": 1}, lambda: {"value": 7})["value"] == 7
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    message = caplog.records[0].getMessage()
    assert "r.json" in message and "\n" not in message and caplog.records[0].exc_info is None
    assert json.loads(path.read_text())["value"] == 7


def test_concurrent_requests_compute_once(tmp_path):
    path, calls, barrier = tmp_path / "r.json", [], threading.Barrier(4)

    def compute():
        calls.append(1)
        return {"value": 1}

    def worker():
        barrier.wait()
        store.cached(path, {"a": 1}, compute)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and store.read(path, {"a": 1})["value"] == 1


def test_fingerprint_files_sees_result_changes_but_not_figures(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "figures").mkdir()
    before = store.fingerprint_files(tmp_path)
    (tmp_path / "figures" / "f.png").write_bytes(b"png")
    assert store.fingerprint_files(tmp_path) == before
    (tmp_path / "a.json").write_text('{"x": 1}')
    assert store.fingerprint_files(tmp_path) != before


def test_same_named_files_with_other_text_are_rescored(tmp_path, capsys, tiny_checkpoint):
    model = tiny_checkpoint("llama")
    out = str(tmp_path / "s.json")
    a, b = _docs(tmp_path / "a", 7), _docs(tmp_path / "b", 11)
    assert "wrote" in _score(capsys, model, a, out)
    first = json.loads(open(out).read())
    assert "already holds these scores" in _score(capsys, model, a, out)
    assert "wrote" in _score(capsys, model, b, out)  # same file name, other text
    second = json.loads(open(out).read())
    assert second["data"]["sha256"] != first["data"]["sha256"] and second["key"] != first["key"]
    assert second["blocks"] != first["blocks"]
    assert "/" not in second["data"]["path"] and str(tmp_path) not in json.dumps(second)


def test_a_changed_local_model_or_dtype_is_rescored(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    model = tiny_checkpoint("llama")
    data, out = _docs(tmp_path / "a", 7), str(tmp_path / "s.json")
    _score(capsys, model, data, out)
    first = json.loads(open(out).read())
    make_tiny_model("llama", seed=1).save_pretrained(model)  # same folder, other weights
    assert "wrote" in _score(capsys, model, data, out)
    second = json.loads(open(out).read())
    assert second["key"]["model"]["fingerprint"] != first["key"]["model"]["fingerprint"]
    assert "wrote" in _score(capsys, model, data, out, "--dtype", "bfloat16")
    assert json.loads(open(out).read())["key"]["model"]["dtype"] == "bfloat16"


def test_evaluations_follow_the_model_and_dtype(tmp_path, tiny_checkpoint, monkeypatch):
    from companion.experiments import evaluation
    from companion.experiments.evaluation import EvalSettings, evaluate
    from companion.model.loading import load_model

    calls = []
    monkeypatch.setattr(evaluation, "run_lm_eval", lambda lm, task, settings: calls.append(task) or ([
        {"task": task, "metric": "acc", "value": 0.5, "stderr": 0.1, "n": 2}], None))
    model = tiny_checkpoint("llama")
    settings = EvalSettings(tasks=["piqa"], limit=2)
    for _ in range(2):
        evaluate(load_model(model, "cpu", "float32"), settings, cache=tmp_path / "ev")
    assert len(calls) == 1
    evaluate(load_model(model, "cpu", "bfloat16"), settings, cache=tmp_path / "ev")
    assert len(calls) == 2
    with torch.no_grad():
        make_tiny_model("llama", seed=3).save_pretrained(model)
    evaluate(load_model(model, "cpu", "float32"), settings, cache=tmp_path / "ev")
    assert len(calls) == 3
    stored = [json.loads(p.read_text()) for p in (tmp_path / "ev").glob("*.json")]
    assert len(stored) == 3 and all(s["key"]["backend"] == "FastHFLM" for s in stored)


# ---------------------------------------------------------------- the numeric code behind every key

def test_numeric_code_is_unchanged_or_its_version_bumped():
    """Every key holds NUMERICS_VERSION; this test makes sure it is bumped when numeric code changes."""
    current = store.numeric_fingerprint()
    assert current == store.NUMERICS_FINGERPRINT, (
        "the code of a numeric module (companion.store.NUMERIC_MODULES) changed. If it changes any number, "
        "bump NUMERICS_VERSION in companion/store.py (stored results are then recomputed). If it does not "
        f"(a pure refactor), set NUMERICS_FINGERPRINT = \"{current}\" there (printed by `python -m "
        "companion.store`) and say in the commit message how the numbers were checked to be equal.")


def test_code_fingerprint_ignores_docstrings_comments_and_layout(tmp_path):
    path = tmp_path / "m.py"

    def fingerprint(source: str) -> str:
        path.write_text(source)
        return store.code_fingerprint(path)

    base = fingerprint('"""Module."""\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    assert fingerprint('"""Other words."""\n\n\ndef f(x):  # a comment\n    return (x\n            + 1)\n') == base
    assert fingerprint('def f(x):\n    """Doc."""\n    return x + 2\n') != base
    assert fingerprint('def f(y):\n    return y + 1\n') != base
    assert fingerprint('def f(x):\n    "not a docstring"\n    return x + 1\n') == base  # a leading string is one
    assert fingerprint('def f(x):\n    y = "text"\n    return x + 1\n') != base


def test_numeric_fingerprint_counts_every_listed_module_by_name(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(store, "PACKAGE", tmp_path)
    one = store.numeric_fingerprint(("a.py",))
    assert store.numeric_fingerprint(("a.py", "gone.py")) != one  # a listed module that vanished shows
    (tmp_path / "a.py").write_text("# comment\nx = 1\n")
    assert store.numeric_fingerprint(("a.py",)) == one
    (tmp_path / "a.py").write_text("x = 2\n")
    assert store.numeric_fingerprint(("a.py",)) != one
