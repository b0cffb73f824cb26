"""The report as data: blocks of text parts, rendered to Markdown (:mod:`.markdown`) and HTML (:mod:`.html`)."""
from __future__ import annotations

from dataclasses import dataclass, field


# ---- the report as data: blocks of text parts, rendered to Markdown and (escaped by Jinja) to HTML ----
#
# A *part* is a ``str`` of fastif's own words, which may use **bold** and `code`, or a :class:`Raw` /
# :class:`Code` value from the user's data (labels, ids, snippets, paths), which is never read as
# markup, or an :class:`Img`. A block is ``Block(kind, parts | items | rows)``.


class Raw(str):
    """User data shown verbatim: never parsed for markup, always escaped."""


class Code(Raw):
    """User data shown as code (a path, a model name)."""


@dataclass(frozen=True)
class Img:
    name: str  # report_assets/<name>
    alt: str


@dataclass
class Block:
    kind: str  # h1 | h2 | p | ul | table | img
    parts: list = field(default_factory=list)  # h1, h2, p: parts; img: [Img]
    items: list = field(default_factory=list)  # ul: (parts, [child parts, ...]) pairs
    header: list = field(default_factory=list)  # table
    rows: list = field(default_factory=list)  # table: rows of cells, each a part or a list of parts


def _parts(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def _p(*parts) -> Block:
    return Block("p", list(parts))
