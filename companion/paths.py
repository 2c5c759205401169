"""Where the companion reads local data and keeps its caches; both set by environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from companion.errors import CompanionError

DATA_ENV = "COMPANION_DATA_DIR"
CACHE_ENV = "COMPANION_CACHE_DIR"


def data_dir(required: bool = True) -> Path | None:
    """The local benchmark/calibration data directory named by ``COMPANION_DATA_DIR``."""
    value = os.environ.get(DATA_ENV)
    if not value:
        if required:
            raise CompanionError(f"no local data: set {DATA_ENV} to the folder holding the benchmark files")
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise CompanionError(f"{DATA_ENV}={value} is not a directory")
    return path


def data_file(relative: str, what: str) -> Path:
    """A file under the data directory, or a clear error naming the expected path."""
    if not os.environ.get(DATA_ENV):
        raise CompanionError(f"{what} and {DATA_ENV} is not set; set it to the folder that holds {relative}")
    root = data_dir()
    path = root / relative
    if not path.exists():
        raise CompanionError(f"{what}: expected {path} (set {DATA_ENV} to the folder that holds {relative})")
    return path


def cache_dir() -> Path:
    """The companion's cache (converted weights, evaluation results); ``COMPANION_CACHE_DIR`` overrides."""
    value = os.environ.get(CACHE_ENV)
    path = Path(value).expanduser() if value else Path.home() / ".cache" / "companion"
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_slug(spec: str) -> str:
    """A model spec as a results folder name: ``meta-llama/Llama-3.1-8B`` -> ``meta-llama__Llama-3.1-8B``."""
    return spec.replace("/", "__")
