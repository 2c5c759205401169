"""Loading models the way transformers users expect: an embedded model's name, a Hub id or a local folder."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from companion.errors import CompanionError
from companion.hub import hub_reachable
from companion.io import atomic_write_json, sha256_file
from companion.model.checkpoints import read_manifest
from companion.model.embedded import EMBEDDED_MODELS, embedded_model, model_label
from companion.model.layouts import (
    FAMILIES,
    config_text,
    count_parameters,
    decoder_layers,
    layer_blocks,
    layouts_of,
    text_config,
)
from companion.model.surgery import apply_pruning
from companion.paths import cache_dir

DEFAULT_MODEL = "gemma-3-270m"
logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer and where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    path: str
    source: str
    device: torch.device
    dtype: torch.dtype

    def identity(self) -> dict:
        """What a cached result computed with this model depends on (see :mod:`companion.store`)."""
        return _identity(self.spec, self.path, self.source, self.device, self.dtype)

    def provenance(self) -> dict:
        """What identifies these weights in a results file, with no path of this machine.

        A local folder is named by its folder name; a Hub model by its id and snapshot revision. The
        checkpoint itself is identified by ``fingerprint`` over all its files (:func:`checkpoint_fingerprint`).
        """
        return {
            "spec": model_label(self.spec),
            "source": self.source,
            "revision": Path(self.path).name if self.source == "hub" else None,
            "model_type": self.model.config.model_type,
            "num_layers": text_config(self.model).num_hidden_layers,
            "parameters": parameter_counts(self.model),
            "fingerprint": checkpoint_fingerprint(self.path) if Path(self.path).is_dir() else None,
            "device": self.device.type,
            "dtype": str(self.dtype).replace("torch.", ""),
        }


def parameter_counts(model: PreTrainedModel) -> dict[str, int]:
    """Parameters of the whole model (tied weights once), of its input embeddings and of its first decoder layer."""
    return {"total": count_parameters(model),
            "embedding": model.get_input_embeddings().weight.numel(),
            "layer": count_parameters(decoder_layers(model)[0])}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything torch accepts is passed through."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise CompanionError(f"unknown device '{device}'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise CompanionError(f"device '{device}' requested but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA (fp16 where bf16 is unsupported) and fp32 on CPU."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise CompanionError(f"unknown dtype '{dtype}'; use one of auto, {', '.join(names)}")
    return names[dtype]


def checkpoint_fingerprint(folder: str | Path) -> str:
    """sha256 over every file of a checkpoint folder (weights, config, tokenizer, pruning manifest).

    Per-file hashes are cached by path, size and mtime, so a large checkpoint is hashed once.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        return ""
    cache_file = cache_dir() / "fingerprints.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    parts, known = [], len(cache)
    for path in files:
        stat = path.resolve().stat()
        key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if key not in cache:
            cache[key] = sha256_file(path)
        parts.append(f"{path.relative_to(folder).as_posix()}:{cache[key]}")
    if len(cache) != known:  # only when something was hashed: this runs before every evaluation
        atomic_write_json(cache_file, cache)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def embedded_model_dir(spec: str) -> Path:
    """An embedded model (listed in ``companion.model.embedded``) as a safetensors checkpoint, converted once
    from its GGUF file and cached under ``models/<spec>`` of the companion cache."""
    entry = embedded_model(spec)
    if entry is None:
        raise CompanionError(f"'{spec}' is not an embedded model; those are {', '.join(EMBEDDED_MODELS)}")
    target = cache_dir() / "models" / entry.spec
    if (target / "config.json").exists():
        return target
    gguf = entry.gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    del model.config.quantization_config
    model.hf_quantizer = None
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _identity(spec: str, path: str, source: str, device: torch.device, dtype: torch.dtype) -> dict:
    return {"spec": model_label(spec), "source": source, "fingerprint": checkpoint_fingerprint(path),
            "dtype": str(dtype).replace("torch.", ""), "device_type": device.type}


def model_identity(spec: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto") -> dict | None:
    """The identity :meth:`LoadedModel.identity` would give, without loading the weights.

    ``None`` for a Hub model that is not in the local Hugging Face cache (nothing can be reused then).
    """
    target, source = _locate(spec)
    if source == "hub":
        from huggingface_hub import snapshot_download

        try:
            target = snapshot_download(spec, local_files_only=True)
        except Exception:  # noqa: BLE001 - any miss of the local cache means "not on disk"
            return None
    torch_device = resolve_device(device)
    return _identity(spec, target, source, torch_device, resolve_dtype(dtype, torch_device))


def model_config(spec: str):
    """The transformers configuration of ``spec``, without its weights (None: a Hub model not on disk)."""
    from transformers import AutoConfig

    target, source = _locate(spec)
    try:
        return AutoConfig.from_pretrained(target, local_files_only=source == "hub" and not hub_reachable())
    except (OSError, ValueError):
        return None


def model_num_layers(spec: str) -> int | None:
    """The number of decoder layers of ``spec``, from its config alone (None: a Hub model not on disk)."""
    config = model_config(spec)
    return None if config is None else config_text(config).num_hidden_layers


def _locate(spec: str) -> tuple[str, str]:
    """Map a model spec to (path or Hub id, source)."""
    entry = embedded_model(spec)
    if entry is not None:
        return str(embedded_model_dir(spec)), entry.source
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser().resolve()), "local"
    if Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")):
        raise CompanionError(f"model path '{spec}' is not a checkpoint folder")
    return spec, "hub"


def load_model(spec: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a decoder-only causal LM and its tokenizer, in eval mode.

    ``spec`` is an embedded model (``gemma-3-270m``, the default, or ``smollm2-135m``; see
    ``companion.model.embedded``), a Hugging Face id, or a local folder. On CUDA
    the weights are spread with ``device_map="auto"`` over the GPUs accelerate sees.
    """
    target, source = _locate(spec)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    kwargs = {"dtype": torch_dtype, "local_files_only": source == "hub" and not hub_reachable()}
    if torch_device.type == "cuda":
        kwargs["device_map"] = "auto" if device == "auto" else {"": torch_device}
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=kwargs["local_files_only"])
        model = AutoModelForCausalLM.from_pretrained(target, **kwargs)
    except (OSError, ValueError) as exc:
        if source == "hub":
            raise CompanionError(
                f"model '{spec}' is not a local folder, not in the Hugging Face cache, and could not be fetched "
                f"from the Hub ({str(exc).splitlines()[0]})"
            ) from exc
        raise CompanionError(f"cannot load model from {target}: {str(exc).splitlines()[0]}") from exc
    if source == "hub":
        from huggingface_hub import snapshot_download

        target = snapshot_download(spec, local_files_only=True)
    layer_blocks(model)
    if text_config(model).model_type not in FAMILIES:
        logger.warning("%s: layout %s detected, but this model type is not among the tested families",
                       model.config.model_type, ", ".join(layouts_of(model)))
    model.eval()
    if torch_device.type == "cpu":
        model.to(torch_device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pruning = read_manifest(target) if source != "hub" else None
    if pruning is not None and pruning.granularity != "layer":
        apply_pruning(model, pruning)
    elif pruning is not None:
        model.companion_pruning = pruning
    return LoadedModel(model, tokenizer, spec, str(target), source, torch_device, torch_dtype)
