"""EntroDrop companion: entropy-based block pruning of decoder-only LLMs, reproduced."""

__version__ = "0.1.0"
