"""The per-class report files, written alike by stage=train (on its test split) and
stage=evaluate: classification report (txt, json), confusion matrix (json, png) and
`report.md` (learning-curve diagnosis, headline metrics, per-epoch table).

Each file comes with the function that writes it, so a caller can write and upload them one
at a time and lose only the file whose write or upload fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.evaluation.diagnosis import write_report
from pipeline.evaluation.metrics import format_report
from pipeline.evaluation.plots import plot_confusion_matrix

Writer = Callable[[Path], object]


def _text(content: str) -> Writer:
    return lambda path: path.write_text(content)


def report_files(
    out_dir: Path,
    class_names: list[str],
    cm: np.ndarray,
    report: dict,
    title: str,
    history: list[dict[str, float]],
    metrics: dict[str, float],
    best_epoch: int | None = None,
    sections: list[str] | None = None,
) -> dict[Path, Writer]:
    """classification_report.json/.txt, confusion_matrix.json/.png and report.md, each with
    the function that writes it. `report` is metrics.classification_report(cm, class_names);
    `sections` are markdown lines report.md adds after its metrics."""
    return {
        out_dir / "classification_report.json": _text(json.dumps(report, indent=2)),
        out_dir / "classification_report.txt": _text(format_report(report)),
        out_dir / "confusion_matrix.json": _text(
            json.dumps({"labels": class_names, "counts": cm.tolist()})
        ),
        out_dir / "confusion_matrix.png": lambda p: plot_confusion_matrix(cm, class_names, p),
        out_dir / "report.md": lambda p: write_report(
            p, title, history, metrics, best_epoch, sections
        ),
    }


def write_all(files: dict[Path, Writer]) -> list[Path]:
    """Write every file now; returns their paths."""
    for path, write in files.items():
        write(path)
    return list(files)
