"""Early stopping on one monitored per-epoch metric, and the checkpoints of the best epoch."""

from __future__ import annotations

import math
from pathlib import Path

from torch import nn

from pipeline.errors import TrainingError
from pipeline.training import distributed
from pipeline.training.checkpoint import load_checkpoint, save_atomic
from pipeline.training.config import EarlyStoppingConfig
from pipeline.training.ema import ModelEma


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


class BestCheckpoint:
    """The checkpoints of model selection (like timm's CheckpointSaver): best.pt each time
    the monitored metric improves; at the end, the weights fit hands on loaded into the
    model: the best epoch's from best.pt, or under restore_best=false the last epoch's,
    saved as final.pt so later stages load what was tested. Only rank 0 writes."""

    def __init__(self, checkpoint_dir: Path, restore_best: bool, main: bool):
        self.best_path = checkpoint_dir / "best.pt"
        self.final_path = checkpoint_dir / "final.pt"
        self.averaged_path = checkpoint_dir / "averaged.pt"
        self.restore_best, self.main = restore_best, main

    def save_best(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> None:
        if self.main:
            self._save(model, epoch, metrics, self.best_path)

    def finish(
        self,
        model: nn.Module,
        ema: ModelEma | None,
        best_epoch: int,
        history: list[dict[str, float]],
    ) -> tuple[Path | None, int]:
        """Load the weights to test into `model`: (their checkpoint, if written; their epoch)."""
        if self.restore_best:
            self._restore(model, best_epoch)
            path, epoch = self.best_path, best_epoch
        else:
            if ema is not None:  # the averaged weights, as validated
                distributed.unwrap(model).load_state_dict(ema.module.state_dict())
            path, epoch = self.final_path, len(history) - 1
            if self.main:  # under its own name: best.pt keeps holding the best epoch's
                self._save(model, epoch, history[-1], path)
        return (path if path.exists() else None), epoch

    def save_averaged(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> Path | None:
        """train.average_last: the averaged weights, under their own name (best.pt keeps
        holding the best epoch's), so later stages load what was tested."""
        if self.main:
            self._save(model, epoch, metrics, self.averaged_path)
        return self.averaged_path if self.averaged_path.exists() else None

    def _restore(self, model: nn.Module, best_epoch: int) -> None:
        if self.main and best_epoch >= 0 and not self.best_path.exists():
            raise TrainingError(
                f"{self.best_path} (epoch {best_epoch + 1}, the best) is gone: cannot restore "
                "the best weights; train.early_stopping.restore_best=false tests the last ones"
            )
        if self.main and self.best_path.exists():
            state = load_checkpoint(self.best_path)["model"]
            distributed.unwrap(model).load_state_dict(state)
        distributed.broadcast_model(model)  # rank 0 holds the best weights

    @staticmethod
    def _save(model: nn.Module, epoch: int, metrics: dict[str, float], path: Path) -> None:
        state = distributed.unwrap(model).state_dict()
        save_atomic({"model": state, "epoch": epoch, "metrics": metrics}, path)
