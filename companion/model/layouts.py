"""Block layouts: where, inside each decoder layer, the three points of the method live.

EntroDrop needs, for every decoder layer, the layer input, the residual stream after the attention
sub-layer ("mid") and the layer output. The input and output are the decoder layer's own. Where the
mid point lives depends on the layer's *layout*, not on the model family, so the registry below has
one entry per layout and a layer's layout is detected from the names of its norms (and, for blocks
whose attention and MLP read the same input, from the configuration):

- ``pre-norm`` (Llama): ``x + attn(norm(x))`` then ``h + mlp(norm(h))``; mid is the input of the norm
  that opens the MLP sub-layer.
- ``sandwich`` (Gemma 2/3/4, GLM-4): as pre-norm, with a second norm on each sub-layer's output
  before the residual add; mid is the input of the MLP's pre-norm.
- ``post-norm`` (OLMo-2/3): ``h = x + norm(attn(x))``, ``h + norm(mlp(h))``; there is no pre-norm, so
  mid is the input of the MLP itself.
- ``parallel`` (GPT-NeoX, Falcon, Cohere, Phi-1/2): ``x + attn(norm(x)) + mlp(norm(x))``. There is no
  residual between the two sub-layers; mid is *defined* as ``x + attn(norm(x))`` (recorded by a hook on
  the attention's output), so ``attn`` is the block from ``x`` to ``x + attn`` and ``mlp`` the block
  that adds the MLP's output on top. Dropping either one zeroes exactly its term of the sum.

Mixture-of-experts MLPs (``mlp``, ``block_sparse_moe``, ``feed_forward``), scaled residuals (Granite),
per-layer attention types and hybrid stacks are properties of single layers, not layouts: a layer
whose token mixer is not softmax attention (linear attention, a state-space mixer) keeps its mid
point, but its ``attn`` block cannot be dropped (:func:`prunable`). Anything without three points per
layer (state-space-only models, encoder-decoders, one sub-layer per layer) is refused in one line.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from torch import nn

from companion.errors import CompanionError


@dataclass(frozen=True)
class Norms:
    """Norm names of one layout variant: those of the attention sub-layer, those of the MLP sub-layer
    (each in call order: pre-norm first, then the norm of the sub-layer's output), and a norm the two
    share (parallel blocks that normalise their one input once)."""

    attn: tuple[str, ...] = ()
    mlp: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.attn + self.mlp + self.shared)


@dataclass(frozen=True)
class Layout:
    """One block layout: how a layer exposes its mid point and which norms belong to which sub-layer.

    ``mid`` is ``"mlp_pre"`` (pre-hook on the first MLP norm), ``"mlp_input"`` (pre-hook on the MLP
    module) or ``"attn_sum"`` (layer input plus the attention's output: parallel blocks).
    """

    name: str
    mid: str
    variants: tuple[Norms, ...]
    description: str
    examples: str
    parallel: bool = False


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("pre-norm", "mlp_pre", (
        Norms(("input_layernorm",), ("post_attention_layernorm",)),
        Norms(("attention_layernorm",), ("feedforward_layernorm",)),
        Norms(("operator_norm",), ("ffn_norm",)),
        Norms(("input_layernorm",), ("pre_feedforward_layernorm",)),
    ), "x + attn(norm(x)), then h + mlp(norm(h)); mid = input of the MLP's norm",
        "Llama, Mistral, Qwen, Mixtral, DeepSeek, Granite (scaled residuals)"),
    Layout("sandwich", "mlp_pre", (
        Norms(("input_layernorm", "post_attention_layernorm"), ("pre_feedforward_layernorm", "post_feedforward_layernorm")),
        Norms(("input_layernorm", "post_self_attn_layernorm"), ("post_attention_layernorm", "post_mlp_layernorm")),
        Norms(("input_layernorm", "post_attention_layernorm"), ("pre_mlp_layernorm", "post_mlp_layernorm")),
        Norms(("input_layernorm", "post_norm1"), ("post_attention_layernorm", "post_norm2")),
        Norms(("operator_norm", "post_operator_norm"), ("ffn_norm", "post_ffn_norm")),
    ), "as pre-norm, plus a norm on each sub-layer's output; mid = input of the MLP's pre-norm",
        "Gemma 2/3/4, GLM-4"),
    Layout("post-norm", "mlp_input", (
        Norms(("post_attention_layernorm",), ("post_feedforward_layernorm",)),
    ), "h = x + norm(attn(x)), then h + norm(mlp(h)); mid = input of the MLP",
        "OLMo-2, OLMo-3, EXAONE 4"),
    Layout("parallel", "attn_sum", (
        Norms(shared=("input_layernorm",)),
        Norms(("input_layernorm",), ("post_attention_layernorm",)),
        Norms(("ln_attn",), ("ln_mlp",)),
        Norms(shared=("ln_1",)),
    ), "x + attn(norm(x)) + mlp(norm'(x)); mid defined as x + attn(norm(x))",
        "GPT-NeoX, Falcon, Cohere, Phi-1/2", parallel=True),
)}

LAYER_LISTS = ("layers", "h")
"""Attribute names under which a decoder stack keeps its list of layers."""
MIXERS = ("self_attn", "attention", "self_attention", "attn", "linear_attn", "mamba", "conv")
"""Names of token-mixing sub-layers, softmax attention or not."""
MLPS = ("mlp", "block_sparse_moe", "feed_forward")
"""Names of the channel-mixing sub-layer (dense or mixture-of-experts)."""

EXTRAS = ("post_per_layer_input_norm",)
"""Norms outside the attention and MLP sub-layers (Gemma 4's per-layer input, after the MLP's residual add)."""

OVERRIDES: dict[str, str] = {}
"""``model_type`` -> layout name, for a model whose layout the norm names alone do not tell."""

FAMILIES: tuple[str, ...] = (
    "apertus", "apertus1p5_text", "arcee", "aria_text", "bitnet", "codegen", "cohere", "cohere2", "cohere2_moe",
    "cwm", "deepseek_v2", "deepseek_v3", "doge", "dots1", "ernie4_5", "ernie4_5_moe", "exaone", "exaone4",
    "exaone_moe", "falcon", "flex_olmo", "flint", "gemma", "gemma2", "gemma3", "gemma3_text", "gemma4_text", "glm",
    "glm4", "glm4_moe", "gpt_neox", "gpt_oss", "gptj", "granite", "granite_swa", "granitemoe", "granitemoe_swa",
    "granitemoeshared", "helium", "hunyuan_v1_dense", "hunyuan_v1_moe", "hy_v3", "hyperclovax", "internlm3",
    "iquestcoder", "jais2", "kolibri1", "laguna", "lfm2", "lfm3", "llama", "llama4_text", "mellum", "mimo_v2_flash",
    "minicpm5_moe", "minimax_m2", "ministral", "ministral3", "mistral", "mixtral", "nanochat", "nemotron", "olmo",
    "olmo2", "olmo3", "olmoe", "param2moe", "persimmon", "phi", "phi3", "phimoe", "qwen2", "qwen2_moe", "qwen3",
    "qwen3_5_moe_text", "qwen3_5_text", "qwen3_moe", "qwen3_next", "sarvam_moe", "seed_oss", "smollm3",
    "solar_open", "stablelm", "starcoder2", "vaultgemma",
)
"""The ``model_type`` values tested end to end (tests/test_families.py builds a small one of each)."""

NO_LAYER_REMOVAL: dict[str, str] = {
    "diffllama": "its attention's lambda_init is computed from the layer index, so a layer-pruned checkpoint "
                 "would reload with other constants",
}
"""Families whose layer-pruned checkpoints transformers would rebuild differently, and why."""

REFUSED: dict[str, str] = {
    "encoder-decoder": "an encoder-decoder model (the method scores the blocks of a decoder-only stack)",
    "state-space": "a state-space model without attention (no attention block to score or drop)",
    "no-layers": "its decoder layers have no separate attention and MLP modules (an inline fc1/fc2 MLP, or no layer list)",
    "one-sublayer": "each decoder layer holds a single sub-layer (no residual point between attention and MLP)",
    "inner-residual": "its attention or MLP module adds the residual itself (no sub-layer output to drop)",
}


@dataclass(frozen=True)
class Blocks:
    """Where one decoder layer keeps its sub-layers, and how to read its mid point.

    ``attn`` and ``mlp`` are the attribute names of the token mixer and of the MLP; ``attention`` says
    whether the mixer is softmax attention (with a KV cache: droppable); ``attn_norms`` and
    ``mlp_norms`` are the norms removed with their sub-layer; ``mid_module`` is the module whose input
    is the mid point (None: parallel, mid = input + attention output).
    """

    layout: Layout
    attn: str
    mlp: str
    attention: bool
    moe: bool
    attn_norms: tuple[str, ...] = ()
    mlp_norms: tuple[str, ...] = ()
    mid_module: str | None = None
    shared_norms: tuple[str, ...] = field(default=())


def text_config(model: nn.Module):
    """The configuration of the language model (the text config of multimodal wrappers)."""
    return config_text(model.config)


def config_text(config):
    """The text part of a configuration (itself for a text-only model)."""
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _layer_list(module: nn.Module) -> str | None:
    return next((name for name in LAYER_LISTS if isinstance(getattr(module, name, None), nn.ModuleList)), None)


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (the module that owns the list of layers), also inside multimodal wrappers."""
    stack = model.get_decoder() if hasattr(model, "get_decoder") else model
    if _layer_list(stack):
        return stack
    expected = getattr(text_config(model), "num_hidden_layers", None) if hasattr(model, "config") else None
    stacks = [module for _, module in model.named_modules() if _layer_list(module)]
    if not stacks:
        raise _refusal(model, "no-layers")
    return next((m for m in stacks if len(getattr(m, _layer_list(m))) == expected), stacks[0])


def set_decoder_layers(model: nn.Module, layers: nn.ModuleList) -> None:
    """Replace the decoder's list of layers (whole-layer pruning and its undoing)."""
    stack = decoder(model)
    setattr(stack, _layer_list(stack), layers)


def _refusal(model: nn.Module, reason: str) -> CompanionError:
    return _unsupported(getattr(getattr(model, "config", None), "model_type", type(model).__name__), REFUSED[reason])


def _unsupported(model_type: str, reason: str) -> CompanionError:
    return CompanionError(f"unsupported architecture '{model_type}': {reason}; tested families: {', '.join(FAMILIES)}")


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def _is_moe(module: nn.Module) -> bool:
    return any(p.ndim == 3 for p in module.parameters()) or hasattr(module, "experts")


def _parallel(config) -> bool:
    """Whether the configuration says attention and MLP read the same input (GPT-NeoX, Falcon)."""
    if getattr(config, "use_parallel_residual", False):
        return True
    return bool(getattr(config, "parallel_attn", False) or getattr(config, "new_decoder_architecture", False))


def _detect(layer: nn.Module, config) -> Blocks:
    children = dict(layer.named_children())
    mixer = next((name for name in MIXERS if name in children), None)
    mlp = next((name for name in MLPS if name in children), None)
    if mixer is None or mlp is None:
        raise _unsupported(getattr(config, "model_type", "?"), REFUSED["one-sublayer" if "mixer" in children
                                                                         else "no-layers"])
    if any("residual" in inspect.signature(children[name].forward).parameters for name in (mixer, mlp)):
        raise _unsupported(getattr(config, "model_type", "?"), REFUSED["inner-residual"])
    norms = frozenset(name for name, child in children.items() if _is_norm(child) and name not in EXTRAS)
    forced = OVERRIDES.get(getattr(config, "model_type", ""))
    candidates = [LAYOUTS[forced]] if forced else sorted(LAYOUTS.values(), key=lambda lay: not lay.parallel)
    for layout in candidates:
        if layout.parallel and not forced and not (_parallel(config) or len(norms) == 1):
            continue
        for norms_variant in layout.variants:
            if norms_variant.names != norms:
                continue
            mid_module = {"mlp_pre": (norms_variant.mlp or (None,))[0], "mlp_input": mlp, "attn_sum": None}[layout.mid]
            mixer_module = children[mixer]
            attention = mixer in ("self_attn", "attention", "self_attention", "attn") and not any(
                word in type(mixer_module).__name__.lower() for word in ("linear", "lightning"))
            return Blocks(layout, mixer, mlp, attention, _is_moe(children[mlp]), norms_variant.attn,
                          norms_variant.mlp, mid_module, norms_variant.shared)
    raise _unsupported(getattr(config, "model_type", "?"), f"no block layout matches its norms "
                       f"({', '.join(sorted(norms)) or 'none'}; a new layout is one entry of LAYOUTS)")


def layer_blocks(model: nn.Module) -> list[Blocks]:
    """The :class:`Blocks` of every decoder layer, detected once per layer and kept on the layer."""
    config = text_config(model)
    if getattr(model.config, "is_encoder_decoder", False):
        raise _refusal(model, "encoder-decoder")
    stack = decoder(model)
    layers = getattr(stack, _layer_list(stack))
    if any("companion_blocks" not in layer.__dict__ for layer in layers):
        if not any("attention" in type(module).__name__.lower() for module in stack.modules()):
            raise _refusal(model, "state-space")
        for layer in layers:
            if "companion_blocks" not in layer.__dict__:
                layer.__dict__["companion_blocks"] = _detect(layer, config)
    return [layer.__dict__["companion_blocks"] for layer in layers]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers, in order (after checking that their layouts are known)."""
    layer_blocks(model)
    stack = decoder(model)
    return getattr(stack, _layer_list(stack))


def layouts_of(model: nn.Module) -> list[str]:
    """The distinct layout names of ``model``'s layers, in layer order."""
    return list(dict.fromkeys(b.layout.name for b in layer_blocks(model)))


def prunable(model: nn.Module, granularity: str) -> list[int]:
    """Indices of the layers whose block of ``granularity`` can be dropped (an ``attn`` block only
    where the layer's token mixer is softmax attention)."""
    blocks = layer_blocks(model)
    return [i for i, b in enumerate(blocks) if granularity != "attn" or b.attention]


def attention_dims(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) of the text configuration."""
    config = config_text(config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, getattr(config, "num_key_value_heads", None) or heads, head_dim


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def experts_per_token(config) -> int | None:
    """How many routed experts each token goes to (None when the config names none)."""
    config = config_text(config)
    for name in ("num_experts_per_tok", "num_experts_per_token", "top_k", "moe_topk", "num_selected_experts"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
        if isinstance(value, (list, tuple)) and value:
            return int(value[0])
    return None


def routed_experts(config) -> int | None:
    """How many routed experts a mixture-of-experts layer has (None when the config names none)."""
    config = config_text(config)
    for name in ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def active_parameters(module: nn.Module, config, matrices_only: bool = False) -> int:
    """Parameters a token runs through in ``module``: routed experts (weights under an ``experts`` module
    with one slice per expert) count ``experts_per_token / experts`` of them, everything else counts fully.
    ``matrices_only`` counts weight matrices only (what matmul FLOPs are made of), not biases, norms or
    convolution kernels."""
    top_k, experts = experts_per_token(config), routed_experts(config)
    total = 0
    for name, p in module.named_parameters():  # tied or shared parameters once
        if matrices_only and (p.ndim != 2 or name.endswith("bias")) and not (p.ndim == 3 and "experts" in name):
            continue
        routed = top_k and "experts" in name and "shared" not in name and p.ndim >= 2 and p.shape[0] == experts
        total += p.numel() * min(top_k, experts) // experts if routed else p.numel()
    return total


_MIXER_NAMES = {"linear_attn": "linear attention", "conv": "short convolution", "mamba": "Mamba"}


def layout_table() -> str:
    """The registry of layouts as a Markdown table."""
    rows = ["| Layout | Block, and where the mid point is | Examples |", "|---|---|---|"]
    rows += [f"| {lay.name} | {lay.description} | {lay.examples} |" for lay in LAYOUTS.values()]
    return "\n".join(rows)


def family_table(models: dict[str, nn.Module]) -> str:
    """One Markdown row per family: its layouts, token mixers, MLPs and which ``attn`` blocks can be dropped,
    detected on ``models`` (``model_type`` -> a model of that family, e.g. the small ones of the tests)."""
    rows = ["| `model_type` | Layout | Token mixers | MLP | `attn` blocks droppable |", "|---|---|---|---|---|"]
    for name in sorted(models):
        model = models[name]
        blocks = layer_blocks(model)
        kinds = {t.replace("_attention", "") for t in getattr(text_config(model), "layer_types", None) or []
                 if t.endswith("_attention") and t != "linear_attention"}
        attention = "attention" + (f" ({' + '.join(sorted(kinds))})" if len(kinds) > 1 else "")
        mixers = list(dict.fromkeys(attention if b.attention else _MIXER_NAMES.get(b.attn, b.attn) for b in blocks))
        moe = [b.moe for b in blocks]
        mlp = ("MoE" if all(moe) else "dense" if not any(moe)
               else "dense first, then MoE" if moe == sorted(moe) else "dense and MoE interleaved")
        droppable = "every layer" if all(b.attention for b in blocks) else "attention layers only"
        rows.append(f"| `{name}` | {', '.join(layouts_of(model))} | {', '.join(mixers)} | {mlp} | {droppable} |")
    return "\n".join(rows)


def refused_table(errors: dict[str, str]) -> str:
    """The refused families as a Markdown table, from ``model_type`` -> the one-line error they end with,
    plus :data:`NO_LAYER_REMOVAL`."""
    rows = ["| `model_type` | Why |", "|---|---|"]
    for name in sorted(errors):
        reason = errors[name].split(": ", 1)[-1].split("; tested families")[0]
        rows.append(f"| `{name}` | refused: {reason} |")
    rows += [f"| `{name}` | attn and mlp only: {reason} |" for name, reason in sorted(NO_LAYER_REMOVAL.items())]
    return "\n".join(rows)
