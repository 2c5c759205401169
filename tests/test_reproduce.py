"""Which notebooks `reproduce` re-executes: a notebook's code digest follows the code it imports only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from companion.pipeline import notebooks as reproduce

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def package(tmp_path) -> Path:
    """A small package ``companion`` (under tmp_path) and a notebook that imports part of it."""
    root = tmp_path / "companion"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": '"""The package."""\n',
        "sub/__init__.py": "",
        "sub/a.py": '"""A."""\n\ndef f():\n    from companion import b  # inside a function\n    return b.g()\n',
        "b.py": "from .sub.c import h\n\ndef g():\n    return h() + 1\n",
        "sub/c.py": "def h():\n    return 1\n",
        "unused.py": "def u():\n    return 2\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# Title"]},
             {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
              "source": ["%matplotlib inline\n", "import companion.sub.a as a\n", "a.f()"]}]
    (tmp_path / "nb.ipynb").write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4,
                                                   "nbformat_minor": 5}))
    return root


def _digest(package: Path, parameters: dict | None = None) -> str:
    return reproduce.code_digest(package.parent / "nb.ipynb", parameters or {"profile": "smoke"}, package)


def test_the_import_graph_is_followed_transitively(package):
    modules = reproduce.imported_modules(reproduce.notebook_code(package.parent / "nb.ipynb"), package)
    assert [m.relative_to(package).as_posix() for m in modules] == [
        "__init__.py", "b.py", "sub/__init__.py", "sub/a.py", "sub/c.py"]


def test_digest_follows_the_code_the_notebook_uses(package):
    base = _digest(package)
    assert _digest(package) == base
    assert _digest(package, {"profile": "default"}) != base
    (package / "sub" / "a.py").write_text(
        '"""Reworded."""\n\ndef f():\n    # a comment\n    from companion import b\n\n    return b.g()\n')
    assert _digest(package) == base  # docstrings, comments and blank lines do not count
    (package / "unused.py").write_text("def u():\n    return 3\n")
    assert _digest(package) == base  # a module the notebook does not import
    (package / "sub" / "c.py").write_text("def h():\n    return 2\n")
    changed = _digest(package)
    assert changed != base  # imported through b, which sub.a imports inside a function
    (package.parent / "nb.ipynb").write_text((package.parent / "nb.ipynb").read_text().replace("# Title", "# T"))
    assert _digest(package) != changed  # the notebook itself


def test_every_figure_notebook_imports_the_analysis_it_uses():
    for name in reproduce.execution_order():
        modules = reproduce.imported_modules(reproduce.notebook_code(ROOT / "notebooks" / f"{name}.ipynb"))
        names = {m.relative_to(reproduce.PACKAGE).as_posix() for m in modules}
        assert {"__init__.py", "analysis/__init__.py", "analysis/figures.py", "analysis/findings.py"} <= names
        assert "cli.py" not in names  # nothing imports the command line
