"""Calibration data: documents from a named source or a file, and seeded windows drawn from them.

Named sources (``wikitext2``, ``c4``) come from the Hugging Face Hub or from local copies under
``COMPANION_DATA_DIR``, as ``data_source`` says (``auto``: the Hub when reachable, else local). Both
give the same texts for the default splits, so a result does not depend on whether the machine was
online; the content hash in the provenance shows it (it is computed over the texts, not file bytes).

A calibration is named ``source`` or ``source:split`` (:func:`parse_calibration`): ``c4:train`` is the
first shard of C4's train split, which the released EntroDrop code calibrates on. It is read from the
Hub only (no local copy exists): without the Hub it is a one-line error naming what is missing.

Windows are drawn as the paper's code (and GPTQ's loaders) draw them: ``random.seed(seed)``, then for
each sample a random document, redrawn until it is longer than the window, and a random window of
``seqlen`` tokens inside it. Document lengths are known before drawing, so a pool without a long
enough document is an error instead of an endless loop.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from companion.errors import CompanionError
from companion.hub import DATA_SOURCES, hub_reachable, use_hub
from companion.paths import DATA_ENV, data_file

# C4 validation: the first documents of shard 0 in shard order. The local copy (SOURCES.md) holds this many
# complete documents; the Hub shard is cut to the same number, so both paths give the same texts.
C4_VALIDATION_DOCUMENTS = 1025
# Local copies under COMPANION_DATA_DIR (see its SOURCES.md). WikiText-2 has no train split there, C4 no train.
LOCAL_SOURCES = {
    "wikitext2": {"validation": "wikitext-2-raw-v1/validation.json", "test": "wikitext-2-raw-v1/test.json"},
    "c4": {"validation": "c4/c4_valid_part_of_0.json"},
}
# Hub datasets: WikiText-2 by config (any split), C4 by one shard per split (the paper's code uses train shard 0).
WIKITEXT_HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1")
C4_HUB = ("allenai/c4", {"validation": "en/c4-validation.00000-of-00008.json.gz",
                         "train": "en/c4-train.00000-of-01024.json.gz"})
DOCUMENT_LIMIT = {("c4", "validation"): C4_VALIDATION_DOCUMENTS}
DEFAULT_SPLIT = {"wikitext2": "validation", "c4": "validation"}
_ARTICLE_HEADING = re.compile(r"^ = [^=].* = \n$")


def content_sha256(texts: Iterable[str]) -> str:
    """sha256 over the sha256 digests of ``texts`` in order: equal texts give equal hashes, whatever the file."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()


@dataclass
class Documents:
    """A pool of documents and where it came from (``path`` is portable: relative, a Hub id or a file name)."""

    texts: list[str]
    source: str
    split: str
    origin: str
    path: str
    sha256: str
    data_source: str = "auto"
    revision: str | None = None

    def provenance(self) -> dict:
        """Where the documents came from, with no path of this machine; ``sha256`` is the content hash."""
        return {"source": self.source, "split": self.split, "origin": self.origin, "path": self.path,
                "revision": self.revision, "sha256": self.sha256, "documents": len(self.texts),
                "data_source": self.data_source}


@dataclass
class Windows:
    """Token windows of shape (samples, seqlen) and where each was cut from."""

    input_ids: torch.Tensor
    doc_index: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    seed: int = 0

    def provenance(self) -> dict:
        return {"samples": int(self.input_ids.shape[0]), "seqlen": int(self.input_ids.shape[1]),
                "seed": self.seed, "windows": [[d, o] for d, o in zip(self.doc_index, self.offset)]}


def wikitext_articles(rows: list[str]) -> list[str]:
    """Join WikiText rows into articles, split at top-level headings (rows like ``" = Title = "``)."""
    articles: list[list[str]] = []
    for row in rows:
        if _ARTICLE_HEADING.match(row) or not articles:
            articles.append([])
        articles[-1].append(row)
    return ["".join(article) for article in articles if "".join(article).strip()]


