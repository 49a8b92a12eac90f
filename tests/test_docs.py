"""The README states the options as `core/config.py` declares them, and lists every module of `core/`."""

import dataclasses
import re

from conftest import ROOT

from core.config import TrainConfig


def options_table() -> str:
    """The README's options table, generated from TrainConfig (defaults, help, choices, changes-the-run flag)."""
    rows = ["| option | default | changes the run | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        default = "(required)" if f.name == "data_path" else f"`{f.default!r}`" if isinstance(f.default, str) \
            else f"`{f.default}`"
        choices = f" ({', '.join(f'`{c}`' for c in f.metadata['choices'])})" if f.metadata["choices"] else ""
        rows.append(f"| `--{f.name}` | {default} | {'yes' if f.metadata['changes_run'] else ''} | "
                    f"{f.metadata['help']}{choices} |")
    return "\n".join(rows)


def test_readme_options_table_is_the_declared_one():
    readme = (ROOT / "README.md").read_text()
    assert options_table() in readme, "regenerate the table with: python tests/test_docs.py"


def test_readme_layout_lists_every_core_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    listed = set(re.findall(r"core/(\w+)\.py", layout))
    present = {p.stem for p in (ROOT / "core").glob("*.py") if p.stem != "__init__"}
    assert listed == present


if __name__ == "__main__":
    print(options_table())
