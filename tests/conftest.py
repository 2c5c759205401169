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

_TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
             eos_token_id=2, tie_word_embeddings=False)
_MOE = dict(num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
_SHARED = dict(n_shared_experts=1, shared_expert_intermediate_size=16)
_SLIDING = dict(sliding_window=4, layer_types=["sliding_attention", "full_attention"] * 2)
_MLA = dict(kv_lora_rank=8, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, head_dim=4)
_LINEAR = dict(linear_conv_kernel_dim=2, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
               linear_num_value_heads=2, layer_types=["linear_attention", "full_attention"] * 2)

_WRAPPERS = {"gemma3": {"mm_tokens_per_image": 4}}

TINY_FAMILIES: dict[str, dict] = {
    # pre-norm
    "llama": {}, "mistral": {"sliding_window": 4}, "ministral": _SLIDING, "ministral3": {}, "qwen2": {},
    "qwen3": {}, "phi3": {}, "smollm3": {"no_rope_layers": [1, 1, 1, 0]}, "glm": {}, "gemma": {},
    "granite": {"residual_multiplier": 0.5, "embedding_multiplier": 2.0}, "helium": {}, "arcee": {},
    "apertus": {}, "nanochat": {}, "nemotron": {}, "olmo": {}, "starcoder2": {}, "stablelm": {}, "iquestcoder": {}, "granite_swa": _SLIDING, "apertus1p5_text": {},
    "doge": {}, "codegen": {"rotary_dim": 4},
    "persimmon": {}, "jais2": {}, "seed_oss": {}, "exaone": {}, "internlm3": {}, "ernie4_5": {},
    "hunyuan_v1_dense": {}, "cwm": {}, "bitnet": {}, "vaultgemma": {},
    # pre-norm, mixture of experts
    "mixtral": _MOE, "qwen2_moe": {**_MOE, **_SHARED, "decoder_sparse_step": 2}, "qwen3_moe": {**_MOE,
    "mlp_only_layers": [0]}, "olmoe": _MOE, "granitemoe": _MOE, "granitemoeshared": {**_MOE, **_SHARED},
    "phimoe": _MOE, "gpt_oss": {**_MOE, **_SLIDING}, "deepseek_v3": {**_MOE, **_SHARED, **_MLA,
    "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1}, "deepseek_v2": {**_MOE, **_SHARED, **_MLA,
    "first_k_dense_replace": 1}, "glm4_moe": {**_MOE, **_SHARED, "first_k_dense_replace": 1, "n_group": 1,
    "topk_group": 1}, "dots1": {**_MOE, **_SHARED, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1},
    "llama4_text": {**_MOE, "intermediate_size_mlp": 64, "interleave_moe_layer_step": 2},
    "minimax_m2": _MOE, "granitemoe_swa": {**_MOE, **_SLIDING}, "mellum": _MOE, "solar_open": {**_MOE, **_SHARED},
    "laguna": {**_MOE, "first_k_dense_replace": 1}, "flint": _MOE, "hy_v3": {**_MOE, **_SHARED},
    "minicpm5_moe": {**_MOE, **_SHARED}, "mimo_v2_flash": _MOE, "param2moe": {**_MOE, **_SHARED},
    "sarvam_moe": {**_MOE, **_SHARED}, "aria_text": {**_MOE, **_SHARED},
    "qwen3_5_moe_text": {**_MOE, **_SHARED, **_LINEAR},
    "lfm3": {"layer_types": ["conv", "full_attention"] * 2}, "kolibri1": _MOE, "ernie4_5_moe": {**_MOE, "moe_num_experts": 4, "moe_k": 2},
    "hunyuan_v1_moe": {**_MOE, "moe_topk": 2}, "exaone_moe": {**_MOE, **_SHARED},
    # sandwich norms
    "gemma2": _SLIDING, "gemma3_text": _SLIDING, "gemma3": {**_SLIDING, "vision_config": dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)}, "gemma4_text": {**_SLIDING, "hidden_size_per_layer_input": 0,
    "global_head_dim": 8}, "glm4": {}, "hyperclovax": {},
    # post-norm
    "olmo2": {}, "olmo3": {**_SLIDING}, "exaone4": {}, "flex_olmo": _MOE,
    # parallel attention and MLP
    "gpt_neox": {"use_parallel_residual": True}, "falcon": {"num_kv_heads": 2, "head_dim": None},
    "phi": {}, "cohere": {}, "cohere2": _SLIDING, "cohere2_moe": {**_MOE, **_SLIDING}, "gptj": {"rotary_dim": 4},
    # hybrid stacks: some layers mix tokens without attention
    "qwen3_next": {**_MOE, **_SHARED, **_LINEAR}, "qwen3_5_text": _LINEAR, "lfm2": {
    "layer_types": ["conv", "full_attention"] * 2, "block_ff_dim": 64, "block_auto_adjust_ff_dim": False},
}
"""Every supported ``model_type`` the family tests build, with what its small configuration needs."""


def make_family_model(model_type: str, seed: int = 0) -> torch.nn.Module:
    """A random 4-layer model of ``model_type`` (hidden size 32, vocabulary 96) in eval mode, fp32."""
    extra = TINY_FAMILIES[model_type]
    torch.manual_seed(seed)
    kwargs = {key: value for key, value in {**_TINY, **extra}.items() if value is not None or key not in _TINY}
    vision = kwargs.pop("vision_config", None)
    if vision is None:
        config = transformers.AutoConfig.for_model(model_type, **kwargs)
    else:  # a multimodal wrapper: the small settings are its text decoder's
        config = transformers.AutoConfig.for_model(model_type, text_config=kwargs, vision_config=vision,
                                                   tie_word_embeddings=False, **_WRAPPERS[model_type])
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random norms and biases, so that no norm is the identity by accident
        for name, param in model.named_parameters():
            if "norm" in name or "ln" in name.split(".")[-2:][0]:
                param.add_(torch.randn_like(param) * 0.1)
    return model


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
