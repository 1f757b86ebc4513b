"""Scoring a trained model on a split: optional test-time augmentation, a temperature, and
the metric set.

`predict_probs` without TTA and temperature is exactly the training loop's `predict`, so
evaluating a run again reproduces the test metrics it logged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pipeline.evaluation.config import CALIBRATE_MODES as CALIBRATE_MODES
from pipeline.evaluation.config import TTA_MODES as TTA_MODES
from pipeline.evaluation.config import EvalConfig as EvalConfig
from pipeline.evaluation.config import check_tta as check_tta
from pipeline.evaluation.metrics import (
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    topk_accuracy,
)
from pipeline.training.batches import Batches
from pipeline.training.loop import predict
from pipeline.training.precision import autocast

FIVE_CROP_SCALE = 0.875  # each of the five crops covers this share of the image's side


def five_crops(x: torch.Tensor, scale: float = FIVE_CROP_SCALE) -> list[torch.Tensor]:
    """Centre and four corner crops of an NCHW batch, each `scale` of its side, resized back
    to the batch's size (the model's input size): the crops of torchvision's FiveCrop, taken
    from the input the model sees, so any loader or image works."""
    h, w = x.shape[-2:]
    ch, cw = round(h * scale), round(w * scale)
    top, left = (h - ch) // 2, (w - cw) // 2
    corners = [(top, left), (0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)]
    return [
        F.interpolate(x[..., i : i + ch, j : j + cw], size=(h, w), mode="bilinear", antialias=False)
        for i, j in corners
    ]


def tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The batches each image is scored on under `eval.tta`."""
    views = five_crops(x) if tta.startswith("five_crop") else [x]
    if tta in ("flip", "five_crop_flip"):
        views += [view.flip(3) for view in views]
    return views


@torch.no_grad()
def view_logits(model: nn.Module, x: torch.Tensor, tta: str, amp_dtype) -> torch.Tensor:
    """Logits (V, N, C) of a normalised NCHW batch for each of its V TTA views."""
    with autocast(x.device, amp_dtype):
        return torch.stack([model(view).float() for view in tta_views(x, tta)])


def probs_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(V, N, C) view logits -> (N, C): the softmax at `temperature`, averaged over views."""
    return (logits.float() / temperature).softmax(-1).mean(0)


def tta_probs(
    model: nn.Module, x: torch.Tensor, tta: str, amp_dtype, temperature: float = 1.0
) -> torch.Tensor:
    """Softmax of a normalised NCHW batch, averaged over the TTA views."""
    return probs_from_logits(view_logits(model, x, tta, amp_dtype), temperature)


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader, batches: Batches, amp_dtype, tta: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """View logits (V, N, C) and targets (N,) over a loader, on the CPU."""
    model.eval()
    logits, targets = [], []
    for images, labels in loader:
        x, y = batches(images, labels)
        logits.append(view_logits(model, x, tta, amp_dtype).cpu())
        targets.append(y.cpu())
    return torch.cat(logits, dim=1), torch.cat(targets)


def nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class."""
    return F.nll_loss(probs.clamp_min(1e-12).log(), targets).item()


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    loader: DataLoader,
    batches: Batches,
    amp_dtype,
    tta: str = "none",
    temperature: float = 1.0,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy, probabilities (N, C) and targets (N,), with optional TTA and
    temperature."""
    if tta == "none" and temperature == 1.0:
        return predict(model, loader, batches, amp_dtype)
    logits, targets = predict_logits(model, loader, batches, amp_dtype, tta)
    probs = probs_from_logits(logits, temperature)
    return nll(probs, targets), probs.numpy(), targets.numpy()


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
