"""Hyperparameter search settings: what a trial reports to the sweeper, and under which study.

The search itself is this project's Optuna sweeper (hydra_plugins/pipeline_optuna_sweeper;
conf/hparams_search/*.yaml picks the space); each trial is `stage=search`, which trains once
as a child of the study's parent run and returns the objective, measured on validation (never
test) at the selected epoch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import ConfigError


@dataclass
class SearchConfig:
    study: str = "search"  # the parent run's name: trials of one study nest under it
    metric: str = "val/acc"  # any per-epoch metric: val/acc, val/loss, ...
    direction: str = "maximize"  # maximize | minimize; hparams_search passes it to the sweeper

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.study):  # it goes into MLflow filters
            raise ConfigError(f"search.study={self.study!r} may use only letters, digits, _ . -")
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(
                f"search.direction must be maximize or minimize, got {self.direction!r}"
            )

    def better(self, value: float, best: float | None) -> bool:
        if best is None or best != best:
            return True
        return value > best if self.direction == "maximize" else value < best


def objective(history: list[dict[str, float]], best_epoch: int, metric: str) -> float:
    """The metric at the epoch training kept (the restored best weights)."""
    epoch = history[best_epoch] if 0 <= best_epoch < len(history) else history[-1]
    if metric not in epoch:
        raise ConfigError(f"search.metric={metric!r} is not one of: {', '.join(epoch)}")
    return float(epoch[metric])
