"""Is the Hugging Face Hub reachable, and do data come from it? Reachability is asked once per process,
so offline runs never wait on timeouts."""

from __future__ import annotations

import functools
import os
import socket

# Where calibration and task data come from: the Hub when reachable (auto), the Hub, or local copies.
DATA_SOURCES = ("auto", "hub", "local")


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hub is neither disabled (``HF_HUB_OFFLINE``) nor out of reach."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def use_hub(data_source: str) -> bool:
    """Whether data are read from the Hub under ``data_source`` (one of ``DATA_SOURCES``): always for
    ``hub``, for ``auto`` when the Hub is reachable, never for ``local``."""
    return data_source == "hub" or (data_source == "auto" and hub_reachable())
