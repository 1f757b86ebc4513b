"""finetune=auto for stage=train: probe the frozen features, then pick the strategy.

The probe runs before the MLflow run starts (like every other check of the input): the
backbone extracts features of the train and val splits once, without augmentation, and a
logistic regression trained on the first is scored on the second. The rule itself is the
pure `pipeline.training.auto.choose_finetune`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.commands.training_setup import build_training
from pipeline.config import RunConfig
from pipeline.data.splits import Splits
from pipeline.training import distributed
from pipeline.training.auto import AutoChoice, choose_finetune, probe_accuracy
from pipeline.training.features import extract_features
from pipeline.training.finetune import FinetuneConfig

log = logging.getLogger(__name__)


def resolve_auto(
    cfg: RunConfig, splits: Splits, device: torch.device, dist_info: distributed.DistInfo
) -> tuple[RunConfig, AutoChoice]:
    """The config with finetune=auto replaced by the chosen strategy, and the choice."""
    probe_cfg = dataclasses.replace(
        cfg,
        finetune=FinetuneConfig(strategy="frozen"),
        augment=dataclasses.replace(cfg.augment, preset="none"),
    )
    # Every rank probes the same data the same way, so every rank makes the same choice.
    single = distributed.DistInfo()
    setup = build_training(probe_cfg, splits, device, single, ("train", "val"), False)
    backbone, batches, amp = setup.model.backbone, setup.batches, setup.amp_dtype
    features = {
        name: extract_features(backbone, setup.loaders[name], batches, amp)
        for name in ("train", "val")
    }
    train_x, train_y = (t.cpu().numpy() for t in features["train"])
    val_x, val_y = (t.cpu().numpy() for t in features["val"])
    acc = probe_accuracy(train_x, train_y, val_x, val_y, cfg.seed) if len(val_y) else None
    # The train loader drops a last partial batch: count the split, not what it yielded.
    choice = choose_finetune(len(splits.train.labels), len(splits.class_names), acc)
    chosen = dataclasses.replace(
        cfg,
        finetune=dataclasses.replace(cfg.finetune, **choice.finetune),
        optim=dataclasses.replace(cfg.optim, **choice.optim),
    )
    if dist_info.is_main:
        print(f"finetune=auto: {choice.reason}", flush=True)
    return chosen, choice


def with_line(write: Callable[[Path], object], line: str) -> Callable[[Path], Path]:
    """A report writer that appends `line` (as its own paragraph) to what `write` wrote."""

    def write_with_line(path: Path) -> Path:
        write(path)
        with Path(path).open("a") as f:
            f.write(f"\n{line}\n")
        return Path(path)

    return write_with_line
