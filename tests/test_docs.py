"""The README is a front page and docs/ the manual: every relative link resolves, every page is
reachable from the README or docs/index.md, and the README stays short."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 250

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where links are links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to '-', repeats numbered."""
    seen: dict[str, int] = {}
    anchors = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _relative_links(page: Path) -> list[str]:
    targets = LINK.findall(_prose(page.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, mailto:


def _broken_links(page: Path) -> list[str]:
    broken = []
    for target in _relative_links(page):
        file_part, _, anchor = target.partition("#")
        file = (page.parent / file_part).resolve() if file_part else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no heading #{anchor})")
    return broken


def _pages() -> list[Path]:
    benchmarks = [ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "results" / "HISTORY.md"]
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *benchmarks]


def test_docs_exist_with_an_index():
    assert (DOCS / "index.md").is_file(), "docs/index.md lists the manual's pages"
    assert len(list(DOCS.glob("*.md"))) > 1


def test_every_relative_link_points_at_a_file_and_heading_that_exist():
    broken = {p.name: _broken_links(p) for p in _pages()}
    assert not {name: links for name, links in broken.items() if links}


def test_every_docs_page_is_linked_from_readme_or_index():
    linked = set()
    for page in (ROOT / "README.md", DOCS / "index.md"):
        for target in _relative_links(page):
            file_part = target.partition("#")[0]
            if file_part:
                linked.add((page.parent / file_part).resolve())
    orphans = [p.name for p in DOCS.glob("*.md") if p.name != "index.md" and p not in linked]
    assert not orphans, f"docs pages linked from neither README.md nor docs/index.md: {orphans}"


def test_readme_is_a_front_page():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A `code` heading: yes\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#a-code-heading-yes) [self](#page) [web](https://x.org/y)\n"
        "[gone](missing.md) [bad](other.md#nope) `[not a link](nowhere.md)`\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    assert _broken_links(page) == [
        "missing.md (no such file)",
        "other.md#nope (no heading #nope)",
    ]
