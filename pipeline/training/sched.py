"""Learning-rate schedules with linear warmup, stepped per batch (plateau: per epoch)."""

from __future__ import annotations

import math

import torch

from pipeline.training.config import SCHEDULES as SCHEDULES
from pipeline.training.config import SchedConfig as SchedConfig


def lr_factor(cfg: SchedConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier on the peak LR at optimizer step `step` (pure; tested directly)."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    epoch = step / steps_per_epoch
    if cfg.name == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.name == "step":
        return cfg.gamma ** int(epoch // cfg.step_epochs)
    if cfg.name == "exponential":
        return cfg.gamma**epoch
    if cfg.name == "onecycle":
        return one_cycle_factor(cfg, step, total_steps)
    return 1.0


def one_cycle_factor(cfg: SchedConfig, step: int, total_steps: int) -> float:
    """torch.optim.lr_scheduler.OneCycleLR's two cosine phases (three_phase=False), as a
    multiplier on the peak: the same LRs, step for step, but for any number of param groups
    and through the LambdaLR every other schedule uses (state_dict, rebind)."""
    start = 1 / cfg.div_factor
    end = start / cfg.final_div_factor
    peak_step = cfg.pct_start * total_steps - 1
    last_step = total_steps - 1
    step = min(step, last_step)
    if step <= peak_step:
        low, high, progress = start, 1.0, step / peak_step if peak_step > 0 else 1.0
    else:
        low, high, progress = 1.0, end, (step - peak_step) / (last_step - peak_step)
    return high + (low - high) / 2 * (math.cos(math.pi * progress) + 1)


class Schedule:
    """One object the training loop steps after every batch and every epoch."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps_per_epoch: int
    ):
        self.cfg = cfg
        self.optimizer, self.epochs, self.steps_per_epoch = optimizer, epochs, steps_per_epoch
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        # Exactly one of the two is set, by sched.name.
        self.per_batch: torch.optim.lr_scheduler.LambdaLR | None = None
        self.per_epoch: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        if cfg.name == "plateau":
            self.per_epoch = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
            )
        else:
            total = epochs * steps_per_epoch
            self.per_batch = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: lr_factor(cfg, s, total, steps_per_epoch)
            )

    def step_batch(self) -> None:
        if self.per_batch is not None:
            self.per_batch.step()

    def step_epoch(self, val_loss: float) -> None:
        if self.per_epoch is not None:
            self.per_epoch.step(val_loss)

    def rebind(self, optimizer: torch.optim.Optimizer) -> Schedule:
        """This schedule at the same position, driving a rebuilt optimizer (a fine-tuning
        strategy changed what trains): each new group starts at its own peak LR times the
        factor reached so far, and the plateau counters carry over."""
        new = Schedule(optimizer, self.cfg, self.epochs, self.steps_per_epoch)
        if self.per_batch is not None:
            step = self.per_batch.last_epoch
            factor = self.per_batch.lr_lambdas[0](step)
            assert new.per_batch is not None  # same config, same kind of schedule
            new.per_batch.last_epoch = step
        else:
            factor = self.optimizer.param_groups[0]["lr"] / self.base_lrs[0]
            for key in ("best", "num_bad_epochs", "cooldown_counter", "last_epoch"):
                setattr(new.per_epoch, key, getattr(self.per_epoch, key))
        for group, base in zip(optimizer.param_groups, new.base_lrs, strict=True):
            group["lr"] = base * factor
        new.scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        return new

    @property
    def scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        """Whichever of per_batch and per_epoch is set."""
        scheduler = self.per_batch or self.per_epoch
        assert scheduler is not None
        return scheduler

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps_per_epoch: int
) -> Schedule:
    return Schedule(optimizer, cfg, epochs, max(1, steps_per_epoch))
