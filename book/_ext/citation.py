"""The ``{citation}`` directive: BibTeX for the paper or this companion, written from ``CITATION.cff``.

``CITATION.cff`` at the repository root (one folder above the book) holds the citation metadata;
``repository.url`` of ``_config.yml`` (the theme's ``repository_url``) is the companion's URL. The
directive takes ``paper`` (the file's ``preferred-citation``) or ``software`` (the file itself) and a
``:key:`` option, the BibTeX key::

    ```{citation} paper
    :key: yang2026entrodrop
    ```
"""

from __future__ import annotations

from pathlib import Path

import yaml
from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective


def _names(authors: list[dict]) -> str:
    """BibTeX author list: ``Family, Given`` for persons, ``{Name}`` (kept as one unit) for entities."""
    return " and ".join(f"{a['family-names']}, {a['given-names']}" if "family-names" in a else "{" + a["name"] + "}"
                        for a in authors)


def _entry(kind: str, key: str, fields: dict[str, object]) -> str:
    """One BibTeX entry; empty fields are left out."""
    fields = {name: value for name, value in fields.items() if value}
    width = max(len(name) for name in fields)
    lines = [f"  {name.ljust(width)} = {{{value}}}," for name, value in fields.items()]
    return "\n".join([f"@{kind}{{{key},", *lines, "}"])


def paper_bibtex(cff: dict, key: str) -> str:
    """The ``preferred-citation`` of ``cff`` as a BibTeX entry (``inproceedings`` for a conference paper)."""
    ref = cff["preferred-citation"]
    arxiv = [i["value"] for i in ref.get("identifiers", []) if str(i["value"]).startswith("arXiv:")]
    kind = "inproceedings" if ref["type"] == "conference-paper" else "article"
    return _entry(kind, key, {"title": ref["title"], "author": _names(ref["authors"]),
                              "booktitle": ref.get("collection-title"), "year": ref.get("year"),
                              "url": ref.get("url"), "note": ", ".join(arxiv)})


def software_bibtex(cff: dict, key: str, url: str) -> str:
    """``cff`` itself (the companion) as a BibTeX ``software`` entry whose URL is ``url``."""
    return _entry("software", key, {"title": cff["title"], "author": _names(cff["authors"]),
                                    "version": cff.get("version"), "license": cff.get("license"), "url": url})


class Citation(SphinxDirective):
    """A BibTeX code block for ``paper`` or ``software``, read from ``CITATION.cff``."""

    required_arguments = 1
    option_spec = {"key": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        path = Path(self.env.srcdir).parent / "CITATION.cff"
        if not path.is_file():
            raise self.error(f"no {path}: the citation directive reads CITATION.cff beside the book folder")
        self.env.note_dependency(str(path))
        cff = yaml.safe_load(path.read_text(encoding="utf-8"))
        which, key = self.arguments[0], self.options.get("key", self.arguments[0])
        if which == "paper":
            text = paper_bibtex(cff, key)
        elif which == "software":
            url = self.config.html_theme_options.get("repository_url")
            if not url:
                raise self.error("the software citation needs repository.url in _config.yml")
            text = software_bibtex(cff, key, url)
        else:
            raise self.error(f"citation: expected 'paper' or 'software', got {which!r}")
        block = nodes.literal_block(text, text, language="bibtex")
        self.set_source_info(block)
        return [block]


def setup(app):
    app.add_directive("citation", Citation)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
