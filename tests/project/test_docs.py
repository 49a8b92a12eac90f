"""docs/options.md states the options as `core/config.py` declares them, and docs/layout.md's layout is the tree
of `core/`. `python tests/project/test_docs.py` writes the options tables into docs/options.md."""

import dataclasses
import re
from pathlib import Path

from core.config import GROUPS

ROOT = Path(__file__).resolve().parents[2]

OPTIONS_PAGE = ROOT / "docs" / "options.md"
BEGIN = "<!-- generated from core/config.py by `python tests/project/test_docs.py`: edit core/config.py, not this -->"
END = "<!-- end of the generated tables -->"


def options_table() -> str:
    """The options tables, one per option group, generated from core/config.py."""
    parts = []
    for group in GROUPS:
        rows = [f"**{group.__name__}**: {group.__doc__.strip()}", "",
                "| option | default | changes the run | what it does |", "|---|---|---|---|"]
        for f in dataclasses.fields(group):
            default = "(required)" if f.name == "data_path" else f"`{f.default!r}`" if isinstance(f.default, str) \
                else f"`{f.default}`"
            choices = f" ({', '.join(f'`{c}`' for c in f.metadata['choices'])})" if f.metadata["choices"] else ""
            rows.append(f"| `--{f.name}` | {default} | {'yes' if f.metadata['changes_run'] else ''} | "
                        f"{f.metadata['help']}{choices} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def with_tables(page: str) -> str:
    """The options page with the generated tables between its two markers."""
    head, rest = page.split(BEGIN)
    return f"{head}{BEGIN}\n\n{options_table()}\n\n{END}{rest.split(END)[1]}"


def test_options_page_holds_the_declared_tables():
    page = OPTIONS_PAGE.read_text()
    assert page == with_tables(page), "regenerate the tables with: python tests/project/test_docs.py"


def test_layout_page_is_the_tree_of_core():
    """Every module and folder of core/ is in docs/layout.md's layout block, and nothing that is not there."""
    page = (ROOT / "docs" / "layout.md").read_text()
    layout = page[page.index("```"):page.index("```", page.index("```") + 3)]
    listed = set(re.findall(r"^(core/[\w/]*?(?:\w+\.py|/))\s", layout, flags=re.M))
    core = ROOT / "core"
    present = {f"core/{p.relative_to(core).as_posix()}" for p in core.rglob("*.py") if p.name != "__init__.py"}
    present |= {f"core/{p.relative_to(core).as_posix()}/" for p in core.rglob("*") if p.is_dir()
                and (p / "__init__.py").is_file()}
    assert listed == present, \
        f"missing from docs/layout.md: {sorted(present - listed)}; gone: {sorted(listed - present)}"


if __name__ == "__main__":
    OPTIONS_PAGE.write_text(with_tables(OPTIONS_PAGE.read_text()))
    print(f"wrote the options tables into {OPTIONS_PAGE}")
