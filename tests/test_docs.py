"""The README and the pages of docs/: every relative link resolves, the README stays short, and
the quick start keeps its two commands."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and ![alt](target); the text may hold one level of brackets and span lines
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> str:
    """The text outside fenced code blocks, with inline code spans replaced by a word."""
    lines, fence = [], None
    for line in text.split("\n"):
        marker = re.match(r"^\s*(```|~~~)", line)
        if marker:
            fence = None if fence == marker.group(1) else (fence or marker.group(1))
            lines.append("")
            continue
        lines.append("" if fence else line)
    return CODE_SPAN.sub("code", "\n".join(lines))


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text (link targets, emphasis and code marks dropped),
    lowercased, every character but letters, digits, '-', '_' and spaces dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in "-_ ")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings (outside code blocks), duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    fence = None
    for line in path.read_text(encoding="utf-8").split("\n"):
        marker = re.match(r"^\s*(```|~~~)", line)
        if marker:
            fence = None if fence == marker.group(1) else (fence or marker.group(1))
            continue
        match = None if fence else HEADING.match(line)
        if match:
            slug = github_anchor(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    targets = LINK.findall(_prose(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"^(https?:|mailto:)", t, re.I)]


def all_links() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES for target in relative_links(page)]


def test_github_anchor_rule() -> None:
    assert github_anchor("Mean Teacher (`method.name: mean_teacher`)") == "mean-teacher-methodname-mean_teacher"
    assert github_anchor("Another method on the same recipe: `--method`") == "another-method-on-the-same-recipe---method"
    assert github_anchor("Momentum networks and the baselines (polyps, 20 % labels) — earlier protocol") == (
        "momentum-networks-and-the-baselines-polyps-20--labels--earlier-protocol"
    )


def test_the_link_finder_finds_the_links() -> None:
    sample = "[a](x.md) `[b](not-a-link.md)` ![c](img.png)\n```\n[d](in-code.md)\n```\n[e\nf](y.md#z) [g](https://example.org)"
    assert LINK.findall(_prose(sample)) == ["x.md", "img.png", "y.md#z", "https://example.org"]
    links = all_links()
    assert len(links) > 20, f"only {len(links)} relative links found in README.md and docs/*.md"
    assert any(target.startswith("docs/") for page, target in links if page == README)
    assert any("#" in target for _, target in links)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        file = (page.parent / unquote(file_part)).resolve() if file_part else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
            continue
        if anchor:
            if file.suffix != ".md":
                broken.append(f"{target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(file):
                broken.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_page_starts_with_a_title(page: Path) -> None:
    first = page.read_text(encoding="utf-8").split("\n", 1)[0]
    assert first.startswith("# "), f"{page.relative_to(ROOT)} does not start with a '# Title' line"


def test_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_quick_start_has_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Quick start\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, "README.md has no '## Quick start' section"
    quick_start = match.group(1)
    assert "pip install torch==2.13.0 && pip install -e . && pseudoseg quickstart" in quick_start
    assert "pip install torch==2.13.0 && pip install -e '.[test]' && python -m pytest -q" in quick_start
    assert (
        "2 minutes 40 s after the install, data generation included, measured on a 2-core CPU with bf16 autocast"
        in " ".join(quick_start.split())
    )
