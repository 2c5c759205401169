"""The result store: a result is reused only for the inputs it was computed from."""

from __future__ import annotations

import json
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
def test_a_corrupt_or_truncated_entry_is_recomputed_with_a_one_line_warning(tmp_path, capsys, content):
    path = tmp_path / "r.json"
    path.write_text(content)
    assert store.cached(path, {"a": 1}, lambda: {"value": 7})["value"] == 7
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: ignoring unreadable result r.json" in err and "Traceback" not in err
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
