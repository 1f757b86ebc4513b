"""Transfer strategies: which backbone parameters train, and when.

- `frozen`: feature extraction (a linear probe with a linear head); BN stats never move.
- `full`: everything trains from the first step.
- `partial`: the last `train_last_n` backbone stages train, the rest stays frozen.
- `gradual`: head only at first, then one more stage (from the top) every
  `unfreeze_every` epochs, fastai style.
- `linear_then_full`: head only for `head_epochs`, then everything at
  `lr * full_lr_mult`, Keras style.

"Stages" are timm's coarse parameter groups (`pipeline/models/layer_groups.py`), so the same setting
works for ResNet, VGG, Inception and EfficientNet alike. When the trainable set changes
mid-run, `rebuild_on_change` gives `fit` a new optimizer and a schedule at the same position.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from pipeline.errors import ConfigError
from pipeline.models.classifier import Classifier
from pipeline.models.layer_groups import backbone_stages
from pipeline.training.config import BN_POLICIES as BN_POLICIES
from pipeline.training.config import STRATEGIES as STRATEGIES
from pipeline.training.config import FinetuneConfig as FinetuneConfig
from pipeline.training.config import check_unfreezes as check_unfreezes
from pipeline.training.optim import OptimConfig, build_optimizer, transfer_state
from pipeline.training.sched import Schedule

log = logging.getLogger(__name__)


def trainable_stages(cfg: FinetuneConfig, epoch: int, num_stages: int) -> int:
    """How many backbone stages, counted from the top, train in `epoch` (0-based). Pure."""
    if cfg.strategy == "frozen":
        return 0
    if cfg.strategy == "partial":
        return min(cfg.train_last_n, num_stages)
    if cfg.strategy == "gradual":
        return min(epoch // cfg.unfreeze_every, num_stages)
    if cfg.strategy == "linear_then_full":
        return 0 if epoch < cfg.head_epochs else num_stages
    return num_stages


def lr_scale(cfg: FinetuneConfig, epoch: int) -> float:
    """Multiplier on optim.lr for `epoch`: lower once linear_then_full unfreezes everything."""
    if cfg.strategy == "linear_then_full" and epoch >= cfg.head_epochs:
        return cfg.full_lr_mult
    return 1.0


def apply_finetune(model: Classifier, cfg: FinetuneConfig, epoch: int = 0) -> bool:
    """Set `requires_grad` for this epoch. Returns True when the trainable set changed
    (the optimizer then needs rebuilding)."""
    stages = backbone_stages(model.backbone)
    if cfg.strategy == "partial" and cfg.train_last_n > len(stages):
        raise ConfigError(
            f"finetune.train_last_n={cfg.train_last_n} but the backbone has {len(stages)} "
            "stages; use finetune=full to train all of them"
        )
    n = trainable_stages(cfg, epoch, len(stages))
    trainable = {name for stage in stages[len(stages) - n :] for name in stage}
    before = [p.requires_grad for p in model.backbone.parameters()]
    for name, p in model.backbone.named_parameters():
        p.requires_grad_(name in trainable)
    for p in model.head.parameters():
        p.requires_grad_(True)
    model.norms_eval = cfg.bn == "eval"
    model.refresh_frozen()
    return before != [p.requires_grad for p in model.backbone.parameters()]


def batch_norm_trains(model: Classifier, cfg: FinetuneConfig, epochs: int) -> bool:
    """Whether a BatchNorm layer normalises with batch statistics in some epoch: the head's
    always, a backbone one once its stage trains (strategies only ever unfreeze more, so the
    last epoch trains the most). Frozen ones stay in eval mode (Classifier.train)."""
    if any(isinstance(m, _BatchNorm) for m in model.head.modules()):
        return True
    if cfg.bn == "eval":
        return False
    stages = backbone_stages(model.backbone)
    n = trainable_stages(cfg, epochs - 1, len(stages))
    trainable = {name for stage in stages[len(stages) - n :] for name in stage}
    return any(
        isinstance(module, _BatchNorm)
        and any(f"{prefix}.{name}" in trainable for name, _ in module.named_parameters())
        for prefix, module in model.backbone.named_modules()
    )


def rebuild_on_change(
    model: Classifier,
    cfg: FinetuneConfig,
    optim_cfg: OptimConfig,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
) -> Callable[[int], tuple[torch.optim.Optimizer, Schedule] | None]:
    """An `on_epoch_start` callback for `fit`: applies the strategy for the epoch and, when
    the trainable set changed, returns a rebuilt optimizer (keeping the state of parameters
    that were already training) and the schedule at the same step."""

    def on_epoch_start(epoch: int) -> tuple[torch.optim.Optimizer, Schedule] | None:
        nonlocal optimizer, schedule  # the current pair, replaced on each rebuild
        if not apply_finetune(model, cfg, epoch):
            return None
        lr = optim_cfg.lr * lr_scale(cfg, epoch)
        new = build_optimizer(model, dataclasses.replace(optim_cfg, lr=lr))
        transfer_state(optimizer, new)
        optimizer, schedule = new, schedule.rebind(new)
        log.info(
            "%s: epoch %d trains %d parameters (peak lr %.2e)",
            cfg.strategy,
            epoch + 1,
            sum(p.numel() for p in model.parameters() if p.requires_grad),
            lr,
        )
        return optimizer, schedule

    return on_epoch_start
