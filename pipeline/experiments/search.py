"""Hyperparameter search settings: what a trial reports to the sweeper, and under which study.

The search itself is this project's Optuna sweeper (hydra_plugins/pipeline_optuna_sweeper;
conf/hparams_search/*.yaml picks the space); each trial is `stage=search`, which trains once
as a child of the study's parent run and returns the objective, measured on validation (never
test) at the selected epoch.
"""

from __future__ import annotations

from pipeline.errors import ConfigError


def objective(history: list[dict[str, float]], best_epoch: int, metric: str) -> float:
    """The metric at the epoch training kept (the restored best weights)."""
    epoch = history[best_epoch] if 0 <= best_epoch < len(history) else history[-1]
    if metric not in epoch:
        raise ConfigError(f"search.metric={metric!r} is not one of: {', '.join(epoch)}")
    return float(epoch[metric])
