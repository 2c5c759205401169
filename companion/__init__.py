"""EntroDrop companion: entropy-based block pruning of decoder-only LLMs, reproduced."""

import warnings

__version__ = "0.1.0"

# tqdm.auto (imported by transformers, datasets and this package) warns in a Jupyter kernel without
# ipywidgets that it falls back to text bars, which is what the companion shows anyway; the warning
# would write the path of the environment into every executed notebook.
warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")
