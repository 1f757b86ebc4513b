"""Early stopping on one monitored per-epoch metric, with the best weights kept in memory."""

from __future__ import annotations

import math

from pipeline.training.config import EarlyStoppingConfig


class EarlyStopping:
    """Tracks the monitored metric; `step` returns True when this epoch is the new best."""

    def __init__(self, cfg: EarlyStoppingConfig):
        self.cfg = cfg
        self.best = math.inf if cfg.mode == "min" else -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0

    def is_improvement(self, value: float) -> bool:
        if self.cfg.mode == "min":
            return value < self.best - self.cfg.min_delta
        return value > self.best + self.cfg.min_delta

    def step(self, value: float, epoch: int) -> bool:
        if self.is_improvement(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """After `patience` epochs in a row without improvement, as Keras and Lightning stop
        (patience=0 stops at the first one, like 1: an improving epoch never stops)."""
        return self.cfg.enabled and self.bad_epochs >= max(self.cfg.patience, 1)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = (
            state["best"],
            state["best_epoch"],
            state["bad_epochs"],
        )
