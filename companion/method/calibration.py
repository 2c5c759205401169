"""Calibration data: documents from a named source or a file, and seeded windows drawn from them.

Windows are drawn as the paper's code (and GPTQ's loaders) draw them: ``random.seed(seed)``, then for
each sample a random document, redrawn until it is longer than the window, and a random window of
``seqlen`` tokens inside it. Document lengths are known before drawing, so a pool without a long
enough document is an error instead of an endless loop.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from companion.errors import CompanionError
from companion.hub import hub_reachable
from companion.io import sha256_file, sha256_text
from companion.paths import data_file

# Local copies under COMPANION_DATA_DIR (see its SOURCES.md). WikiText-2 has no train split there.
LOCAL_SOURCES = {
    "wikitext2": {"validation": "wikitext-2-raw-v1/validation.json", "test": "wikitext-2-raw-v1/test.json"},
    "c4": {"validation": "c4/c4_validation_2k.parquet"},
}
DEFAULT_SPLIT = {"wikitext2": "validation", "c4": "validation"}
_ARTICLE_HEADING = re.compile(r"^ = [^=].* = \n$")


@dataclass
class Documents:
    """A pool of documents and where it came from."""

    texts: list[str]
    source: str
    split: str
    origin: str
    path: str
    sha256: str

    def provenance(self) -> dict:
        return {"source": self.source, "split": self.split, "origin": self.origin, "path": self.path,
                "sha256": self.sha256, "documents": len(self.texts)}


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
                raise CompanionError(f"{path} is neither JSON nor JSON lines ({exc})") from exc
        return [row["text"] if isinstance(row, dict) else str(row) for row in rows]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise CompanionError(f"{path} has no 'text' column")
        return table.column("text").to_pylist()
    raise CompanionError(f"unsupported document file '{path.name}': use .txt, .jsonl, .json or .parquet")


def _from_hub(source: str, split: str) -> list[str]:
    from datasets import load_dataset

    if source == "wikitext2":
        return load_dataset("wikitext", "wikitext-2-raw-v1", split=split)["text"]
    data_files = {split: f"en/c4-{split}.00000-of-0000{8 if split == 'validation' else 1024}.json.gz"}
    return load_dataset("allenai/c4", data_files=data_files, split=split)["text"]


def load_rows(source: str, split: str | None = None) -> tuple[list[str], dict]:
    """Raw rows of ``wikitext2`` or ``c4`` (Hub when reachable, else ``COMPANION_DATA_DIR``) and where they came from."""
    split = split or DEFAULT_SPLIT[source]
    if hub_reachable():
        rows = _from_hub(source, split)
        return rows, {"source": source, "split": split, "origin": "hub", "path": f"hf://{source}/{split}",
                      "sha256": sha256_text("\n".join(rows))}
    if split not in LOCAL_SOURCES[source]:
        raise CompanionError(f"{source} has no local '{split}' split; available: {', '.join(LOCAL_SOURCES[source])}")
    local = data_file(LOCAL_SOURCES[source][split], f"{source} ({split}): the Hugging Face Hub is unreachable")
    return _read_file(local), {"source": source, "split": split, "origin": "local", "path": str(local),
                               "sha256": sha256_file(local)}


def load_documents(source: str, split: str | None = None) -> Documents:
    """Documents of ``wikitext2`` (articles), ``c4`` (Hub when reachable, else ``COMPANION_DATA_DIR``) or a file."""
    path = Path(source).expanduser()
    if source not in LOCAL_SOURCES:
        if not path.is_file():
            raise CompanionError(
                f"unknown calibration source '{source}': use wikitext2, c4, or a .txt/.jsonl/.json/.parquet file"
            )
        return Documents(_read_file(path), path.stem, "file", "local", str(path.resolve()), sha256_file(path))
    rows, where = load_rows(source, split)
    texts = wikitext_articles(rows) if source == "wikitext2" else [t for t in rows if t.strip()]
    return Documents(texts, source, where["split"], where["origin"], where["path"], where["sha256"])


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

