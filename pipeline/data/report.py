"""What a run logs about its data: per-class counts, the files it left out, and each split as
an MLflow dataset input."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.data.config import SPLITS, DataConfig
from pipeline.data.splits import Splits
from pipeline.tracking.params import param_text
from pipeline.tracking.runs import Run


def class_counts(splits: Splits) -> dict[str, dict[str, int]]:
    return {name: getattr(splits, name).class_counts() for name in SPLITS}


def log_data_report(run: Run, splits: Splits, out_dir: Path) -> None:
    """`class_counts.json` and `data.class_counts.<split>` params (`ants=124,bees=121`); the metric `data/skipped`
    and, when files were left out, `skipped.txt` listing them one per line as `path<TAB>reason`."""
    counts = class_counts(splits)
    counts_path = out_dir / "class_counts.json"
    counts_path.write_text(json.dumps(counts, indent=2, ensure_ascii=False))
    run.log_artifact(counts_path)
    run.log_params({f"data.class_counts.{k}": param_text(v) for k, v in counts.items()})
    run.log_metrics({"data/skipped": len(splits.skipped)})
    if splits.skipped:
        skipped_path = out_dir / "skipped.txt"
        lines = "".join(f"{path}\t{reason}\n" for path, reason in splits.skipped)
        skipped_path.write_text(lines, encoding="utf-8")
        run.log_artifact(skipped_path)


def log_dataset_inputs(run: Run, splits: Splits, data: DataConfig) -> None:
    """train/val/test as MLflow dataset inputs (the runs table's Dataset column): each split's
    manifest (`image`, `label`) named `<data.name>-<split>`, its digest a hash of exactly those
    rows, so runs on the same split show the same digest. Source: data.root (absolute), or the
    data set's name for the built-in ones (digits, cifar*)."""
    if not run.active:
        return
    import pandas as pd  # type: ignore[import-untyped]
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]

    root = str(Path(data.root).expanduser().resolve()) if data.root else data.name
    rows = splits.manifest_rows()
    datasets = {}
    for split in SPLITS:
        frame = pd.DataFrame(
            [(image, label) for part, image, label in rows if part == split],
            columns=["image", "label"],
        )
        datasets[split] = from_pandas(
            frame,
            source=LocalArtifactDatasetSource(root),
            name=f"{data.name}-{split}",
            targets="label",
        )
    run.log_inputs(datasets)
