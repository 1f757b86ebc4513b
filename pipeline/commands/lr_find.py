"""stage=lr_find: LR range test on the training config, before training.

Builds the model, training data and loss exactly as stage=train does (one setup:
`commands.training_setup`), sweeps the learning rate (lr_find.*), and logs the loss-vs-LR
plot and the suggested optim.lr to a new MLflow run.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import torch

from pipeline.commands.training_setup import build_training, check_batch_norm_batches
from pipeline.config import TRAINING_GROUPS, RunConfig
from pipeline.data.splits import run_splits
from pipeline.evaluation.visualize import plot_lr_find
from pipeline.repro import seed_everything, set_deterministic
from pipeline.tracking.params import config_params
from pipeline.tracking.runs import grouping_tags, run_name_for, start_run
from pipeline.tracking.store import check_store
from pipeline.training.lr_find import LRFindResult, lr_range_test
from pipeline.training.precision import resolve_device

log = logging.getLogger(__name__)


def run_lr_find(cfg: RunConfig, out_dir: Path) -> LRFindResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_store(cfg.tracking)  # before the data and model: a bad tracking.uri fails now
    seed_everything(cfg.seed)
    set_deterministic(cfg.train.deterministic)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    splits = run_splits(cfg.data, cfg.seed)
    # stage=train's own setup (sampler, image cache, class weights, label smoothing, mixing,
    # channels_last, AMP), less the schedule: the sweep sets the LRs itself.
    setup = build_training(cfg, splits, device, parts=("train",), with_schedule=False)
    check_batch_norm_batches(cfg, setup)
    result = lr_range_test(
        setup.train_model,
        setup.loaders["train"],
        setup.optimizer,
        setup.batches,
        cfg.lr_find,
        setup.amp_dtype,
        reference_lr=cfg.optim.lr,
        batch_transform=setup.batch_transform,
        class_weights=setup.class_weights,
        label_smoothing=setup.label_smoothing,
    )

    curve = out_dir / "lr_find.csv"
    with open(curve, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lr", "loss", "smoothed_loss"])
        writer.writerows(zip(result.lrs, result.losses, result.smoothed, strict=True))
    plot = plot_lr_find(
        result.lrs, result.losses, result.smoothed, result.suggested_lr, out_dir / "lr_find.png"
    )
    tags = {**grouping_tags("lr_find", cfg.seed), "backbone": cfg.backbone.name}
    with start_run(cfg.tracking, tags=tags, name=run_name_for(cfg, "lr_find")) as run:
        params = config_params(cfg.to_dict(), (*TRAINING_GROUPS, "lr_find"))
        run.log_params({**params, "weights_source": setup.weights.source})
        metrics: dict[str, float] = {"lr_find/steps_run": len(result.lrs)}
        if math.isfinite(result.suggested_lr):
            metrics["lr_find/suggested_lr"] = result.suggested_lr
        run.log_metrics(metrics)
        run.log_artifact(plot)
        run.log_artifact(curve)

    ended = "diverged" if result.stopped_early else "reached lr_find.end_lr"
    print(f"LR range test: {len(result.lrs)} steps from {cfg.lr_find.start_lr:.0e}, {ended}")
    if math.isfinite(result.suggested_lr):
        print(
            f"suggested optim.lr={result.suggested_lr:.2e} "
            "(2/3 along the longest fall of the smoothed loss)"
        )
    else:
        print("no suggestion: the loss never fell; lower lr_find.start_lr or check the data")
    print(f"plot: {plot}" + (f"  (run {run.run_id})" if run.run_id else ""))
    return result
