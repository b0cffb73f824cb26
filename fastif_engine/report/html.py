"""The report's blocks as one self-contained HTML page (template.html, style.css beside this module)."""
from __future__ import annotations

import base64
import re
from pathlib import Path

from .blocks import Block, Code, Img, Raw, _parts

_HERE = Path(__file__).parent
# ---- HTML (Jinja2, autoescaped) ----

_MARKUP = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`")




def to_html(blocks: list[Block], assets: dict[str, bytes]) -> str:
    """Self-contained HTML: Jinja2 escapes every piece of text; images are inlined as data URLs."""
    from jinja2 import Environment
    from markupsafe import Markup, escape

    def own_words(text: str) -> Markup:  # fastif's own **bold** and `code`, everything else escaped
        out, pos = Markup(""), 0
        for m in _MARKUP.finditer(text):
            out += escape(text[pos:m.start()])
            bold, code = m.groups()
            out += Markup("<b>%s</b>") % bold if bold is not None else Markup("<code>%s</code>") % code
            pos = m.end()
        return out + escape(text[pos:])

    def inline(parts) -> Markup:
        out = Markup("")
        for part in _parts(parts):
            if isinstance(part, Img):
                data = base64.b64encode(assets[part.name]).decode()
                out += Markup('<img alt="%s" src="data:image/png;base64,%s">') % (part.alt, data)
            elif isinstance(part, Code):
                out += Markup("<code>%s</code>") % str(part)
            elif isinstance(part, Raw):
                out += escape(str(part))
            else:
                out += own_words(part)
        return out

    env = Environment(autoescape=True, trim_blocks=True)
    env.filters["inline"] = inline
    return env.from_string((_HERE / "template.html").read_text()).render(
        blocks=blocks, style=(_HERE / "style.css").read_text())
