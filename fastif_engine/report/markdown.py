"""The report's blocks as Markdown (user data escaped, never read as markup)."""
from __future__ import annotations

import re

from .blocks import Block, Code, Img, Raw, _parts

_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|])")  # what could break a table, a link or raw HTML


def _md_escape(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def _md(parts, in_table: bool = False) -> str:
    out = []
    for part in _parts(parts):
        if isinstance(part, Img):
            out.append(f"![{_md_escape(part.alt)}](report_assets/{part.name})")
        elif isinstance(part, Code):
            tick = "``" if "`" in part else "`"
            out.append(f"{tick}{part}{tick}".replace("|", "\\|") if in_table else f"{tick}{part}{tick}")
        elif isinstance(part, Raw):
            out.append(_md_escape(part))
        else:
            out.append(part.replace("|", "\\|") if in_table else part)
    return "".join(out).replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    lines = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            lines += [("# " if b.kind == "h1" else "## ") + _md(b.parts), ""]
        elif b.kind in ("p", "img"):
            lines += [_md(b.parts), ""]
        elif b.kind == "ul":
            for parts, children in b.items:
                lines.append("- " + _md(parts))
                lines += ["  - " + _md(child) for child in children]
            lines.append("")
        elif b.kind == "table":
            lines.append("| " + " | ".join(_md(h, True) for h in b.header) + " |")
            lines.append("|" + "---|" * len(b.header))
            lines += ["| " + " | ".join(_md(cell, True) for cell in row) + " |" for row in b.rows]
            lines.append("")
    return "\n".join(lines)
