"""What a run logs about its data: per-class counts and the files it left out."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.data.config import SPLITS
from pipeline.data.splits import Splits
from pipeline.tracking.runs import Run


def class_counts(splits: Splits) -> dict[str, dict[str, int]]:
    return {name: getattr(splits, name).class_counts() for name in SPLITS}


def log_data_report(run: Run, splits: Splits, out_dir: Path) -> None:
    """`class_counts.json` and `data.class_counts.<split>` params; the metric `data/skipped`
    and, when files were left out, `skipped.txt` listing them one per line as `path<TAB>reason`."""
    counts = class_counts(splits)
    counts_path = out_dir / "class_counts.json"
    counts_path.write_text(json.dumps(counts, indent=2, ensure_ascii=False))
    run.log_artifact(counts_path)
    run.log_params({f"data.class_counts.{k}": json.dumps(v) for k, v in counts.items()})
    run.log_metrics({"data/skipped": len(splits.skipped)})
    if splits.skipped:
        skipped_path = out_dir / "skipped.txt"
        lines = "".join(f"{path}\t{reason}\n" for path, reason in splits.skipped)
        skipped_path.write_text(lines, encoding="utf-8")
        run.log_artifact(skipped_path)