def _read_file(path: Path) -> list[str]:
    """Documents from a .txt (blank-line separated), .jsonl/.json (field ``text``) or .parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [p for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if p.strip()]
    if suffix in {".jsonl", ".json"}:
        text = path.read_text(encoding="utf-8")
        try:
            rows = json.loads(text)
            rows = rows if isinstance(rows, list) else [rows]
        except json.JSONDecodeError:
            try:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise CompanionError(f"{path.name} is neither JSON nor JSON lines ({exc})") from exc
        return [row["text"] if isinstance(row, dict) else str(row) for row in rows]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise CompanionError(f"{path.name} has no 'text' column")
        return table.column("text").to_pylist()
    raise CompanionError(f"unsupported document file '{path.name}': use .txt, .jsonl, .json or .parquet")


def _leading_texts(path: Path) -> list[str]:
    """The ``text`` of each complete object at the start of a JSON array whose end may be cut off."""
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos = text.find("[") + 1
    if pos == 0:
        raise CompanionError(f"{path.name} does not start with a JSON array")
    texts = []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return texts
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return texts
        texts.append(row["text"])


def _hub_revision(dataset: str) -> str | None:
    """The current commit of a Hub dataset, or None when the Hub does not say."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset).sha
    except (ImportError, OSError, ValueError):
        return None


def _from_hub(source: str, split: str) -> tuple[list[str], str, str | None]:
    """Rows of a named source from the Hub, the dataset id with its config or data file, and the revision."""
    from datasets import load_dataset

    limit = DOCUMENT_LIMIT.get((source, split))
    hub_split = split if limit is None else f"{split}[:{limit}]"
    if source == "wikitext2":
        dataset, config = WIKITEXT_HUB
        kwargs = {"name": config}
    else:
        dataset, files = C4_HUB
        if split not in files:
            raise CompanionError(f"c4 has no '{split}' split on the Hub here; available: {', '.join(files)}")
        config = files[split]
        kwargs = {"data_files": {split: config}}
    revision = _hub_revision(dataset)
    try:
        rows = list(load_dataset(dataset, split=hub_split, revision=revision, **kwargs)["text"])
    except (OSError, ValueError) as exc:
        raise CompanionError(f"cannot load {source} ({split}) from the Hub ({str(exc).splitlines()[0]})") from exc
    if limit is not None and len(rows) != limit:
        raise CompanionError(f"{dataset} {config} gave {len(rows)} documents, expected the first {limit}")
    return rows, f"{dataset}:{config}", revision


def parse_calibration(spec: str) -> tuple[str, str | None]:
    """``c4:train`` -> (``c4``, ``train``); a named source alone or a file path -> (spec, None)."""
    source, sep, split = spec.partition(":")
    if sep and source in LOCAL_SOURCES:
        if not split:
            raise CompanionError(f"calibration '{spec}' names no split; use e.g. c4:train or c4:validation")
        return source, split
    return spec, None


def check_available(source: str, split: str | None = None, data_source: str = "auto") -> None:
    """A one-line error, before any work, when a named source's split can be read neither from the Hub
    (unreachable, or not asked) nor from a local copy; files and reachable Hub data pass."""
    if source not in LOCAL_SOURCES:
        return
    split = split or DEFAULT_SPLIT[source]
    if not use_hub(data_source) and split not in LOCAL_SOURCES[source]:
        _no_local_split(source, split, data_source)


def _no_local_split(source: str, split: str, data_source: str) -> None:
    why = "the Hugging Face Hub is unreachable" if data_source == "auto" else f"data source '{data_source}'"
    hub = f"{C4_HUB[0]} {C4_HUB[1][split]}" if source == "c4" and split in C4_HUB[1] else f"{source} ({split})"
    local = ", ".join(f"{source}:{s}" for s in LOCAL_SOURCES[source])
    raise CompanionError(f"{source}:{split} is read from the Hub only ({hub}) and {why}; calibrate on a local "
                         f"copy instead ({local}, wikitext2), e.g. --calibration c4,wikitext2")


def _from_local(source: str, split: str, data_source: str) -> tuple[list[str], str]:
    """Rows of a named source from ``COMPANION_DATA_DIR`` and the file's path relative to it."""
    if split not in LOCAL_SOURCES[source]:
        _no_local_split(source, split, data_source)
    relative = LOCAL_SOURCES[source][split]
    why = "the Hugging Face Hub is unreachable" if data_source == "auto" else "data source 'local'"
    path = data_file(relative, f"{source} ({split}) is read locally ({why})")
    limit = DOCUMENT_LIMIT.get((source, split))
    rows = _leading_texts(path) if source == "c4" else _read_file(path)
    if limit is not None:
        if len(rows) < limit:
            raise CompanionError(f"{relative} under {DATA_ENV} holds {len(rows)} complete documents, expected {limit}")
        rows = rows[:limit]
    return rows, relative


