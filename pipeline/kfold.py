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
from pathlib import Path

import numpy as np
import yaml

from pipeline.config import RunConfig
from pipeline.data import DataConfig, Splits, build_splits
from pipeline.data_report import log_data_report
from pipeline.errors import DataError
from pipeline.tracking import check_store, flatten, run_name_for, start_run

log = logging.getLogger(__name__)


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) per sample; each class is dealt round-robin after a seeded
    shuffle, continuing where the previous class stopped so remainders spread out."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        folds[idx] = (np.arange(len(idx)) + dealt) % k
        dealt += len(idx)
    return folds


def kfold_splits(splits: Splits, k: int, seed: int) -> tuple[list[Splits], np.ndarray]:
    """K Splits over train+val (fold i is validation in split i) and the fold per image."""
    pool = splits.train.concat(splits.val)
    if len(pool) < 2 * k:
        raise DataError(f"data.kfold={k} needs at least {2 * k} train+val images, got {len(pool)}")
    folds = stratified_folds(pool.labels, k, seed)
    return [
        Splits(
            pool.subset(np.flatnonzero(folds != i)),
            pool.subset(np.flatnonzero(folds == i)),
            splits.test,
            splits.skipped,
        )
        for i in range(k)
    ], folds


def run_splits(cfg: DataConfig, seed: int) -> Splits:
    """The splits one training run sees: the data's, or with data.fold=I that fold's."""
    splits = build_splits(cfg, seed)
    if cfg.kfold and cfg.fold is not None:
        splits = kfold_splits(splits, cfg.kfold, seed)[0][cfg.fold]
    return splits.check()


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


def run_kfold(cfg: RunConfig, out_dir: Path):
    from pipeline.stages.train import TrainResult, run_train

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
                **flatten(cfg.to_dict()),
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
            tracking = dataclasses.replace(cfg.tracking, run_name=run_name, tags=child_tags)
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
    return TrainResult(parent.run_id, summary, results[-1].fit, out_dir)
