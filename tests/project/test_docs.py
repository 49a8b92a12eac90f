"""The README states the options as `core/config.py` declares them, and its layout is the tree of `core/`."""

import dataclasses
import re

from conftest import ROOT

from core.config import GROUPS


def options_table() -> str:
    """The README's options tables, one per option group, generated from core/config.py."""
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


def test_readme_options_table_is_the_declared_one():
    readme = (ROOT / "README.md").read_text()
    assert options_table() in readme, "regenerate the tables with: python tests/project/test_docs.py"


def test_readme_layout_is_the_tree_of_core():
    """Every module and folder of core/ is in the README's layout block, and nothing that is not there."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[layout.index("```"):layout.index("```", layout.index("```") + 3)]
    listed = set(re.findall(r"^(core/[\w/]*?(?:\w+\.py|/))\s", layout, flags=re.M))
    core = ROOT / "core"
    present = {f"core/{p.relative_to(core).as_posix()}" for p in core.rglob("*.py") if p.name != "__init__.py"}
    present |= {f"core/{p.relative_to(core).as_posix()}/" for p in core.rglob("*") if p.is_dir()
                and (p / "__init__.py").is_file()}
    assert listed == present, f"missing from README: {sorted(present - listed)}; gone: {sorted(listed - present)}"


if __name__ == "__main__":
    print(options_table())
