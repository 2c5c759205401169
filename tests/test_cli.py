"""The command line: subcommands end to end on a tiny local checkpoint, and one-line errors."""

from __future__ import annotations

import json
import re

import pytest
import transformers
from conftest import make_tiny_tokenizer

from companion.cli import main

COMMANDS = ("score", "order", "prune", "info", "tasks", "eval", "sweep", "yardstick", "speed", "reproduce", "plan")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(" ".join(f"w{(i * 7 + j) % 90}" for j in range(40)) for i in range(6)))
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_score_order_prune_info(tmp_path, capsys, tiny_checkpoint, corpus):
    model = tiny_checkpoint("mistral")
    scores = str(tmp_path / "scores.json")
    common = ["--model", model, "--data", corpus, "--samples", "4", "--seqlen", "16", "--quiet", "--out", scores]
    code, _, err = run(capsys, "score", *common, "--knn-k", "3", "--bucket-bins", "8")
    assert code == 0 and "wrote" in err, err
    result = json.loads(open(scores).read())
    assert result["num_layers"] == 4 and result["data"]["samples"] == 4 and result["model"]["fingerprint"]
    code, _, err = run(capsys, "score", *common, "--knn-k", "3", "--bucket-bins", "8")
    assert code == 0 and "already holds these scores" in err

    code, out, _ = run(capsys, "order", scores, "--method", "knn", "--granularity", "attn", "--protect", "none")
    assert code == 0 and sorted(map(int, out.split())) == [0, 1, 2, 3]
    code, out, _ = run(capsys, "order", scores, "--method", "cosine", "--granularity", "layer", "--format", "rank")
    assert code == 0 and sorted(map(int, out.strip().split("_"))) == [0, 1, 2, 3]

    pruned = str(tmp_path / "pruned")
    code, _, err = run(capsys, "prune", "--model", model, "--scores", scores, "--method", "knn",
                       "--granularity", "layer", "--drop", "2", "--protect", "none", "--out", pruned)
    assert code == 0 and "saved to" in err
    code, out, _ = run(capsys, "info", "--model", pruned)
    info = json.loads(out)
    assert code == 0 and info["num_layers"] == 2 and info["pruning"]["granularity"] == "layer"


def _one_line_error(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_errors_are_one_line(tmp_path, capsys, tiny_checkpoint, corpus, monkeypatch):
    model = tiny_checkpoint("llama")
    scores = str(tmp_path / "s.json")
    assert "unknown estimator 'foo'" in _one_line_error(capsys, "score", "--model", model, "--data", corpus,
                                                        "--estimators", "knn,foo", "--out", scores)
    assert "longer than the window" in _one_line_error(capsys, "score", "--model", model, "--data", corpus,
                                                       "--seqlen", "500", "--out", scores)
    run(capsys, "score", "--model", model, "--data", corpus, "--samples", "2", "--seqlen", "16",
        "--estimators", "knn,cosine", "--knn-k", "3", "--quiet", "--out", scores)
    assert "cannot drop 9 attn blocks" in _one_line_error(capsys, "prune", "--model", model, "--scores", scores,
                                                           "--method", "knn", "--drop", "9", "--out",
                                                           str(tmp_path / "p"))
    assert "unknown granularity 'head'" in _one_line_error(capsys, "order", scores, "--granularity", "head")
    (tmp_path / "bad.json").write_text("[")
    assert "cannot read scores file" in _one_line_error(capsys, "order", str(tmp_path / "bad.json"))
    assert "not in the Hugging Face cache" in _one_line_error(capsys, "info", "--model", "nobody/no-such-model")

    gpt2 = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=96)).save_pretrained(gpt2)
    make_tiny_tokenizer().save_pretrained(gpt2)
    message = _one_line_error(capsys, "info", "--model", str(gpt2))
    assert "unsupported architecture 'gpt2'" in message and "llama" in message and "gemma3" in message

    monkeypatch.delenv("COMPANION_DATA_DIR", raising=False)
    message = _one_line_error(capsys, "score", "--model", model, "--data", "wikitext2", "--out", scores)
    assert "Hub is unreachable" in message and "COMPANION_DATA_DIR" in message


def test_help_texts(capsys):
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: python -m companion" in capsys.readouterr().out


def test_every_option_states_its_default_once(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "(default: None)" not in text and "(default: False)" not in text, command
        options = re.split(r"\n  (?=-)", text.split("options:", 1)[1])  # one chunk per option
        for option in options:
            rest = re.sub(r"\(default: [^)]*\)", "", " ".join(option.split()), count=1)
            rest = rest.replace("smoke, default, paper", "").replace("{smoke,default,paper}", "")  # profile names
            assert "default" not in rest, f"{command}: {option}"
