"""Every relative link in README.md and docs/*.md leads somewhere: the file exists, and so does the heading an
#anchor names (GitHub's anchors: the heading in lower case, punctuation dropped, spaces as hyphens)."""

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> Iterator[str]:
    """The anchors GitHub gives the headings of a Markdown file (a repeated heading gets -1, -2...)."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose(path.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` whose file or anchor does not exist."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and (path.suffix != ".md" or anchor not in set(anchors(path))):
            broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_link_of_the_readme_and_docs_resolves():
    assert len(pages()) > 10
    broken = [line for page in pages() for line in broken_links(page)]
    assert not broken, broken


def test_a_missing_file_or_heading_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Stop it, start it again: the same run\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#stop-it-start-it-again-the-same-run) [ok](#page) [web](https://x.org)\n"
                    "[gone](missing.md) [no heading](other.md#nothing) [here](#nowhere) `[code](missing.md)`\n"
                    "```\n[fenced](missing2.md)\n```\n")
    assert broken_links(page) == ["page.md: missing.md (no such file)", "page.md: other.md#nothing (no such heading)",
                                  "page.md: #nowhere (no such heading)"]
