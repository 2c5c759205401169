"""Execute the figure notebooks with papermill, skipping those whose inputs have not changed.

A notebook's inputs are its own file, its parameters and the source of the ``companion`` package;
their hash is stored beside the executed copy, so a rerun with nothing changed executes nothing.
The notebooks themselves reuse cached scores and evaluations under the results folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from companion.errors import CompanionError

# The sweep runs in the accuracy notebook first; the others reuse its cached scores and evaluations.
NOTEBOOKS = ["accuracy_vs_pruning", "entropy_by_depth", "entropy_vs_cosine", "estimators", "calibration", "speedup"]
PACKAGE = Path(__file__).resolve().parent


def inputs_hash(notebook: Path, parameters: dict) -> str:
    """sha256 over the notebook, its parameters and every source file of the package."""
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    for source in sorted(PACKAGE.rglob("*.py")):
        digest.update(source.relative_to(PACKAGE).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def run_notebooks(notebooks_dir: Path, out_dir: Path, parameters: dict, names: list[str] | None = None,
                  book_dir: Path | None = None, force: bool = False) -> list[str]:
    """Execute ``names`` (default: all) into ``out_dir``; copy the executed ones into ``book_dir``.

    Returns the names that were executed (the others were up to date).
    """
    import papermill

    names = names or NOTEBOOKS
    missing = [n for n in names if not (notebooks_dir / f"{n}.ipynb").exists()]
    if missing:
        raise CompanionError(f"no notebook {missing[0]}.ipynb in {notebooks_dir}; known: {', '.join(NOTEBOOKS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = []
    for name in tqdm(names, desc="notebooks", unit="notebook"):
        source, target, stamp = notebooks_dir / f"{name}.ipynb", out_dir / f"{name}.ipynb", out_dir / f"{name}.inputs"
        digest = inputs_hash(source, parameters)
        if force or not target.exists() or not stamp.exists() or stamp.read_text().strip() != digest:
            partial = out_dir / f".{name}.partial.ipynb"
            papermill.execute_notebook(str(source), str(partial), parameters=parameters, cwd=str(Path.cwd()),
                                       progress_bar=False)
            partial.replace(target)
            stamp.write_text(digest + "\n")
            executed.append(name)
        if book_dir is not None:
            shutil.copyfile(target, book_dir / f"{name}.ipynb")
    return executed