def load_rows(source: str, split: str | None = None, data_source: str = "auto") -> tuple[list[str], dict]:
    """Raw rows of ``wikitext2`` or ``c4`` and where they came from.

    ``data_source``: ``hub`` (the Hugging Face Hub), ``local`` (the copies under ``COMPANION_DATA_DIR``)
    or ``auto`` (the Hub when reachable, else local). The provenance names no path of this machine and
    hashes the rows' content, so Hub and local rows with the same texts get the same ``sha256``.
    """
    if source not in LOCAL_SOURCES:
        raise CompanionError(f"unknown named source '{source}': use {' or '.join(LOCAL_SOURCES)}")
    if data_source not in DATA_SOURCES:
        raise CompanionError(f"unknown data source '{data_source}': use {', '.join(DATA_SOURCES)}")
    split = split or DEFAULT_SPLIT[source]
    if data_source == "hub" and not hub_reachable():
        raise CompanionError(f"{source} ({split}) was asked from the Hub, but the Hugging Face Hub is unreachable "
                             f"(use data source 'local' with {DATA_ENV})")
    revision = None
    if use_hub(data_source):
        rows, path, revision = _from_hub(source, split)
        origin = "hub"
    else:
        rows, path = _from_local(source, split, data_source)
        origin = "local"
    return rows, {"source": source, "split": split, "origin": origin, "path": path, "revision": revision,
                  "sha256": content_sha256(rows), "rows": len(rows), "data_source": data_source}


def load_documents(source: str, split: str | None = None, data_source: str = "auto") -> Documents:
    """Documents of ``wikitext2`` (articles), ``c4`` (see :func:`load_rows` for ``data_source``) or a file.

    ``source`` may carry its split (``c4:train``, see :func:`parse_calibration`). A file is recorded by its
    name and content hash only; ``data_source`` 'hub' cannot apply to it.
    """
    if split is None:
        source, split = parse_calibration(source)
    if source not in LOCAL_SOURCES:
        path = Path(source).expanduser()
        if not path.is_file():
            raise CompanionError(
                f"unknown calibration source '{source}': use wikitext2, c4, or a .txt/.jsonl/.json/.parquet file"
            )
        if data_source == "hub":
            raise CompanionError(f"data source 'hub' applies to wikitext2 and c4, not to the file {path.name}")
        texts = _read_file(path)
        return Documents(texts, path.stem, "file", "file", path.name, content_sha256(texts), data_source)
    rows, where = load_rows(source, split, data_source)
    texts = wikitext_articles(rows) if source == "wikitext2" else [t for t in rows if t.strip()]
    return Documents(texts, source, where["split"], where["origin"], where["path"], content_sha256(texts),
                     data_source, where["revision"])


def sample_windows(tokenizer, docs: Documents, samples: int, seqlen: int, seed: int) -> Windows:
    """Draw ``samples`` windows of ``seqlen`` tokens, as the paper's code does, from ``seed``."""
    if samples < 1 or seqlen < 2:
        raise CompanionError("samples must be >= 1 and seqlen >= 2")
    encoded = tokenizer(docs.texts)["input_ids"]
    if not any(len(ids) > seqlen for ids in encoded):
        longest = max((len(ids) for ids in encoded), default=0)
        raise CompanionError(
            f"no document of '{docs.source}' is longer than the window ({seqlen} tokens; longest has {longest}); "
            "use a shorter --seqlen or another source"
        )
    rng = random.Random(seed)
    rows, doc_index, offsets = [], [], []
    while len(rows) < samples:
        i = rng.randint(0, len(encoded) - 1)
        if len(encoded[i]) <= seqlen:
            continue
        j = rng.randint(0, len(encoded[i]) - seqlen - 1)
        rows.append(encoded[i][j:j + seqlen])
        doc_index.append(i)
        offsets.append(j)
    return Windows(torch.tensor(rows, dtype=torch.long), doc_index, offsets, seed)

