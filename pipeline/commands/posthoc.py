"""stage=train's test with the post-hoc toggles of `eval`: test-time augmentation
(`eval.tta`) and temperature scaling (`eval.calibrate=temperature`, fitted on val after
training). Plain overrides, so an ablation can switch each one and compare test metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from pipeline.errors import ConfigError
from pipeline.evaluation.calibration import (
    CALIBRATION_FILE,
    calibration_metrics,
    fit_temperature,
    save_temperature,
)
from pipeline.evaluation.evaluate import EvalConfig, nll, predict_logits, probs_from_logits


@dataclass
class PostHocTest:
    loss: float  # NLL before calibration (with TTA): comparable with uncalibrated runs
    probs: np.ndarray  # (N, C), calibrated when a temperature was fitted
    targets: np.ndarray
    metrics: dict[str, float]  # calibration/temperature, val/ and test/ NLL and ECE
    temperature: float | None = None

    def save(self, out_dir: Path) -> dict[Path, Callable[[Path], object]]:
        """calibration.json (the temperature later stages apply), with its writer."""
        if self.temperature is None:
            return {}
        temperature, metrics = self.temperature, self.metrics
        return {out_dir / CALIBRATION_FILE: lambda p: save_temperature(p, temperature, metrics)}


def wanted(cfg: EvalConfig) -> bool:
    return cfg.tta != "none" or cfg.calibrate != "none"


def check_post_hoc(cfg: EvalConfig, world_size: int) -> None:
    if wanted(cfg) and world_size > 1:
        raise ConfigError(
            f"eval.tta={cfg.tta} / eval.calibrate={cfg.calibrate} in stage=train run on one "
            "process: train under torchrun without them, then run stage=evaluate"
        )


def post_hoc_test(cfg: EvalConfig, model: nn.Module, loaders, batches, amp_dtype) -> PostHocTest:
    """Score the test split with TTA; with eval.calibrate=temperature fit T on val first."""
    logits, targets = predict_logits(model, loaders["test"], batches, amp_dtype, cfg.tta)
    temperature, metrics = None, {}
    if cfg.calibrate == "temperature":
        val_logits, val_targets = predict_logits(model, loaders["val"], batches, amp_dtype, cfg.tta)
        temperature = fit_temperature(val_logits, val_targets)
        metrics = {
            "calibration/temperature": temperature,
            **calibration_metrics("val", val_logits, val_targets, temperature),
            **calibration_metrics("test", logits, targets, temperature),
        }
    probs = probs_from_logits(logits, temperature or 1.0)
    loss = nll(probs_from_logits(logits), targets)
    return PostHocTest(loss, probs.numpy(), targets.numpy(), metrics, temperature)
