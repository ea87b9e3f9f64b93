"""The README and docs/: every relative link and anchor resolves, every page is reachable from the README, the README
stays short, and no page speaks of the project's history instead of dates and commits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# history wording: a measurement says its date and commit instead
HISTORY = re.compile(
    r"earlier code|\bsession \d|this session|the code before|code of session|before both rounds|not done yet"
    r"|last measured|as before\b",
    re.IGNORECASE,
)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+://", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_anchors_resolve(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor:
            assert anchor in anchors(dest), f"{page.name}: link to {target}: no heading with that anchor"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_history_wording(page):
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        assert not HISTORY.search(line), f"{page.name}:{n}: say the date and commit instead: {line.strip()}"


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in links(ROOT / "README.md")}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"README does not link {page.relative_to(ROOT)}"


def test_slug_follows_github():
    assert slug("CPU, shared machine, 2026-12-06, commit b5292d8: k = 1") == (
        "cpu-shared-machine-2026-12-06-commit-b5292d8-k--1"
    )
    assert slug("Options: what each changes and saves") == "options-what-each-changes-and-saves"
