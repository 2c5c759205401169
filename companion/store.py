"""The one place that decides whether a computed result can be reused.

Every computed result (a scores file, one task's evaluation of one pruning, a sweep table, a speed
run) is written together with its **key**: a JSON object holding every input that can change it.
A result is reused only when the key recorded beside it equals the key of the request, field for
field; anything else recomputes and overwrites. The keys, assembled where each result is computed:

==============  ===========================================================================================
result          key
==============  ===========================================================================================
scores          model identity (spec, checkpoint fingerprint, dtype, device type); calibration documents
                (source, split, origin ``hub``/``local``/``file``, content sha256); windows (samples,
                seqlen, seed); estimators and their parameters; :func:`numerics`
evaluation      model identity; pruning (granularity, dropped layers); task; task data (origin and the
                sha256 of each local source file); few-shot; limit and the seed of the example sample;
                evaluation backend (``FastHFLM`` or stock ``HFLM``); perplexity windows; :func:`numerics`
sweep           the scores key's digest; methods, granularities, drop counts, protected layers rule;
                the evaluation settings; model identity; :func:`numerics`
speed           model identity; the machine (CPU or GPU name); scores key digest; method, protection,
                granularities, drop counts; prompt, generated tokens, batch, warm-up, repeats; numerics
notebook        the notebook's source, its parameters, the syntax trees of the package modules it imports
                (transitively), and a fingerprint of the JSON/CSV results under the run's results folder
                (see :mod:`companion.pipeline.notebooks`)
==============  ===========================================================================================

The model identity's fingerprint hashes every file of the checkpoint folder (weights, config, tokenizer,
pruning manifest), so a local model folder whose files changed is never served old results.
:func:`numerics` holds the versions of the libraries whose arithmetic results depend on (torch,
transformers, lm-eval) and ``NUMERICS_VERSION``, which is bumped whenever numeric code of this
package changes what it computes. So that a change cannot slip by unbumped, ``NUMERICS_FINGERPRINT``
records :func:`numeric_fingerprint`, a hash of the syntax trees of the modules that compute numbers
(``NUMERIC_MODULES``; comments, docstrings and formatting do not count), and a test fails when the two
differ: if numbers change, bump ``NUMERICS_VERSION``; if not (a pure refactor), record the new fingerprint
(``python -m companion.store`` prints it) and say in the commit how equality was checked. The fingerprint
is not part of any key, so a refactor keeps the stored results. Batch sizes are not in the keys: they
change results only by float rounding.

Entries are written atomically, under a per-entry file lock, so concurrent runs on one results folder
neither corrupt an entry nor compute it twice; a truncated or corrupt entry is recomputed after a
one-line warning.
"""

from __future__ import annotations

import ast
import fcntl
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from companion.io import atomic_write_json

# Bumped whenever code that computes numbers changes what it computes (estimators, scoring, evaluation,
# FastHFLM, perplexity, speed). 2: KNN distances of identical tokens are exactly zero. 3: evaluations
# keep per-example records and score a seeded random sample of each task instead of its first examples.
NUMERICS_VERSION = 4
# numeric_fingerprint() when NUMERICS_VERSION was last checked; re-record with `python -m companion.store`.
NUMERICS_FINGERPRINT = "b2399d85653b342c8e631afd57055165486183c2882ff20cca244c6967d5c50e"
# The modules whose code computes numbers, relative to the package; a new numeric module is added here. A
# module that does not exist is skipped (its name still counts, so a rename changes the fingerprint).
NUMERIC_MODULES = (
    "method/estimators.py",
    "method/scoring.py",
    "method/calibration.py",
    "method/orders.py",
    "experiments/evaluation.py",
    "experiments/fastlm.py",
    "experiments/sweep.py",
    "experiments/speed.py",
    "experiments/tasks.py",
    "model/surgery.py",
    "model/loading.py",
    "method/criteria.py",
    "method/removal.py",
    "experiments/yardstick.py",
    "model/layouts.py",
    "pipeline/config.py",
    "pipeline/run.py",
)
PACKAGE = Path(__file__).resolve().parent
_NUMERIC_LIBRARIES = ("torch", "transformers", "lm_eval")
log = logging.getLogger(__name__)


def numerics() -> dict[str, Any]:
    """The package's numerics version and the versions of the libraries that do its arithmetic."""
    return dict(_numerics())


