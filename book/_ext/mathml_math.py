"""Sphinx HTML math renderer "mathml": LaTeX is converted to MathML when the book is built.

Sphinx's default renderer emits LaTeX for MathJax to typeset in the browser, and MathJax comes from a
CDN, so an offline reader sees raw ``$...$``. This renderer uses docutils' own LaTeX-to-MathML
converter instead; browsers display MathML natively (Chromium since version 109, Firefox, Safari), so
the built book needs no JavaScript and no network for its formulas. LaTeX the converter does not
support is reported as a Sphinx warning (which fails a ``-W`` build) and shown as code.
"""

from __future__ import annotations

import re

from docutils import nodes
from docutils.utils.math import MathError, latex2mathml, unichar2tex
from sphinx.locale import _
from sphinx.util import logging
from sphinx.util.math import get_node_equation_number

logger = logging.getLogger(__name__)

# amsmath blocks (``nowrap``) carry their environment; the converter knows ``aligned`` but not these.
_ENVIRONMENTS = re.compile(r"\\(begin|end)\{(align|flalign|equation)(\*?)\}")

# common amsmath commands the converter lacks, mapped to ones it knows
_ALIASES = re.compile(r"\\(dots|dotsb|dotsi|dotsm|dotso|tfrac|dfrac)(?![A-Za-z])")
_ALIAS_FOR = {"dots": "ldots", "dotsb": "cdots", "dotsi": "cdots", "dotsm": "cdots", "dotso": "ldots",
              "tfrac": "frac", "dfrac": "frac"}


def _unwrap(latex: str) -> str:
    return _ENVIRONMENTS.sub(lambda m: rf"\{m.group(1)}{{aligned}}" if m.group(2) != "equation" else "", latex)


def _convert(self, node: nodes.Element, latex: str, block: bool) -> str:
    try:
        tex = _ALIASES.sub(lambda m: "\\" + _ALIAS_FOR[m.group(1)], latex.translate(unichar2tex.uni2tex_table))
        return latex2mathml.tex2mathml(tex, as_block=block)
    except MathError as err:
        logger.warning("cannot convert LaTeX to MathML (%s): %s", err, latex, location=node)
        return f'<code class="math-error">{self.encode(latex)}</code>'


def visit_math(self, node: nodes.math) -> None:
    self.body.append(self.starttag(node, "span", "", CLASS="math notranslate nohighlight"))
    self.body.append(_convert(self, node, node.astext(), block=False) + "</span>")
    raise nodes.SkipNode


def visit_math_block(self, node: nodes.math_block) -> None:
    self.body.append(self.starttag(node, "div", CLASS="math notranslate nohighlight"))
    if node.get("number"):
        number = get_node_equation_number(self, node)
        self.body.append(f'<span class="eqno">({number})')
        self.add_permalink_ref(node, _("Link to this equation"))
        self.body.append("</span>")
    latex = node.astext()
    if node.get("nowrap"):
        latex = _unwrap(latex)
    # blank-line separated equations are one block each, as in Sphinx's MathJax renderer
    for part in (p for p in latex.split("\n\n") if p.strip()):
        self.body.append(_convert(self, node, part.strip(), block=True))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (visit_math, None), (visit_math_block, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
