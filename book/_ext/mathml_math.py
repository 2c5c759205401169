"""Sphinx HTML math renderer "mathml": LaTeX is converted to MathML when the book is built.

Sphinx's default renderer emits LaTeX for MathJax to typeset in the browser, and MathJax comes from a
CDN, so an offline reader sees raw ``$...$``. This renderer uses docutils' own LaTeX-to-MathML
converter instead; browsers display MathML natively (Chromium since version 109, Firefox, Safari), so
the built book needs no JavaScript and no network for its formulas. LaTeX the converter does not
support is reported as a Sphinx warning (which fails a ``-W`` build) and shown as code.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

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


_MATHML = "http://www.w3.org/1998/Math/MathML"
_OPENING = set("([{\u27e8|\u2016")


def _fix(mathml: str) -> str:
    """Two repairs of the converter's output, as TeX typesets them.

    - An accented symbol with a subscript (``\\hat{H}_{k}``) comes out as one ``munderover`` that
      puts the subscript *under* the symbol; it becomes ``msub(mover(symbol, accent), subscript)``.
    - A function name (``\\log n``) is followed by an invisible "apply function" operator with no
      space, so ``d \\log n`` reads "dlogn"; TeX's thin spaces are added after the name (unless an
      opening fence follows) and before it (after an ordinary symbol).
    """
    root = ET.fromstring(mathml.replace(f' xmlns="{_MATHML}"', "", 1).replace("&ApplyFunction;", "&#x2061;"))
    for parent in list(root.iter()):
        applied = [i for i, child in enumerate(parent) if child.tag == "mo" and child.text == "\u2061"]
        for i in reversed(applied):  # thin space before a function name that follows an ordinary symbol
            if i >= 2 and parent[i - 2].tag != "mo":
                parent.insert(i - 1, ET.Element("mspace", width="0.1667em"))
        for i, child in enumerate(list(parent)):
            if child.tag == "munderover" and len(child) == 3:
                base, under, over = child
                if base.tag != "mo" and "movablelimits" not in base.attrib and over.tag == "mo":
                    accented = ET.Element("mover", accent="true")
                    accented.extend([base, over])
                    script = ET.Element("msub")
                    script.extend([accented, under])
                    parent[i] = script
            elif child.tag == "mo" and child.text == "\u2061":
                nxt = parent[i + 1] if i + 1 < len(parent) else None
                if nxt is not None and nxt.tag == "mrow" and len(nxt):
                    nxt = nxt[0]
                if nxt is None or not (nxt.tag == "mo" and (nxt.text or "").strip() in _OPENING):
                    child.set("rspace", "0.1667em")
    root.set("xmlns", _MATHML)
    return ET.tostring(root, encoding="unicode").replace("\u2061", "&#x2061;")


def _convert(self, node: nodes.Element, latex: str, block: bool) -> str:
    try:
        tex = _ALIASES.sub(lambda m: "\\" + _ALIAS_FOR[m.group(1)], latex.translate(unichar2tex.uni2tex_table))
        return _fix(latex2mathml.tex2mathml(tex, as_block=block))
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