@functools.lru_cache(maxsize=1)
def _numerics() -> dict[str, Any]:
    versions: dict[str, Any] = {"companion_numerics": NUMERICS_VERSION}
    for name in _NUMERIC_LIBRARIES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def code_fingerprint(path: str | Path) -> str:
    """sha256 of a Python module's syntax tree without its docstrings: comments, docstrings and
    formatting do not change it, any change to the code does."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    return hashlib.sha256(_canonical(tree).encode()).hexdigest()


def _canonical(node: Any) -> str:
    """A syntax tree as text, field by field, without positions, docstrings, ``None`` or empty fields
    (so that the text is the same under the Python versions whose trees differ only by such fields)."""
    if isinstance(node, ast.AST):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            body = body[1:]
        fields = []
        for name in node._fields:
            value = body if name == "body" and body is not None else getattr(node, name, None)
            if value is None or (isinstance(value, list) and not value):
                continue
            fields.append(f"{name}={_canonical(value)}")
        return f"{type(node).__name__}({','.join(fields)})"
    if isinstance(node, list):
        return f"[{','.join(map(_canonical, node))}]"
    return repr(node)


def numeric_fingerprint(modules: tuple[str, ...] = NUMERIC_MODULES) -> str:
    """sha256 over the names and :func:`code_fingerprint` of the numeric ``modules`` (paths relative to the
    package; a missing one counts by its name only)."""
    hasher = hashlib.sha256()
    for relative in modules:
        path = PACKAGE / relative
        hasher.update(f"{relative}={code_fingerprint(path) if path.exists() else 'missing'}\n".encode())
    return hasher.hexdigest()


def digest(key: Any) -> str:
    """sha256 of a key's canonical JSON (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def entry_path(folder: str | Path, key: Any) -> Path:
    """A content-addressed file name for ``key`` in ``folder``."""
    return Path(folder) / f"{digest(key)[:32]}.json"


def _warn(path: Path, reason: str) -> None:
    log.warning("ignoring unreadable result %s (%s); recomputing it", path.name, reason)


def read(path: str | Path, key: Any, warn: bool = True) -> dict | None:
    """The result stored at ``path`` if it was computed for ``key``; ``None`` when absent or stale.

    A truncated or corrupt file gives ``None`` (so it is recomputed) and, with ``warn``, a one-line warning.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if warn:
            _warn(path, type(exc).__name__)
        return None
    if not isinstance(content, dict) or "key" not in content:
        if warn:
            _warn(path, "no key recorded")
        return None
    return content if content["key"] == json.loads(json.dumps(key)) else None


def write(path: str | Path, key: Any, content: dict) -> dict:
    """Write ``content`` with its ``key`` (and the key's digest) atomically; returns what was written."""
    stored = {**content, "key": key, "key_sha256": digest(key)}
    atomic_write_json(path, stored)
    return stored


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock for the result at ``path`` (a ``.lock`` file beside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached(path: str | Path, key: Any, compute: Callable[[], dict], force: bool = False) -> dict:
    """The result for ``key`` at ``path``: reused when it was computed for this key, else computed and written.

    The check is repeated under the lock, so of two concurrent runs only one computes; ``force``
    recomputes (the old file stays until the new one replaces it).
    """
    found = None if force else read(path, key)
    if found is not None:
        return found
    with locked(path):
        found = None if force else read(path, key, warn=False)
        if found is not None:
            return found
        return write(path, key, compute())


EVALUATIONS = "evaluations"  # the folder of a results directory that holds evaluation entries


def fingerprint_files(folder: str | Path, suffixes: tuple[str, ...] = (".json", ".csv", ".parquet")) -> str:
    """sha256 over the relative names and bytes of the files with ``suffixes`` under ``folder``.

    Evaluation entries (``evaluations/`` folders) are left out: they are intermediate, not committed,
    and everything read from them is in the sweep and per-example tables, which are fingerprinted.
    """
    folder = Path(folder)
    hasher = hashlib.sha256()
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes
                           and not p.name.startswith(".") and EVALUATIONS not in p.relative_to(folder).parts):
            hasher.update(path.relative_to(folder).as_posix().encode() + b"\0")
            hasher.update(hashlib.sha256(path.read_bytes()).digest())
    return hasher.hexdigest()


if __name__ == "__main__":  # python -m companion.store: the fingerprint to record as NUMERICS_FINGERPRINT
    print(numeric_fingerprint())
