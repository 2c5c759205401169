"""Tiny random-initialised models of every supported family, built in the tests (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if _SHARED_DATA.is_dir():
    os.environ.setdefault("COMPANION_DATA_DIR", str(_SHARED_DATA))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402  (the variables above must be set before transformers is imported)
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

_COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)

FAMILY_CONFIGS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": None}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 8}),
    "phi3": (transformers.Phi3Config, transformers.Phi3ForCausalLM, {"pad_token_id": 0}),
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
               {"head_dim": 8, "sliding_window": 4, "final_logit_softcapping": 30.0}),
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
               {"head_dim": 8, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"] * 2}),
}
FAMILIES = list(FAMILY_CONFIGS)


def make_tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A 4-layer random model of ``family`` in eval mode, fp32."""
    config_cls, model_cls, extra = FAMILY_CONFIGS[family]
    torch.manual_seed(seed)
    config = config_cls(**{**_COMMON, **extra})
    model = model_cls(config).eval()
    with torch.no_grad():  # random norms so that no norm is the identity by accident
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.1 if family.startswith("gemma") else 1.0, 0.1)
    return model


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over a 96-entry vocabulary, with bos/eos/pad/unk."""
    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(92)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                        pad_token="<pad>", unk_token="<unk>")
    return tokenizer


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """Save a tiny model of a family with its tokenizer to a folder; returns a factory."""

    def build(family: str = "llama") -> str:
        folder = tmp_path / f"tiny-{family}"
        make_tiny_model(family).save_pretrained(folder)
        make_tiny_tokenizer().save_pretrained(folder)
        return str(folder)

    return build


@pytest.fixture(autouse=True)
def isolated_cache(request, tmp_path, monkeypatch):
    """Unit tests get their own companion cache; integration tests share the user's (converted default
    model, weight fingerprints)."""
    if not request.node.get_closest_marker("integration"):
        monkeypatch.setenv("COMPANION_CACHE_DIR", str(tmp_path / "cache"))


# ---------------------------------------------------------------- markers shared by the test files

# Tests that read the local benchmark data (WikiText-2, C4, the lm-eval task files).
needs_data = pytest.mark.skipif(not os.environ.get("COMPANION_DATA_DIR"),
                                reason="COMPANION_DATA_DIR is not set (no local benchmark data)")

# Tests on tiny models that take more than a few seconds, marked `slow` here because their files are
# edited elsewhere (elsewhere, mark them with @pytest.mark.slow): `make test-unit` leaves them out and
# `make test-integration` runs them.
SLOW = {
    "tests/test_evaluation.py::test_stock_lm_eval_on_a_pruned_checkpoint_matches_companion",  # stock lm-eval
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("[")[0] in SLOW:
            item.add_marker(pytest.mark.slow)
