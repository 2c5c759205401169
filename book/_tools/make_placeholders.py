"""Write small placeholder figure notebooks into book/figures/ so the book builds before any run.

Each placeholder looks like an executed notebook: a title, one markdown cell and one executed code cell
whose output is a PNG. `make book` overwrites them with the notebooks that `make reproduce` executed
into generated/notebooks/. Existing notebooks are kept unless --force is given.

    .venv/bin/python book/_tools/make_placeholders.py [--force]
"""

from __future__ import annotations

import argparse
import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output  # noqa: E402

from companion.analysis.figure_list import FIGURE_PAGES  # noqa: E402  (the pages: one list, see there)

FIGURES = Path(__file__).resolve().parent.parent / "figures"

CODE = """import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(4, 1.5))
ax.text(0.5, 0.5, "placeholder", ha="center", va="center", fontsize=16)
ax.set_axis_off()
plt.show()"""


def placeholder_png() -> str:
    fig, ax = plt.subplots(figsize=(4, 1.5), dpi=80)
    ax.text(0.5, 0.5, "placeholder", ha="center", va="center", fontsize=16, color="0.4")
    ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def placeholder(title: str, shows: str, png: str) -> nbformat.NotebookNode:
    text = (f"# {title}\n\nPlaceholder page: `make book` replaces it with the executed notebook, which shows "
            f"{shows}. Run `make reproduce` and then `make book` to see the measured figure here.")
    code = new_code_cell(CODE, execution_count=1, outputs=[
        new_output("display_data", data={"image/png": png, "text/plain": "<Figure size 320x120 with 1 Axes>"})])
    notebook = new_notebook(cells=[new_markdown_cell(text), code])
    notebook.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                              "language_info": {"name": "python"}, "companion": {"placeholder": True}})
    return notebook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite existing notebooks")
    args = parser.parse_args()
    FIGURES.mkdir(parents=True, exist_ok=True)
    png = placeholder_png()
    for page in FIGURE_PAGES:
        path = FIGURES / f"{page.notebook}.ipynb"
        if path.exists() and not args.force:
            continue
        notebook = placeholder(page.title, page.shows, png)
        nbformat.validate(notebook)
        nbformat.write(notebook, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
