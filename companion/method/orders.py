"""Drop orders: prunable blocks sorted by score, and the layers every criterion leaves alone.

A drop order sorts the prunable blocks by score, in the direction the criterion registry gives (lowest
first for every criterion so far: entropy increase ΔH, 1 − cos, the angular distance); ties go by layer
index. Protected layers are
never dropped, and every criterion of one run protects the same layers: a fixed rule such as the
paper code's ``first:2,last:1``, or ``auto``, the compression stage detected on the KNN entropy
profile (``AUTO_REFERENCE``), applied to every criterion alike.

Two null references use the same protected layers: ``random:<seed>`` (a seeded random order of the
prunable blocks) and ``last`` (the last prunable blocks first). Pure Python (no torch), so the
analysis can derive orders from a scores file.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from companion.errors import CompanionError
from companion.method import criteria
from companion.names import GRANULARITIES, LAST, random_seed

AUTO_REFERENCE = "knn"  # the entropy profile whose compression stage ``auto`` protects, for every criterion
HEADLINE_FRACTION = 12 / 32  # the paper's headline: 12 of 32 attention layers dropped (37.5 %)


def compression_stage(profile: list[float]) -> int:
    """Number of leading layers in the compression stage of an entropy profile (L+1 boundary values).

    The stage ends at the lowest boundary entropy within the first half of the network: the layers
    before it reduce entropy (the paper's "compression"), the ones after it expand it.
    """
    half = max(1, (len(profile) - 1) // 2)
    head = profile[: half + 1]
    return min(range(len(head)), key=lambda i: (head[i], i))


def parse_protect(spec: str, num_layers: int, profile: list[float] | None = None) -> list[int]:
    """Layers never dropped: ``auto`` (the detected compression stage), ``none``, or a comma list of
    ``first:N``, ``last:N`` and layer indices, e.g. ``first:2,last:1`` as the paper's code does."""
    if spec == "auto":
        return list(range(compression_stage(profile))) if profile else []
    if spec in {"none", ""}:
        return []
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(first|last):(\d+)", part)
        if match:
            n = int(match.group(2))
            layers.update(range(n) if match.group(1) == "first" else range(num_layers - n, num_layers))
        elif part.isdigit():
            layers.add(int(part))
        else:
            raise CompanionError(f"bad --protect '{spec}': use auto, none, or e.g. first:2,last:1 or 0,1,17")
    bad = sorted(i for i in layers if not 0 <= i < num_layers)
    if bad:
        raise CompanionError(f"--protect names layer {bad[0]} but the model has {num_layers} layers")
    return sorted(layers)


@dataclass
class DropOrder:
    """Prunable layers sorted by score (lowest first), with what was protected and why."""

    method: str
    granularity: str
    order: list[int]
    protected: list[int]
    values: list[float]
    num_layers: int

    def drop_set(self, k: int) -> list[int]:
        """The ``k`` blocks dropped first, sorted by layer index."""
        if not 0 <= k <= len(self.order):
            raise CompanionError(
                f"cannot drop {k} {self.granularity} blocks: {len(self.order)} of {self.num_layers} are prunable "
                f"({len(self.protected)} protected)"
            )
        return sorted(self.order[:k])

    def rank_string(self) -> str:
        """The paper code's ``drop_layers_order``: entry i is the rank of layer i (protected ranked last)."""
        ranks = [0] * self.num_layers
        for rank, layer in enumerate(self.order + sorted(self.protected)):
            ranks[layer] = rank
        return "_".join(map(str, ranks))

    def to_json(self) -> dict:
        """The order as JSON, with the paper code's rank string; a layer without a score (a protected
        one, which criteria with passes of their own do not score) has ``null``."""
        values = [v if math.isfinite(v) else None for v in self.values]
        return {**asdict(self), "values": values, "rank_string": self.rank_string()}

    @classmethod
    def from_json(cls, data: dict) -> DropOrder:
        """An order saved by :meth:`to_json`, checked: every layer once, protected or in the order."""
        try:
            order = cls(str(data["method"]), str(data["granularity"]), [int(i) for i in data["order"]],
                        [int(i) for i in data["protected"]],
                        [math.nan if v is None else float(v) for v in data["values"]],
                        int(data["num_layers"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CompanionError(f"malformed drop order: {exc!r}") from exc
        if sorted(order.order + order.protected) != list(range(order.num_layers)):
            raise CompanionError(f"drop order of {order.method}/{order.granularity} does not cover its "
                                 f"{order.num_layers} layers exactly once")
        if order.granularity not in GRANULARITIES:
            raise CompanionError(f"unknown granularity '{order.granularity}' in a drop order")
        return order


def decode_rank_string(ranks: str) -> list[int]:
    """Layers in drop order from a paper-code rank string (``29_30_28_...``)."""
    values = [int(v) for v in ranks.strip().split("_")]
    return sorted(range(len(values)), key=lambda i: values[i])


def drop_order(scores: dict, method: str, granularity: str, protect: str = "auto") -> DropOrder:
    """The drop order of ``method`` at ``granularity`` from a scores file's content."""
    if granularity not in GRANULARITIES:
        raise CompanionError(f"unknown granularity '{granularity}'; choose from {', '.join(GRANULARITIES)}")
    rows = [b for b in scores["blocks"] if b["method"] == method and b["granularity"] == granularity]
    if not rows:
        methods = sorted({b["method"] for b in scores["blocks"]})
        raise CompanionError(f"method '{method}' is not in the scores file; it has: {', '.join(methods)}")
    num_layers = scores["num_layers"]
    values = [float("nan")] * num_layers
    for row in rows:
        values[row["layer"]] = row["value"]
    protected = kept_layers(scores, protect, granularity)
    prunable = [i for i in range(num_layers) if i not in protected]
    missing = [i for i in prunable if math.isnan(values[i])]
    if missing:
        raise CompanionError(f"{method} has no {granularity} score for layer {missing[0]}: it was scored with other "
                             f"protected layers than '{protect}'; score again with that rule")
    sign = -1 if criteria.get(method).drop_first == "highest" else 1
    order = sorted(prunable, key=lambda i: (sign * values[i], i))
    return DropOrder(method, granularity, order, protected, values, num_layers)


def protected_layers(scores: dict, protect: str) -> list[int]:
    """The layers ``protect`` shields for every criterion of a scores file (``auto``: the compression
    stage of the ``AUTO_REFERENCE`` entropy profile)."""
    profile = scores["profiles"].get(AUTO_REFERENCE) if protect == "auto" else None
    if protect == "auto" and profile is None:
        raise CompanionError(f"--protect auto needs the {AUTO_REFERENCE} entropy profile in the scores file")
    return parse_protect(protect, scores["num_layers"], profile)


def kept_layers(scores: dict, protect: str, granularity: str) -> list[int]:
    """The layers whose ``granularity`` block is never dropped: the protected ones, and those that lack
    the block (an attention-free layer of a hybrid stack has no ``attn`` block; scores record which
    layers have each block as ``present``)."""
    num_layers = scores["num_layers"]
    absent = set(range(num_layers)) - set(scores.get("present", {}).get(granularity, range(num_layers)))
    return sorted(set(protected_layers(scores, protect)) | absent)


def baseline_order(name: str, granularity: str, num_layers: int, protected: Iterable[int]) -> DropOrder:
    """A null reference's order of the prunable blocks: ``last`` drops the last ones first,
    ``random:<seed>`` a seeded random permutation (Python's ``random``, so it is stable across versions
    of numpy and torch). Its ``values`` are the drop ranks (protected layers rank last)."""
    prunable = [i for i in range(num_layers) if i not in set(protected)]
    if name == LAST:
        order = prunable[::-1]
    elif random_seed(name) is not None:
        order = random.Random(random_seed(name)).sample(prunable, len(prunable))
    else:
        raise CompanionError(f"unknown baseline '{name}'; use last or random:<seed>")
    ranks = {layer: rank for rank, layer in enumerate(order)}
    values = [float(ranks.get(layer, len(order))) for layer in range(num_layers)]
    return DropOrder(name, granularity, order, sorted(set(protected)), values, num_layers)


def headline_k(drops: Iterable[int], num_layers: int, fraction: float = HEADLINE_FRACTION) -> int:
    """The K > 0 of ``drops`` closest to fraction × layers (the paper's 12 of 32; 7 of 18), the smaller
    on a tie; 0 if there is none."""
    return min((k for k in drops if k > 0), key=lambda k: (abs(k - fraction * num_layers), k), default=0)


def drops_for(num_layers: int, fractions: Iterable[float]) -> list[int]:
    """Drop counts at ``fractions`` of a model's layers, rounded half up, with K = 0 (the dense model)."""
    return sorted({0} | {int(f * num_layers + 0.5) for f in fractions})
