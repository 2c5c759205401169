"""Execute the figure notebooks with papermill, skipping those whose inputs have not changed.

A notebook is up to date when its stamp (``<name>.inputs`` beside the executed copy) records the same
code digest (the notebook, its parameters and the package source) and the same fingerprint of the
results folder (every JSON/CSV file of every profile and of ``gpu/``: see
:func:`companion.store.fingerprint_files`). The notebooks themselves reuse results from the store, so
a notebook executed before another one changed the results folder is executed again in a second pass
(cheaply: everything it reads is stored by then). A rerun with nothing changed executes nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from companion import store
from companion.errors import CompanionError
from companion.io import atomic_write_text

# The notebooks that compute results come first (sweeps, the second calibration set, speed), so the
# read-only ones run once on final results.
NOTEBOOKS = ["accuracy_vs_pruning", "calibration", "speedup", "entropy_by_depth", "entropy_vs_cosine", "estimators"]
PACKAGE = Path(__file__).resolve().parent.parent
MAX_PASSES = 3


def code_digest(notebook: Path, parameters: dict) -> str:
    """sha256 over the notebook, its parameters and every source file of the package."""
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    for source in sorted(PACKAGE.rglob("*.py")):
        digest.update(source.relative_to(PACKAGE).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _stamp(code: str, results: str) -> str:
    return json.dumps({"code": code, "results": results}, sort_keys=True) + "\n"


def run_notebooks(notebooks_dir: Path, out_dir: Path, parameters: dict, names: list[str] | None = None,
                  book_dir: Path | None = None, force: bool = False) -> list[str]:
    """Execute ``names`` (default: all) into ``out_dir``; copy the executed ones into ``book_dir``.

    ``parameters`` are papermill's (``results_dir`` and ``profile`` name the results folder that is
    fingerprinted). Passes repeat until one executes nothing (at most ``MAX_PASSES``). Returns the
    names that were executed (the others were up to date).
    """
    import papermill

    names = names or NOTEBOOKS
    missing = [n for n in names if not (notebooks_dir / f"{n}.ipynb").exists()]
    if missing:
        raise CompanionError(f"no notebook {missing[0]}.ipynb in {notebooks_dir}; known: {', '.join(NOTEBOOKS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = Path(parameters.get("results_dir") or "results")  # the profile's results and results/gpu
    codes = {name: code_digest(notebooks_dir / f"{name}.ipynb", parameters) for name in names}
    executed: list[str] = []
    for _ in range(MAX_PASSES):
        ran = False
        for name in tqdm(names, desc="notebooks", unit="notebook"):
            target, stamp = out_dir / f"{name}.ipynb", out_dir / f"{name}.inputs"
            current = _stamp(codes[name], store.fingerprint_files(results))
            if not force and target.exists() and stamp.exists() and stamp.read_text() == current:
                continue
            partial = out_dir / f".{name}.partial.ipynb"
            papermill.execute_notebook(str(notebooks_dir / f"{name}.ipynb"), str(partial), parameters=parameters,
                                       cwd=str(Path.cwd()), progress_bar=False)
            partial.replace(target)
            atomic_write_text(stamp, _stamp(codes[name], store.fingerprint_files(results)))
            executed.append(name)
            ran = True
        force = False
        if not ran:
            break
    if book_dir is not None:
        for name in names:
            shutil.copyfile(out_dir / f"{name}.ipynb", book_dir / f"{name}.ipynb")
    return list(dict.fromkeys(executed))
