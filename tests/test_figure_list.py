"""The one list of figure pages (companion.analysis.figure_list) agrees with everything that names them:
the notebooks, the book's table of contents, the placeholders and the README's figure table."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from companion.analysis.figure_list import FIGURE_PAGES, book_order, execution_order, figure_page

ROOT = Path(__file__).resolve().parents[1]


def _source(notebook: str) -> tuple[str, str]:
    """(markdown, code) of ``notebooks/<notebook>.ipynb``, each cell's source joined."""
    cells = json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    joined = {kind: "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == kind)
              for kind in ("markdown", "code")}
    return joined["markdown"], joined["code"]


def test_execution_order_runs_the_computing_notebooks_first():
    order = execution_order()
    assert sorted(order) == sorted(book_order()) and len(set(order)) == len(FIGURE_PAGES)
    computes = [figure_page(name).computes for name in order]
    assert computes == sorted(computes, reverse=True)
    with pytest.raises(KeyError, match="known: entropy_by_depth"):
        figure_page("nothing")


def test_every_notebook_and_book_page_is_listed():
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")) == sorted(book_order())
    assert sorted(p.stem for p in (ROOT / "book" / "figures").glob("*.ipynb")) == sorted(book_order())


def test_the_toc_lists_the_figure_pages_in_book_order():
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    parts = [part for part in toc["parts"] if part["caption"] == "Figures"]
    assert len(parts) == 1, "book/_toc.yml has no (or several) 'Figures' part"
    assert [chapter["file"] for chapter in parts[0]["chapters"]] == [f"figures/{n}" for n in book_order()], (
        "the Figures part of book/_toc.yml must list companion.analysis.figure_list.FIGURE_PAGES in order")


@pytest.mark.parametrize("page", FIGURE_PAGES, ids=lambda p: p.notebook)
def test_each_notebook_has_the_listed_title_and_figures(page):
    markdown, code = _source(page.notebook)
    assert markdown.startswith(f"# {page.title}\n"), f"notebooks/{page.notebook}.ipynb: first heading"
    saved = re.findall(r"save_figure\(\s*\w+,\s*run\.figures_dir\s*/\s*f?\"([^\"]+)\"", code)
    assert sorted(re.sub(r"\{[^}]*\}", "<model>", name) for name in saved) == sorted(page.figures)


def test_placeholders_are_written_from_the_list(tmp_path, monkeypatch):
    script = ROOT / "book" / "_tools" / "make_placeholders.py"
    spec = importlib.util.spec_from_file_location("make_placeholders", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "FIGURES", tmp_path)
    monkeypatch.setattr(sys, "argv", ["make_placeholders.py"])
    module.main()
    assert sorted(p.stem for p in tmp_path.glob("*.ipynb")) == sorted(book_order())
    first = json.loads((tmp_path / "speedup.ipynb").read_text())["cells"][0]
    assert "".join(first["source"]).startswith("# Inference speedup")


def _readme_rows() -> dict[str, list[str]]:
    """The rows of the README's figure table by notebook name: [page, notebook, reads, figures]."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Figure → notebook → results file"):]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        found = re.fullmatch(r"`notebooks/(\w+)\.ipynb`", cells[1]) if len(cells) == 4 else None
        if found:
            rows[found.group(1)] = cells
    return rows


def test_the_readme_figure_table_follows_the_list():
    rows = _readme_rows()
    assert list(rows) == book_order(), "README's figure table: one row per figure page, in book order"
    for page in FIGURE_PAGES:
        title, _, reads, figures = rows[page.notebook]
        assert title == page.title
        assert all(f"`{name}`" in reads for name in page.reads), f"{page.notebook}: files it reads"
        assert sorted(re.findall(r"`([^`]+)`", figures)) == sorted(page.figures), f"{page.notebook}: figures"
