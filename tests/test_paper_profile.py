"""The paper profile end to end, offline, on a tiny random Llama checkpoint with LIMIT=2.

What a new user runs first (``make reproduce PROFILE=paper LIMIT=2`` with a local model), shrunk to CPU
size: every task of the profile (13 lm-eval tasks and WikiText-2 perplexity), the sweep command with
its plan, and all figure notebooks. Other families are covered block by block in ``test_families``. The
model has 4 layers and one token per character, so the profile's K = 4..16 are clipped to the one
prunable layer (layers 0, 1 and 3 are protected) and it has three distinct prunings: dense, attention
2 and layer 2. Its maximum length is 512 tokens (characters), which lm-eval truncates contexts to; the
speed runs keep the profile's prompt and generated tokens with ``limit`` timed repeats. The C4 train
shard the profile calibrates on exists only on the Hub, so the offline run calibrates on the local C4
validation copy and WikiText-2, as the error message of the plain run tells the user to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import transformers
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from companion.analysis.figure_list import FIGURE_PAGES
from companion.names import GUESSED_PAPER_TASKS, PAPER_TASKS, PERPLEXITY_TASK

pytestmark = [pytest.mark.paper_e2e,
              pytest.mark.skipif(not os.environ.get("COMPANION_DATA_DIR"), reason="COMPANION_DATA_DIR is not set")]
ROOT = Path(__file__).resolve().parents[1]
CHARACTERS = [chr(c) for c in range(32, 127)]
TINY = dict(vocab_size=4 + len(CHARACTERS), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
LIMIT = "2"


def _character_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """One token per printable ASCII character: real text gives varied tokens (a word-level test vocabulary
    maps it all to <unk>, whose identical hidden states are degenerate point clouds for the estimators)."""
    vocab = {token: i for i, token in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *CHARACTERS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                                pad_token="<pad>", unk_token="<unk>")


def _checkpoint(folder: Path) -> str:
    transformers.set_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)).save_pretrained(folder)
    _character_tokenizer().save_pretrained(folder)
    return str(folder)


def _companion(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "companion", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_paper_profile_end_to_end_offline(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COMPANION_CACHE_DIR": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    results = tmp_path / "results"
    started = time.perf_counter()

    plain = _companion("sweep", "--profile", "paper", "--model", _checkpoint(tmp_path / "tiny-llama"),
                       "--limit", LIMIT, cwd=tmp_path, env=env)
    assert plain.returncode == 2 and "c4:train is read from the Hub only" in plain.stderr
    assert plain.stderr.strip().count("\n") == 0, plain.stderr

    model = str(tmp_path / "tiny-llama")
    sweep = _companion("sweep", "--profile", "paper", "--model", model, "--limit", LIMIT,
                       "--calibration", "c4,wikitext2", "--results", str(results), cwd=tmp_path, env=env)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "at most 45 distinct" in sweep.stderr and "boolq*" in sweep.stderr and "estimate" in sweep.stderr
    assert "clipped to K = 1" in sweep.stderr
    assert "3 distinct evaluations (prunings; random seeds on shards) × 14 tasks" in sweep.stderr  # 2 < 5 seeds
    rows = json.loads((results / "paper" / "tiny-llama" / "sweep_c4.json").read_text())["rows"]
    assert {r["task"] for r in rows} == {*PAPER_TASKS, *GUESSED_PAPER_TASKS, PERPLEXITY_TASK}
    assert {r["K"] for r in rows} == {0, 1} and {r["protected"] for r in rows} == {"0 1 3"}
    assert {r["n"] for r in rows if r["task"] == PERPLEXITY_TASK} == {2 * 2048}  # too few to split among seeds

    notebooks = tmp_path / "notebooks"
    reproduce = _companion("reproduce", "--profile", "paper", "--model", model, "--limit", LIMIT,
                           "--calibration", "c4,wikitext2", "--results", str(results), "--out", str(notebooks),
                           "--book-figures", "", "--notebooks", str(ROOT / "notebooks"), cwd=tmp_path, env=env)
    assert reproduce.returncode == 0, reproduce.stderr[-3000:]
    assert "plan:" in reproduce.stderr and f"executed {len(FIGURE_PAGES)} notebook(s)" in reproduce.stderr
    out = results / "paper" / "tiny-llama"  # named by its folder, never its path
    for name in ("sweep_c4.json", "sweep_wikitext2.json", "scores_c4.json", "speed.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "figures").glob("*.png"))) >= 6
    speed = json.loads((out / "speed.json").read_text())
    assert speed["settings"]["repeats"] == int(LIMIT) and speed["settings"]["prompt_len"] == 1024
    print(f"paper profile end to end, a tiny model: {time.perf_counter() - started:.0f} s")
