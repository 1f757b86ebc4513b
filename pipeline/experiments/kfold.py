"""`data.kfold=K`: K-fold cross-validation as K nested MLflow runs under one parent.

The test split is made first, as for a single run, and stays out of every fold: the folds
divide train+val, each fold validates (early stopping, best epoch) on its own part, and
every fold's model is tested once on the same held-out test split. The parent run gets
the mean and standard deviation of each fold's test and best-epoch validation metrics.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from pipeline.config import TRAINING_GROUPS, RunConfig
from pipeline.data.report import log_data_report
from pipeline.data.splits import Splits, build_splits, kfold_splits
from pipeline.tracking.params import config_params
from pipeline.tracking.runs import run_name_for, start_run
from pipeline.tracking.store import check_store

log = logging.getLogger(__name__)


def summarize_folds(fold_metrics: list[dict[str, float]]) -> dict[str, float]:
    """{'test/acc': [...]} -> {'test/acc_mean': m, 'test/acc_std': s} (sample std)."""
    summary = {}
    for key in fold_metrics[0]:
        values = np.asarray([m[key] for m in fold_metrics], dtype=np.float64)
        summary[f"{key}_mean"] = float(values.mean())
        summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return summary


def _write_fold_manifest(splits: Splits, folds: np.ndarray, path: Path) -> Path:
    pool = splits.train.concat(splits.val)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "fold", "image", "label"])
        for image_id, label, fold in zip(pool.ids, pool.labels, folds, strict=True):
            writer.writerow(["trainval", int(fold), image_id, pool.class_names[label]])
        for image_id, label in zip(splits.test.ids, splits.test.labels, strict=True):
            writer.writerow(["test", "", image_id, splits.test.class_names[label]])
    return path


def run_kfold(cfg: RunConfig, out_dir: Path, run_train: Callable):
    """K folds as nested runs under one parent. `run_train(cfg, out_dir, splits=...)` is the
    train command (passed in: commands sit above experiments); it returns a TrainResult."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = cfg.data.kfold
    check_store(cfg.tracking)  # before the data: a bad tracking.uri fails now
    splits = build_splits(cfg.data, cfg.seed)
    fold_splits, folds = kfold_splits(splits, k, cfg.seed)
    fold_splits = [fold.check() for fold in fold_splits]
    config_path = out_dir / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(json.loads(json.dumps(cfg.to_dict(), default=list)), sort_keys=False)
    )
    tags = {"stage": "train", "backbone": cfg.backbone.name, "kfold": str(k)}
    results = []
    with start_run(cfg.tracking, tags=tags, name=run_name_for(cfg, "train")) as parent:
        parent.log_params(
            {
                **config_params(cfg.to_dict(), TRAINING_GROUPS),
                "data.n_trainval": len(folds),
                "data.n_test": len(splits.test),
            }
        )
        parent.log_artifact(config_path)
        parent.log_artifact(_write_fold_manifest(splits, folds, out_dir / "folds.csv"))
        log_data_report(parent, splits, out_dir)
        for i, fold in enumerate(fold_splits):
            log.info("fold %d/%d: %d train, %d val", i + 1, k, len(fold.train), len(fold.val))
            child_tags = {**cfg.tracking.tags, "fold": str(i)}
            if parent.run_id:
                child_tags["mlflow.parentRunId"] = parent.run_id
            run_name = f"{parent.name or 'kfold'}-fold{i}"  # the parent's, suffix and all
            # Under this parent, also when the k-fold run is itself a child (of a -m sweep).
            tracking = dataclasses.replace(
                cfg.tracking, run_name=run_name, tags=child_tags, parent_run_id=parent.run_id
            )
            # data.fold in the fold's own config: evaluate and resume rebuild this fold from it.
            fold_data = dataclasses.replace(cfg.data, fold=i)
            fold_cfg = dataclasses.replace(cfg, tracking=tracking, data=fold_data)
            results.append(run_train(fold_cfg, out_dir / f"fold{i}", splits=fold))
        per_fold = [
            {
                **r.test_metrics,
                "val/loss": r.fit.history[r.fit.best_epoch]["val/loss"],
                "val/acc": r.fit.history[r.fit.best_epoch]["val/acc"],
            }
            for r in results
        ]
        summary = summarize_folds(per_fold)
        parent.log_metrics(summary)
    line = "  ".join(
        f"{key} {summary[key + '_mean']:.4f} ± {summary[key + '_std']:.4f}" for key in per_fold[0]
    )
    print(f"run {parent.run_id or '(tracking off)'} ({k} folds): {line}")
    return dataclasses.replace(
        results[-1], run_id=parent.run_id, test_metrics=summary, out_dir=out_dir
    )
