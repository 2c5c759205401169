"""Every criterion's block scores: one hooked forward pass for the hidden-state criteria, then the
criteria that run their own forward (or backward) passes.

Which criteria exist, and what each needs, is the criterion registry's (:mod:`companion.method.criteria`).
Hooks on each decoder layer see its input, the post-attention residual and its output while the
calibration windows flow through the backbone (the LM head is never computed). Estimators run on
each batch as it passes and only per-sample values are kept, so activations of the whole calibration
set never sit in memory. A layer's output is the next layer's input, so entropy is estimated once at
each of the L+1 boundaries and L post-attention points, and shared by the granularities:

- ``attn``:  boundary i  -> mid i
- ``mlp``:   mid i       -> boundary i+1
- ``layer``: boundary i  -> boundary i+1

A criterion that needs the model itself (``forward`` or ``gradients``) is called after the pass with the
same calibration windows, the granularity and the prunable blocks (the protected layers of the run's
rule are never candidates, so an iterative criterion never removes one), and returns a value per block.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch
from tqdm.auto import tqdm

from companion import store
from companion.errors import CompanionError
from companion.method import criteria
from companion.method.calibration import Documents, Windows, sample_windows
from companion.method.estimators import rms
from companion.method.orders import protected_layers
from companion.model import layouts
from companion.model.loading import LoadedModel
from companion.names import ENDPOINTS, GRANULARITIES
from companion.provenance import environment, timestamp

SCHEMA = "companion.scores/3"


@dataclass
class ScoreSettings:
    """What to score: criterion names (default: every criterion of the one hooked pass), parameters that
    replace the registry's defaults, the batch size, and the protected-layers rule and granularities of
    the criteria with their own forward passes (the hooked pass scores every granularity at once).

    A criterion without parameters of its own takes those of the one it varies (the registry's
    ``params_of``: ``knn_unit`` the ``k`` of ``knn``, ``bucket_mm`` the bins of ``bucket``).
    """

    estimators: list[str] = field(default_factory=lambda: list(criteria.names(needs="hidden")))
    params: dict[str, dict] = field(default_factory=dict)
    batch_size: int = 8
    protect: str = "first:2,last:1"
    granularities: list[str] = field(default_factory=lambda: list(GRANULARITIES))

    def validate(self) -> None:
        if not self.estimators:
            raise CompanionError("no criterion to score")
        for name in self.estimators:
            if name not in criteria.scored():
                raise CompanionError(f"unknown estimator '{name}'; choose from {', '.join(criteria.scored())}")
        if self.batch_size < 1:
            raise CompanionError("batch size must be >= 1")

    def estimator_params(self, name: str) -> dict:
        """The parameters ``name`` is computed with: the stated ones, else the registry's defaults (its
        own, or those of the criterion it varies)."""
        criterion = criteria.get(name)
        source = name if (name in self.params or criterion.params or not criterion.params_of) else criterion.params_of
        return dict(self.params.get(source, criteria.get(source).params))

    @property
    def own_passes(self) -> list[str]:
        """The criteria that run their own forward or backward passes, in the order asked."""
        return [name for name in self.estimators if not criteria.get(name).one_pass]

    def key(self) -> dict:
        """The part of a scores key these settings decide."""
        key = {"estimators": list(self.estimators),
               "params": {name: p for name in self.estimators if (p := self.estimator_params(name))}}
        if self.own_passes:  # what they remove depends on the protected layers
            key["protect"] = self.protect
            if sorted(self.granularities) != sorted(GRANULARITIES):
                key["granularities"] = list(self.granularities)
        return key


class _Recorder:
    """Forward hooks that estimate on the fly and keep per-sample values as device tensors."""

    def __init__(self, entropy_fns: dict, similarity_fns: dict) -> None:
        self.entropy_fns = entropy_fns
        self.similarity_fns = similarity_fns
        self.values: dict[tuple, list[torch.Tensor]] = defaultdict(list)
        self.finite: list[tuple[str, torch.Tensor]] = []
        self.inputs: dict[int, torch.Tensor] = {}
        self.mids: dict[int, torch.Tensor] = {}

    def _entropy(self, point: str, index: int, hidden: torch.Tensor) -> None:
        self.finite.append((f"{point} {index}", torch.isfinite(hidden).all()))
        self.values[("norm", "rms", point, index)].append(rms(hidden))
        for name, fn in self.entropy_fns.items():
            self.values[("entropy", name, point, index)].append(fn(hidden))

    def _similarity(self, granularity: str, index: int, x: torch.Tensor, y: torch.Tensor) -> None:
        for name, fn in self.similarity_fns.items():
            self.values[("similarity", name, granularity, index)].append(fn(x, y))

    def layer_input(self, index: int, hidden: torch.Tensor) -> None:
        self.inputs[index] = hidden
        if index == 0:
            self._entropy("boundary", 0, hidden)

    def layer_mid(self, index: int, hidden: torch.Tensor) -> None:
        self.mids[index] = hidden
        self._entropy("mid", index, hidden)
        self._similarity("attn", index, self.inputs[index], hidden)

    def layer_output(self, index: int, hidden: torch.Tensor) -> None:
        self._entropy("boundary", index + 1, hidden)
        self._similarity("mlp", index, self.mids.pop(index), hidden)
        self._similarity("layer", index, self.inputs.pop(index), hidden)

    def attach(self, model: torch.nn.Module) -> list:
        """Hooks for the three points of every layer; where the mid point is read depends on the layer's
        layout (:mod:`companion.model.layouts`): the input of the module opening the MLP sub-layer, or,
        in parallel blocks, the layer input plus the attention's output."""
        handles = []
        layers = layouts.decoder_layers(model)
        for i, (layer, blocks) in enumerate(zip(layers, layouts.layer_blocks(model))):
            handles.append(layer.register_forward_pre_hook(
                lambda _m, args, kwargs, i=i: self.layer_input(i, args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True))
            if blocks.mid_module is not None:
                handles.append(getattr(layer, blocks.mid_module).register_forward_pre_hook(
                    lambda _m, args, kwargs, i=i: self.layer_mid(i, args[0] if args else kwargs["hidden_states"]),
                    with_kwargs=True))
            else:
                handles.append(getattr(layer, blocks.attn).register_forward_hook(
                    lambda _m, _args, out, i=i: self.layer_mid(
                        i, self.inputs[i] + (out if torch.is_tensor(out) else out[0]))))
            handles.append(layer.register_forward_hook(
                lambda _m, _args, out, i=i: self.layer_output(i, out if torch.is_tensor(out) else out[0])))
        return handles

    def check_finite(self) -> None:
        """One host sync after the pass: name the first point with NaN or Inf."""
        flags = torch.stack([flag.cpu() for _, flag in self.finite])
        if not bool(flags.all()):
            where = self.finite[int((~flags).nonzero()[0])][0]
            raise CompanionError(f"NaN or Inf in hidden states at {where}; try another --dtype (e.g. float32)")

    def per_sample(self) -> dict[tuple, torch.Tensor]:
        return {key: torch.cat([v.float().cpu() for v in chunks]) for key, chunks in self.values.items()}


def collect(loaded: LoadedModel, windows: Windows, settings: ScoreSettings, progress: bool = True) -> dict:
    """Run the calibration windows through the backbone once and return per-sample values by key.

    Keys are ``("entropy", estimator, "boundary"|"mid", index)``, ``("norm", "rms", "boundary"|"mid", index)``
    (the hidden states' RMS norm, :func:`~companion.method.estimators.rms`) and
    ``("similarity", score, granularity, layer)``; values are float32 CPU tensors of shape (samples,).
    """
    settings.validate()
    one_pass = [criteria.get(name) for name in settings.estimators if criteria.get(name).one_pass]
    entropy_fns = {c.name: c.bind(**settings.estimator_params(c.name)) for c in one_pass if c.kind == "entropy"}
    similarity_fns = {c.name: c.bind(**settings.estimator_params(c.name)) for c in one_pass if c.kind == "similarity"}
    recorder = _Recorder(entropy_fns, similarity_fns)
    backbone = layouts.decoder(loaded.model)
    device = next(loaded.model.parameters()).device
    handles = recorder.attach(loaded.model)
    try:
        with torch.inference_mode():
            batches = torch.split(windows.input_ids, settings.batch_size)
            for batch in tqdm(batches, desc="scoring", unit="batch", disable=not progress):
                backbone(input_ids=batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    recorder.check_finite()
    return recorder.per_sample()


def _stats(values: torch.Tensor) -> tuple[float, float]:
    std = values.std().item() if values.numel() > 1 else 0.0
    return values.mean().item(), std


def summarize(per_sample: dict[tuple, torch.Tensor], num_layers: int) -> dict:
    """Turn per-sample values into the tidy block records, the entropy profiles and the RMS-norm profile
    (``norms["rms"]``, mean over samples at each boundary) of a scores file."""
    entropy_names = sorted({key[1] for key in per_sample if key[0] == "entropy"})
    similarity_names = sorted({key[1] for key in per_sample if key[0] == "similarity"})
    blocks = []
    for layer in range(num_layers):
        for granularity in GRANULARITIES:
            (p_in, o_in), (p_out, o_out) = ENDPOINTS[granularity]
            for name in entropy_names:
                h_in = per_sample[("entropy", name, p_in, layer + o_in)]
                h_out = per_sample[("entropy", name, p_out, layer + o_out)]
                delta, delta_std = _stats(h_out - h_in)
                blocks.append({"layer": layer, "granularity": granularity, "method": name, "kind": "entropy",
                               "h_in": h_in.mean().item(), "h_out": h_out.mean().item(),
                               "value": delta, "value_std": delta_std})
            for name in similarity_names:
                value, value_std = _stats(per_sample[("similarity", name, granularity, layer)])
                blocks.append({"layer": layer, "granularity": granularity, "method": name, "kind": "similarity",
                               "h_in": None, "h_out": None, "value": value, "value_std": value_std})
    def points(kind: str, name: str, point: str) -> list[list[float]]:
        return [per_sample[(kind, name, point, i)].tolist() for i in range(num_layers + (point == "boundary"))]

    samples = {
        "entropy": {name: {p: points("entropy", name, p) for p in ("boundary", "mid")} for name in entropy_names},
        "norm": {"rms": {p: points("norm", "rms", p) for p in ("boundary", "mid")}},
        "similarity": {name: {g: [per_sample[("similarity", name, g, i)].tolist() for i in range(num_layers)]
                              for g in GRANULARITIES} for name in similarity_names},
    }
    profiles = {name: [sum(v) / len(v) for v in samples["entropy"][name]["boundary"]] for name in entropy_names}
    norms = {"rms": [sum(v) / len(v) for v in samples["norm"]["rms"]["boundary"]]}
    return {"blocks": blocks, "profiles": profiles, "norms": norms, "per_sample": samples}


class BlockRecord(TypedDict):
    """One block's score: ΔH with the mean entropies at its ends (entropy) or a similarity value."""

    layer: int
    granularity: str
    method: str
    kind: str
    h_in: float | None
    h_out: float | None
    value: float
    value_std: float


class Scores(TypedDict):
    """A scores file: block records, entropy profiles, norm profiles and per-sample values, with their provenance.

    ``per_sample`` holds ``entropy[estimator][point]``, ``norm["rms"][point]`` (points: ``boundary`` 0..L,
    ``mid`` 0..L−1; each a list of per-window values) and ``similarity[score][granularity]``.
    """

    schema: str
    created: str
    key: dict
    key_sha256: str
    model: dict
    data: dict
    settings: dict
    environment: dict
    num_layers: int
    blocks: list[BlockRecord]
    profiles: dict[str, list[float]]
    norms: dict[str, list[float]]
    per_sample: dict


def scores_key(identity: dict, documents: dict, samples: int, seqlen: int, seed: int,
               settings: ScoreSettings) -> dict:
    """Every input that can change a scores file (see :mod:`companion.store`)."""
    return {"kind": "scores", "model": identity,
            "documents": {k: documents[k] for k in ("source", "split", "origin", "sha256")},
            "windows": {"samples": samples, "seqlen": seqlen, "seed": seed},
            **settings.key(), "numerics": store.numerics()}


def own_pass_blocks(loaded: LoadedModel, windows: Windows, settings: ScoreSettings, protected: list[int],
                    progress: bool = True) -> tuple[list[BlockRecord], dict]:
    """Block records, and what each run cost (with each criterion's details), of the criteria that run
    passes of their own.

    Each is called per granularity as ``fn(model, input_ids, granularity, candidates, **params)`` with the
    prunable layers as candidates, and returns an object with ``scores`` (``{layer: value}``), ``cost``
    (a dataclass of passes, backward passes and seconds) and ``details`` (see
    :class:`companion.method.removal.CriterionResult`).
    """
    num_layers = len(layouts.decoder_layers(loaded.model))
    candidates = [i for i in range(num_layers) if i not in set(protected)]
    blocks: list[BlockRecord] = []
    runs: dict = {}
    for name in settings.own_passes:
        criterion = criteria.get(name)
        fn = criterion.bind(**settings.estimator_params(name))
        for granularity in tqdm(settings.granularities, desc=name, unit="granularity", disable=not progress):
            present = set(layouts.prunable(loaded.model, granularity))
            result = fn(loaded.model, windows.input_ids, granularity, [i for i in candidates if i in present])
            runs.setdefault(name, {})[granularity] = {"cost": asdict(result.cost),
                                                      "details": result.details}
            for layer, value in sorted(result.scores.items()):
                blocks.append({"layer": int(layer), "granularity": granularity, "method": name,
                               "kind": criterion.kind, "h_in": None, "h_out": None, "value": float(value),
                               "value_std": 0.0})
    return blocks, runs


def score(loaded: LoadedModel, docs: Documents, windows: Windows, settings: ScoreSettings,
          progress: bool = True) -> dict:
    """Score every block of ``loaded`` on ``windows``; returns the content of a scores file (without its key).

    The one hooked pass gives the hidden-state criteria (and the entropy profiles that ``auto``
    protection reads); the criteria with passes of their own follow, never removing a protected layer.
    """
    per_sample = collect(loaded, windows, settings, progress=progress)
    num_layers = len(layouts.decoder_layers(loaded.model))
    summary = summarize(per_sample, num_layers)
    content = {
        "schema": SCHEMA,
        "created": timestamp(),
        "model": loaded.provenance(),
        "data": {**docs.provenance(), **windows.provenance()},
        "settings": {"estimators": list(settings.estimators),
                     "params": settings.key()["params"], "batch_size": settings.batch_size},
        "environment": environment(),
        "num_layers": num_layers,
        "present": {g: layouts.prunable(loaded.model, g) for g in GRANULARITIES},
        **summary,
    }
    if settings.own_passes:
        protected = protected_layers({"num_layers": num_layers, "profiles": summary["profiles"]}, settings.protect)
        blocks, runs = own_pass_blocks(loaded, windows, settings, protected, progress)
        content["blocks"] = summary["blocks"] + blocks
        content["settings"]["protect"] = settings.protect
        content["own_passes"] = runs
    return content


def cached_scores(path: str | Path, model: Callable[[], LoadedModel], docs: Documents, samples: int, seqlen: int,
                  seed: int, settings: ScoreSettings, identity: dict | None = None, progress: bool = True,
                  force: bool = False) -> Scores:
    """The scores of ``model()`` on windows of ``docs``: read from ``path`` when computed for the same key.

    ``model`` is called only when something has to be computed; ``identity`` (the model's, from
    :func:`companion.model.loading.model_identity`) lets the check run without loading the weights;
    ``force`` recomputes whatever is stored.
    """
    settings.validate()
    identity = identity or model().identity()
    key = scores_key(identity, docs.provenance(), samples, seqlen, seed, settings)

    def compute() -> dict:
        loaded = model()
        windows = sample_windows(loaded.tokenizer, docs, samples, seqlen, seed)
        return score(loaded, docs, windows, settings, progress=progress)

    return validate_scores(store.cached(path, key, compute, force=force), str(path))


_REQUIRED = {"schema": str, "created": str, "key": dict, "model": dict, "data": dict, "settings": dict,
             "num_layers": int, "blocks": list, "profiles": dict, "norms": dict, "per_sample": dict}
_BLOCK_FIELDS = set(BlockRecord.__annotations__)


def validate_scores(scores: Any, where: str = "scores") -> Scores:
    """``scores`` as a :class:`Scores`, or a one-line error naming what is missing or malformed."""
    if not isinstance(scores, dict) or scores.get("schema") != SCHEMA:
        raise CompanionError(f"{where} is not a companion scores file (expected schema {SCHEMA})")
    for name, kind in _REQUIRED.items():
        if not isinstance(scores.get(name), kind):
            raise CompanionError(f"{where}: field '{name}' is missing or not a {kind.__name__}")
    bad = next((b for b in scores["blocks"] if not isinstance(b, dict) or set(b) != _BLOCK_FIELDS), None)
    if bad is not None:
        raise CompanionError(f"{where}: malformed block record {bad!r}")
    return scores  # type: ignore[return-value]


def read_scores(path: str | Path) -> Scores:
    """Load and validate a scores file, or a one-line error if it is missing, unreadable or malformed."""
    try:
        scores = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompanionError(f"cannot read scores file {path}: {exc}") from exc
    return validate_scores(scores, str(path))
