"""What produced a result: package versions, git commit, time; recorded in every results file."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from companion import __version__

_PACKAGES = ("torch", "transformers", "lm_eval", "accelerate", "datasets")


# Folders that hold what the code computes; changes there do not make the code "dirty".
OUTPUT_FOLDERS = ("results", "book/figures", "generated")
_ROOT = Path(__file__).resolve().parent.parent


def git_commit(root: Path | None = None) -> str | None:
    """The commit of the companion checkout at ``root``, with ``-dirty`` when code differs from it.

    Only tracked files outside ``OUTPUT_FOLDERS`` count: a changed results file does not make
    later results look as if they came from uncommitted code. None when ``root`` is no git checkout
    (e.g. an installed package, which must not report the commit of a repository around it).
    """
    root = Path(root) if root is not None else _ROOT
    if not (root / ".git").exists():
        return None
    excludes = [f":(exclude){folder}" for folder in OUTPUT_FOLDERS]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes],
                               cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment() -> dict:
    """Versions and machine facts for a results file (no user name, host name or path)."""
    versions = {"companion": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "git_commit": git_commit(), "platform": platform.platform()}


def timestamp() -> str:
    """UTC time in ISO format, seconds resolution."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
