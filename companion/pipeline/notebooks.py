"""Execute the figure notebooks with papermill, skipping those whose inputs have not changed.

A notebook is up to date when its stamp (``<name>.inputs`` beside the executed copy) records the same
code digest (:func:`code_digest`: the notebook, its parameters and the syntax trees of the package
modules it imports, transitively) and the same fingerprint of the results folder (every JSON/CSV file
of every profile and of ``gpu/``: see :func:`companion.store.fingerprint_files`). The notebooks
themselves reuse results from the store, so a notebook executed before another one changed the
results folder is executed again in a second pass (cheaply: everything it reads is stored by then).
A rerun with nothing changed executes nothing, and neither does one after an edit of docstrings,
comments, or modules that no notebook imports. The notebooks and their order come from
:mod:`companion.analysis.figure_list`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from companion import store
from companion.analysis.figure_list import execution_order
from companion.errors import CompanionError
from companion.io import atomic_write_text

PACKAGE = Path(__file__).resolve().parent.parent
MAX_PASSES = 3


def code_digest(notebook: Path, parameters: dict, package: Path = PACKAGE) -> str:
    """sha256 over the notebook, its parameters and the :func:`companion.store.code_fingerprint` of each
    module of ``package`` that the notebook imports, transitively (:func:`imported_modules`): editing a
    docstring, a comment or a module the notebook does not use leaves it unchanged."""
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    for module in imported_modules(notebook_code(notebook), package):
        digest.update(module.relative_to(package).as_posix().encode() + b"\0")
        digest.update(store.code_fingerprint(module).encode())
    return digest.hexdigest()


def notebook_code(notebook: Path) -> list[str]:
    """The source of each code cell of ``notebook``, IPython magics and shell lines left out."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    sources = ("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
               for c in cells if c["cell_type"] == "code")
    return ["\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
            for source in sources]


def imported_modules(sources: Iterable[str], package: Path = PACKAGE) -> list[Path]:
    """The module files of ``package`` that ``sources`` (Python code) import, transitively: every
    ``import``/``from`` statement counts, inside functions too, with the packages above each module
    (their ``__init__.py`` runs on import). Code that does not parse counts as importing every module."""
    found: set[Path] = set()
    pending = [(source, package.name) for source in sources]
    while pending:
        source, importer = pending.pop()
        try:
            names = _imports(ast.parse(source), importer)
        except SyntaxError:
            return sorted(package.rglob("*.py"))
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # the module and the packages above it
                path = _module_file(package, parts[:depth])
                if path is not None and path not in found:
                    found.add(path)
                    module = ".".join(parts[:depth])
                    pending.append((path.read_text(encoding="utf-8"),
                                    module if path.name == "__init__.py" else module.rpartition(".")[0]))
    return sorted(found)


def _imports(tree: ast.AST, package: str) -> list[str]:
    """Dotted names that ``tree`` imports (``from a import b`` gives ``a`` and ``a.b``); ``package`` is
    the package the code is in, for relative imports."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return names


def _module_file(package: Path, parts: list[str]) -> Path | None:
    """The file of module ``parts`` (dotted name split) if it belongs to ``package``."""
    if parts[0] != package.name:
        return None
    base = package.joinpath(*parts[1:])
    for path in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
        if path is not None and path.is_file():
            return path
    return None


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

    names = names or execution_order()
    missing = [n for n in names if not (notebooks_dir / f"{n}.ipynb").exists()]
    if missing:
        raise CompanionError(f"no notebook {missing[0]}.ipynb in {notebooks_dir}; known: "
                             f"{', '.join(execution_order())}")
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
