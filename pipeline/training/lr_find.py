"""LR range test (Smith, 2017; fastai's lr_find): raise the learning rate exponentially over a
few hundred steps and watch the training loss. A good starting LR sits on the fall of the
smoothed loss, well before it bottoms out and blows up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from pipeline.training.batches import Batches
from pipeline.training.config import LRFindConfig as LRFindConfig
from pipeline.training.loop import optimizer_step
from pipeline.training.precision import autocast, grad_scaler


@dataclass
class LRFindResult:
    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggested_lr: float
    stopped_early: bool = False  # the loss diverged before end_lr


def smooth(losses: np.ndarray, weight: float) -> np.ndarray:
    """Bias-corrected exponential moving average (as Adam corrects its moments)."""
    out, avg = np.empty(len(losses)), 0.0
    for i, loss in enumerate(losses):
        avg = (1 - weight) * avg + weight * loss
        out[i] = avg / (1 - (1 - weight) ** (i + 1))
    return out


def suggest_lr(lrs: np.ndarray, smoothed: np.ndarray, skip: float = 0.1) -> float:
    """fastai's `valley` rule: the LR two thirds of the way along the longest fall of the
    smoothed loss (its longest decreasing run, noise allowed), measured in steps of log(LR).

    The steepest point is no good: the loss often falls fastest just before it blows up, so
    that rule suggests an LR at the edge of divergence. Two thirds along the valley stays on
    the fall and well clear of its bottom. The first `skip` of the sweep is left out (as fastai
    does): the smoothed loss there averages only a few noisy batches.
    NaN when the loss never falls (the range started too high, or the model cannot learn).
    """
    lrs, smoothed = np.asarray(lrs, dtype=np.float64), np.asarray(smoothed, dtype=np.float64)
    finite = np.isfinite(smoothed)
    lrs, smoothed = lrs[finite], smoothed[finite]
    first = int(len(smoothed) * skip)
    start, end = _longest_fall(smoothed[first:])
    if end - start < 2:
        return math.nan
    return float(lrs[first + start + round(2 / 3 * (end - start))])


def _longest_fall(values: np.ndarray) -> tuple[int, int]:
    """(first, last) index of the longest strictly decreasing subsequence of `values`; of
    equally long ones, the one that spans the most steps."""
    n = len(values)
    if n == 0:
        return 0, 0
    length, begin = np.ones(n, dtype=int), np.arange(n)
    for i in range(1, n):
        higher = np.flatnonzero(values[:i] > values[i])  # the points i can continue a fall from
        if higher.size:
            best = higher[np.lexsort((begin[higher], -length[higher]))[0]]
            length[i], begin[i] = length[best] + 1, begin[best]
    end = int(np.lexsort((begin - np.arange(n), -length))[0])
    return int(begin[end]), end


def _endless(loader: DataLoader) -> Iterator:
    """Batches forever, re-shuffled each pass (itertools.cycle would keep a pass in memory)."""
    while True:
        yield from loader


def lr_range_test(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    cfg: LRFindConfig,
    amp_dtype: torch.dtype | None = None,
    reference_lr: float | None = None,
    batch_transform: Callable | None = None,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> LRFindResult:
    """Sweep the LR from start_lr to end_lr (exponentially) and record the loss per step.

    Each param group keeps its LR ratio to `reference_lr` (default: the largest group LR; pass
    optim.lr so the sweep is in optim.lr units and optim.backbone_lr_mult still holds).
    The loss is training's (`batch_transform`, `class_weights`, `label_smoothing` as in
    `train_one_epoch`), so the suggestion fits the run it is for.
    The model is changed by the sweep: pass a copy, or rebuild before training.
    """
    base = [group["lr"] for group in optimizer.param_groups]
    reference_lr = reference_lr or max(base)
    ratios = [lr / reference_lr for lr in base]
    gamma = (cfg.end_lr / cfg.start_lr) ** (1 / (cfg.steps - 1))
    lrs, losses, best, diverged = [], [], math.inf, False
    avg = 0.0
    scaler = grad_scaler(amp_dtype, batches.device)
    optimizer.zero_grad(set_to_none=True)
    model.train()
    for step, (images, labels) in zip(range(cfg.steps), _endless(loader), strict=False):
        lr = cfg.start_lr * gamma**step
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = lr * ratio
        x, y = batches(images, labels)
        x, targets = batch_transform(x, y) if batch_transform else (x, y)
        with autocast(batches.device, amp_dtype):
            loss = F.cross_entropy(
                model(x), targets, weight=class_weights, label_smoothing=label_smoothing
            )
        (scaler.scale(loss) if scaler is not None else loss).backward()
        optimizer_step(model, optimizer, scaler, grad_clip=None)  # steps, then zeroes grads
        lrs.append(lr)
        losses.append(loss.item())
        avg = (1 - cfg.smoothing) * avg + cfg.smoothing * losses[-1]
        current = avg / (1 - (1 - cfg.smoothing) ** len(losses))
        if not math.isfinite(current) or current > cfg.diverge * best:
            diverged = True
            break
        best = min(best, current)
    for group, lr in zip(optimizer.param_groups, base, strict=True):
        group["lr"] = lr
    lrs_a, losses_a = np.asarray(lrs), np.asarray(losses)
    smoothed = smooth(losses_a, cfg.smoothing)
    return LRFindResult(lrs_a, losses_a, smoothed, suggest_lr(lrs_a, smoothed), diverged)
