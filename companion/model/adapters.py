"""Architecture adapters: where, inside each decoder layer, the three points of the method live.

EntroDrop needs, for every decoder layer, the layer input, the residual stream after the attention
sub-layer and the layer output. The input and output are the decoder layer's own input and output.
The post-attention residual is the input of the norm that opens the MLP sub-layer
(``post_attention_layernorm`` in Llama-style blocks, ``pre_feedforward_layernorm`` in Gemma-2/3
"sandwich" blocks), so a pre-hook on that norm sees it without changing any model code.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from companion.errors import CompanionError


@dataclass(frozen=True)
class Family:
    """Module names of one decoder-layer layout.

    ``attn_norms`` belong to the attention sub-layer and ``mlp_norms`` to the MLP sub-layer; the first
    of ``mlp_norms`` receives the post-attention residual.
    """

    name: str
    attn_norms: tuple[str, ...]
    mlp_norms: tuple[str, ...]
    attn: str = "self_attn"
    mlp: str = "mlp"


_LLAMA_STYLE = dict(attn_norms=("input_layernorm",), mlp_norms=("post_attention_layernorm",))
_GEMMA_STYLE = dict(
    attn_norms=("input_layernorm", "post_attention_layernorm"),
    mlp_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm"),
)

FAMILIES: dict[str, Family] = {
    "llama": Family("llama", **_LLAMA_STYLE),
    "mistral": Family("mistral", **_LLAMA_STYLE),
    "qwen2": Family("qwen2", **_LLAMA_STYLE),
    "qwen3": Family("qwen3", **_LLAMA_STYLE),
    "phi3": Family("phi3", **_LLAMA_STYLE),
    "gemma2": Family("gemma2", **_GEMMA_STYLE),
    "gemma3_text": Family("gemma3", **_GEMMA_STYLE),
    "gemma3": Family("gemma3", **_GEMMA_STYLE),
}


def text_config(model: nn.Module):
    """The configuration of the language model (the text config of multimodal wrappers)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def family_of(model: nn.Module) -> Family:
    """The adapter for ``model``, or a clear error naming the supported families."""
    model_type = getattr(text_config(model), "model_type", None)
    if model_type not in FAMILIES:
        supported = ", ".join(sorted({f.name for f in FAMILIES.values()}))
        raise CompanionError(f"unsupported architecture '{model_type}'; supported families: {supported}")
    return FAMILIES[model_type]


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (the module that owns ``layers``)."""
    stack = model.get_decoder() if hasattr(model, "get_decoder") else model
    if not hasattr(stack, "layers"):
        raise CompanionError(f"cannot find the decoder layers of {type(model).__name__}")
    return stack


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers, in order."""
    family_of(model)
    return decoder(model).layers


def post_attention_module(model: nn.Module, layer: nn.Module) -> nn.Module:
    """The module whose input is the residual stream after the attention sub-layer."""
    return getattr(layer, family_of(model).mlp_norms[0])
