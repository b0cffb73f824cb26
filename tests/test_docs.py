"""The docs hold together: every relative link in the README and docs/ points at a file that exists,
and every decision page is linked from somewhere a reader starts."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_relative_links_resolve():
    broken = [(str(p.relative_to(ROOT)), target) for p in PAGES for target in LINK.findall(p.read_text())
              if not target.startswith(("http://", "https://")) and not (p.parent / target).exists()]
    assert not broken, broken
    assert any("decisions/ridge.md" in t for p in PAGES for t in LINK.findall(p.read_text()))  # links were read


def test_every_decision_page_is_linked_from_outside_the_decisions():
    outside = " ".join(p.read_text() for p in PAGES if p.parent.name != "decisions")
    unlinked = [p.name for p in (ROOT / "docs" / "decisions").glob("*.md") if p.name not in outside]
    assert not unlinked, unlinked
