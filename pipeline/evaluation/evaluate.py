"""Scoring a trained model on a split: optional test-time augmentation and the metric set.

`predict_probs` without TTA is exactly the training loop's `predict`, so evaluating a run
again reproduces the test metrics it logged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pipeline.errors import ConfigError
from pipeline.evaluation.metrics import (
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    topk_accuracy,
)
from pipeline.training.batches import Batches
from pipeline.training.loop import predict
from pipeline.training.precision import autocast

TTA_MODES = ("none", "flip")


@dataclass
class EvalConfig:
    split: str = "test"  # test | val
    tta: str = "none"  # none | flip: average the softmax of each image and its mirror
    topk: int = 5  # top-k accuracy; predict writes the k best labels

    def __post_init__(self) -> None:
        if self.split not in ("test", "val"):
            raise ConfigError(f"eval.split={self.split!r} is not one of: test, val")
        if self.tta not in TTA_MODES:
            raise ConfigError(f"eval.tta={self.tta!r} is not one of: {', '.join(TTA_MODES)}")
        if self.topk < 1:
            raise ConfigError(f"eval.topk must be >= 1, got {self.topk}")


def check_tta(tta: str, hflip: float) -> None:
    """Flip TTA assumes a mirrored image shows the same class; a run trained with
    augment.hflip=0 was told it may not (digits: a mirrored 2 is no 2)."""
    if tta == "flip" and hflip == 0:
        raise ConfigError(
            "eval.tta=flip averages each image with its mirror, but the run trained with "
            "augment.hflip=0 (a mirrored image may be another class): use eval.tta=none"
        )


@torch.no_grad()
def tta_probs(model: nn.Module, x: torch.Tensor, tta: str, amp_dtype) -> torch.Tensor:
    """Softmax of a normalised NCHW batch, averaged over the TTA views."""
    views = [x, x.flip(3)] if tta == "flip" else [x]
    with autocast(x.device, amp_dtype):
        logits = [model(view).float() for view in views]
    return torch.stack([z.softmax(1) for z in logits]).mean(0)


@torch.no_grad()
def predict_probs(
    model: nn.Module, loader: DataLoader, batches: Batches, amp_dtype, tta: str = "none"
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy, probabilities (N, C) and targets (N,), with optional TTA."""
    if tta == "none":
        return predict(model, loader, batches, amp_dtype)
    model.eval()
    loss_sum, probs, targets = 0.0, [], []
    for images, labels in loader:
        x, y = batches(images, labels)
        p = tta_probs(model, x, tta, amp_dtype)
        loss_sum += F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum").item()
        probs.append(p.cpu())
        targets.append(y.cpu())
    n = sum(len(t) for t in targets)
    return loss_sum / max(n, 1), torch.cat(probs).numpy(), torch.cat(targets).numpy()


def score(
    targets: np.ndarray, probs: np.ndarray, loss: float, class_names: list[str], topk: int
) -> tuple[dict[str, float], dict, np.ndarray]:
    """(flat metrics, classification report, confusion matrix) for one split's predictions."""
    cm = confusion_matrix(targets, probs.argmax(1), len(class_names))
    report = classification_report(cm, class_names)
    k = min(topk, len(class_names))
    metrics = {
        "loss": loss,
        "acc": report["accuracy"],
        "f1_macro": report["macro avg"]["f1-score"],
        f"top{k}_acc": topk_accuracy(targets, probs, k),
        "ece": expected_calibration_error(targets, probs),
    }
    for avg in ("macro", "weighted"):
        for key in ("precision", "recall", "f1-score"):
            metrics[f"{key.removesuffix('-score')}_{avg}"] = report[f"{avg} avg"][key]
    for name in class_names:
        for key in ("precision", "recall", "f1-score"):
            metrics[f"{key.removesuffix('-score')}/{name}"] = report[name][key]
    return metrics, report, cm


def misclassified(targets: np.ndarray, probs: np.ndarray, limit: int) -> np.ndarray:
    """Indices of wrong predictions, most confident mistakes first."""
    wrong = np.flatnonzero(probs.argmax(1) != targets)
    order = np.argsort(-probs[wrong].max(1), kind="stable")
    return wrong[order][:limit]
