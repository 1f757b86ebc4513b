"""Everything a resumable training step changes, bundled for `last.pt` and restored from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.repro import load_rng_state, rng_state
from pipeline.training import distributed
from pipeline.training.averaging import LastEpochsAverage
from pipeline.training.early_stopping import EarlyStopping
from pipeline.training.ema import ModelEma
from pipeline.training.sched import Schedule


@dataclass
class TrainingParts:
    """Everything `last.pt` holds besides the epoch and the history: saved and restored here,
    so that a resumed run continues exactly as if it had never stopped."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler | None
    stopper: EarlyStopping
    ema: ModelEma | None = None
    average: LastEpochsAverage | None = None  # train.average_last: the epochs kept so far

    def state_dict(self, epoch: int, history: list[dict[str, float]]) -> dict:
        return {
            "model": distributed.unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "average": self.average.state_dict() if self.average is not None else None,
            "early_stopping": self.stopper.state_dict(),
            "rng": rng_state(),
            "epoch": epoch,
            "history": history,
        }

    def load_state_dict(self, state: dict) -> int:
        """Returns the epoch to start from."""
        distributed.unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.stopper.load_state_dict(state["early_stopping"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        if self.average is not None and state.get("average") is not None:
            self.average.load_state_dict(state["average"])
        load_rng_state(state["rng"])
        return state["epoch"] + 1

    def enter_epoch(
        self,
        epoch: int,
        on_epoch_start: Callable[[int], tuple[torch.optim.Optimizer, Schedule] | None] | None,
        compile_model: bool,
    ) -> None:
        """Let a fine-tuning strategy set what trains at `epoch`, taking the (optimizer,
        schedule) it rebuilds when that changes.

        DDP registers the parameters that need gradients when it wraps a model, so wrap it
        again: otherwise the gradients of the layers just unfrozen are never averaged across
        ranks, and each rank's copy of them drifts apart."""
        rebuilt = on_epoch_start(epoch) if on_epoch_start else None
        if not rebuilt:
            return
        self.optimizer, self.schedule = rebuilt
        if isinstance(self.model, distributed.DistributedDataParallel):
            self.model = distributed.rewrap(self.model)
            if compile_model:
                self.model.compile()
