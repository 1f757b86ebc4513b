"""Shared by the benchmark scripts: print the JSON report and optionally save it."""

from __future__ import annotations

import json
from pathlib import Path


def emit(report: dict, out: Path | None) -> dict:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return report
