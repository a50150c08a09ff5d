"""The README is a landing page and the reference lives in docs/: every relative link in them must resolve, to a
file that exists and, with an anchor, to a heading in it (GitHub's anchor rule)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def prose(text: str) -> str:
    """The text outside fenced code blocks (a `[x](y)` inside code is not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def anchors(page: Path) -> set[str]:
    heads = re.findall(r"^#+ (.*)$", prose(page.read_text()), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def broken_links(page: Path) -> list[str]:
    bad = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor})")
    return bad


def test_every_relative_link_in_readme_and_docs_resolves():
    assert len(pages()) > 5
    bad = {str(p.relative_to(ROOT)): b for p in pages() if (b := broken_links(p))}
    assert not bad, bad


def test_the_checker_finds_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A heading, with `code`\n")
    page.write_text("[ok](other.md#a-heading-with-code) [web](https://x.org/a.md) [gone](nope.md) "
                    "[anchor](other.md#nowhere) [self](#top)\n\n# Top\n\n```\n[code](not-a-link.md)\n```\n")
    assert broken_links(page) == ["nope.md (no such file)", "other.md#nowhere (no heading #nowhere)"]
