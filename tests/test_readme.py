"""The README's config-group table names every group and every option under conf/."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _group_table() -> dict[str, str]:
    """First cell (the group names) -> the whole row, for the table under ## Configuration."""
    section = ROOT.joinpath("README.md").read_text().split("## Configuration", 1)[1]
    lines = section.split("\n## ", 1)[0].splitlines()
    table = [i for i, line in enumerate(lines) if line.startswith("|")]
    # One block: a blank line inside a markdown table ends it, and the rest renders as text.
    assert table == list(range(table[0], table[-1] + 1)), "README config table is split"
    rows = {}
    for line in (lines[i] for i in table):
        if line.startswith("| `"):
            for group in re.findall(r"`([\w/]+)`", line.split("|")[1]):
                rows[group] = line
    return rows


def test_readme_table_lists_every_config_group_and_option():
    rows = _group_table()
    for group_dir in sorted((ROOT / "conf").iterdir()):
        if not group_dir.is_dir() or group_dir.name == "hydra":  # Hydra's own launchers
            continue
        assert group_dir.name in rows, f"README config table has no row for {group_dir.name}"
        options = [p.stem for p in group_dir.glob("*.yaml") if p.stem != "default"]
        for option in options:
            assert f"`{option}`" in rows[group_dir.name], f"{group_dir.name}={option} not listed"
