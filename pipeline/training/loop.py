"""The training loop: mixed precision, early stopping with best-weight restore, checkpoints.

Kept free of tracking and config plumbing: `fit` takes built objects and reports each epoch
through a callback, so it can be tested and benchmarked on its own.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError, TrainingError
from pipeline.training import distributed
from pipeline.training.averaging import LastEpochsAverage, update_batch_norm
from pipeline.training.batches import BatchSource, ToDevice
from pipeline.training.checkpoint import remove_torn_writes, save_atomic
from pipeline.training.config import TrainConfig
from pipeline.training.early_stopping import BestCheckpoint, EarlyStopping
from pipeline.training.ema import ModelEma
from pipeline.training.guards import LossGuard
from pipeline.training.optim import l1_norm, penalised_weights
from pipeline.training.precision import autocast, grad_scaler, resolve_amp, use_fast_cuda_kernels
from pipeline.training.progress import EpochProgress, RunProgress, progress_mode
from pipeline.training.sched import Schedule
from pipeline.training.state import TrainingParts

log = logging.getLogger(__name__)


# --- one pass over the data ------------------------------------------------------------------


def optimizer_steps_per_epoch(batches_per_epoch: int, accumulate_steps: int) -> int:
    """What the LR schedule counts: a last, shorter accumulation group still steps."""
    return max(1, math.ceil(batches_per_epoch / accumulate_steps))


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
) -> None:
    if scaler is not None:
        if grad_clip:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_one_epoch(
    model: nn.Module,
    loader: BatchSource,
    batches: ToDevice,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    cfg: TrainConfig,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None,
    progress: EpochProgress | None = None,
    desc: str = "train",
    batch_transform: Callable | None = None,
    class_weights: torch.Tensor | None = None,
    first_step: int = 0,
    ema: ModelEma | None = None,
    l1: float = 0.0,
) -> dict[str, float]:
    """`batch_transform(x, y) -> (x, targets)` may mix images on the device and return soft
    targets (N, C), e.g. `pipeline.data.mix.MixBatch`; accuracy is still counted against `y`.
    `progress` (RunProgress.train) wraps the loader and shows the running loss/acc.
    `l1` > 0 adds l1 * sum |w| (optim.penalised_weights) to each batch's loss; the returned
    `loss` stays the cross-entropy, comparable with val/loss, and `l1` is the mean penalty."""
    model.train()
    # Sums stay on the device: no host sync per batch.
    loss_sum = torch.zeros((), device=batches.device)
    correct = torch.zeros((), device=batches.device, dtype=torch.long)
    seen = 0
    guard = LossGuard(cfg.nan_policy, cfg.log_every, first_step, batches.device)  # NaN/inf loss
    accumulate, n_batches = cfg.accumulate_steps, len(loader)
    group_has_grad = False
    peak_lr = 0.0  # the highest LR an optimizer step of this epoch used (what `lr` logs)
    weights = penalised_weights(optimizer) if l1 else []
    l1_sum = torch.zeros((), device=batches.device)
    optimizer.zero_grad(set_to_none=True)
    for i, (images, labels) in enumerate(progress or loader):
        x, y = batches(images, labels)
        x, targets = batch_transform(x, y) if batch_transform else (x, y)
        with autocast(batches.device, amp_dtype):
            logits = model(x)
            loss = F.cross_entropy(
                logits, targets, weight=class_weights, label_smoothing=cfg.label_smoothing
            )
        penalty = l1 * l1_norm(weights) if weights else None
        objective = loss + penalty if penalty is not None else loss
        # Gradient accumulation: each micro-batch adds loss / (micro-batches in its group),
        # so one optimizer step sees the group's mean loss, as one big batch would.
        group_start = i - i % accumulate
        group_end = min(group_start + accumulate, n_batches)
        # --- non-finite loss: stop (checked every cfg.log_every steps) or skip this batch ---
        skipped = guard.bad_step(objective)
        # --- end non-finite loss ---
        if not skipped:
            micro = objective / (group_end - group_start) if accumulate > 1 else objective
            (scaler.scale(micro) if scaler is not None else micro).backward()
            group_has_grad = True
        if i + 1 == group_end:  # the LR schedule follows optimizer steps, skipped or not
            peak_lr = max(peak_lr, *(group["lr"] for group in optimizer.param_groups))
            if group_has_grad:
                optimizer_step(model, optimizer, scaler, cfg.grad_clip)
                if ema is not None:
                    ema.update()
            group_has_grad = False
            schedule.step_batch()
        if not skipped:
            loss_sum += loss.detach() * y.shape[0]
            if penalty is not None:
                l1_sum += penalty.detach() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.shape[0]
        if progress:
            progress.show(loss_sum, correct, seen)
    guard.check()
    loss_sum, correct, seen = distributed.reduce_sums(loss_sum, correct, seen)  # DDP: all ranks
    if seen == 0 and guard.skipped:  # nothing trained: the run has diverged, not hit a bad batch
        raise TrainingError(
            f"{desc}: train.nan_policy=skip skipped all {guard.skipped} steps (every loss was "
            "NaN/inf): lower optim.lr or set train.grad_clip"
        )
    mean_loss = loss_sum.item() / max(seen, 1)
    if not math.isfinite(mean_loss):
        raise TrainingError(f"training loss is {mean_loss}: lower optim.lr or set train.grad_clip")
    return {
        "loss": mean_loss,
        "l1": l1_sum.item() / max(seen, 1),  # the same on every rank: no reduce
        "acc": correct.item() / max(seen, 1),
        "skipped": guard.skipped,
        "lr": peak_lr,
    }


@torch.no_grad()
def predict(
    model: nn.Module, loader: Iterable[Any], batches: ToDevice, amp_dtype: torch.dtype | None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean loss, softmax probabilities (N, C) and targets (N,) over a loader."""
    model.eval()
    loss_sum, probs, targets = torch.zeros((), device=batches.device), [], []
    for images, labels in loader:
        x, y = batches(images, labels)
        with autocast(batches.device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        probs.append(logits.softmax(1))
        targets.append(y)
    n = sum(len(t) for t in targets)
    return (
        loss_sum.item() / max(n, 1),
        torch.cat(probs).cpu().numpy(),
        torch.cat(targets).cpu().numpy(),
    )


# --- the loop ------------------------------------------------------------------------------------


def epoch_header(monitor: str, restore_best: bool) -> str:
    """Said once before the epoch lines: what their `*` marks."""
    kept = " (its weights are kept)" if restore_best else ""
    return f"one line per epoch; * = best so far by {monitor}{kept}"


def epoch_line(epoch: int, epochs: int, metrics: dict[str, float], best: bool) -> str:
    """`epoch 3/8  train loss 0.4120 acc 0.8710  val loss 0.3010 acc 0.9120  lr 1.0e-03  8.1s *`:
    under 100 characters, so a console line does not wrap."""
    return (
        f"epoch {epoch + 1}/{epochs}  train loss {metrics['train/loss']:.4f} "
        f"acc {metrics['train/acc']:.4f}  val loss {metrics['val/loss']:.4f} "
        f"acc {metrics['val/acc']:.4f}  lr {metrics['lr']:.1e}  {metrics['epoch_seconds']:.1f}s"
        + ("  *" if best else "")
    )


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_value: float
    stopped_early: bool
    # The weights fit ended with: the ones the test uses and every later stage loads.
    # best.pt (the best epoch's), or final.pt (the last epoch's) under restore_best=false.
    checkpoint: Path | None
    weights_epoch: int  # whose weights those are (0-based); the last averaged one
    train_seconds: float
    averaged_epochs: int = 0  # train.average_last: how many epochs' weights were averaged


def fit(
    model: nn.Module,
    train_loader: BatchSource,
    val_loader: BatchSource,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    cfg: TrainConfig,
    batches: ToDevice,
    checkpoint_dir: Path,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    on_epoch_start: Callable[[int], tuple[torch.optim.Optimizer, Schedule] | None] | None = None,
    batch_transform: Callable | None = None,
    class_weights: torch.Tensor | None = None,
    resume: dict | None = None,
    checkpoint_extra: dict | None = None,
    l1: float = 0.0,
) -> FitResult:
    """Train for up to cfg.epochs; validate each epoch; stop early; restore the best weights.

    `on_epoch_start(epoch)` may return a new (optimizer, schedule) pair, e.g. when a
    fine-tuning strategy unfreezes more of the backbone. After every epoch
    `checkpoint_dir/last.pt` holds the full training state (plus `checkpoint_extra`, e.g.
    the run id); pass it back as `resume` to carry on from there.
    """
    amp_dtype = resolve_amp(cfg.amp, batches.device)
    scaler = grad_scaler(amp_dtype, batches.device)
    # Speed and weight averaging (issue 8): the EMA copy is taken before compiling, and it is
    # what validation and checkpoints see.
    use_fast_cuda_kernels(batches.device)
    ema = ModelEma(distributed.unwrap(model), cfg.ema_decay) if cfg.ema_decay else None
    average = LastEpochsAverage(cfg.average_last) if cfg.average_last else None
    if cfg.compile:
        model.compile()
    stopper = EarlyStopping(cfg.early_stopping)
    last_path = checkpoint_dir / "last.pt"
    main = distributed.is_main()  # only rank 0 writes checkpoints
    saver = BestCheckpoint(checkpoint_dir, cfg.early_stopping.restore_best, main)
    if main:  # a SIGKILL during a write left a temp file; the checkpoint it was to replace is whole
        remove_torn_writes(checkpoint_dir)
    history: list[dict[str, float]] = []
    start_epoch = 0
    parts = TrainingParts(model, optimizer, schedule, scaler, stopper, ema, average)
    if resume is not None:
        # A strategy that unfreezes as it goes (gradual, linear_then_full) saved an optimizer
        # over the parameters trainable at the saved epoch: rebuild that one before loading.
        parts.enter_epoch(resume["epoch"], on_epoch_start, cfg.compile)
        start_epoch = parts.load_state_dict(resume)
        if stopper.should_stop:  # it had stopped early: nothing left to train
            start_epoch = cfg.epochs
        history = list(resume["history"])
        log.info("resuming after epoch %d/%d", start_epoch, cfg.epochs)
    progress = RunProgress(
        cfg.epochs,
        len(train_loader),
        len(val_loader),
        progress_mode(cfg.progress, main),
        cfg.progress_every,
    )
    log.info(epoch_header(cfg.early_stopping.monitor, cfg.early_stopping.restore_best))
    start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        tic = time.perf_counter()
        parts.enter_epoch(epoch, on_epoch_start, cfg.compile)
        model, optimizer, schedule = parts.model, parts.optimizer, parts.schedule
        eval_model = ema.module if ema is not None else model
        # Shuffle order, augmentations and mixing are functions of (seed, epoch): tell them which.
        for part in (getattr(train_loader, "sampler", None), batch_transform):
            if part is not None and hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        train = train_one_epoch(
            model,
            train_loader,
            batches,
            optimizer,
            schedule,
            cfg,
            amp_dtype,
            scaler,
            progress.train(train_loader, epoch),
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            batch_transform=batch_transform,
            class_weights=class_weights,
            first_step=epoch * len(train_loader),
            ema=ema,
            l1=l1,
        )
        val_loss, val_probs, val_targets = distributed.gather_predictions(
            *predict(eval_model, progress.validate(val_loader, epoch), batches, amp_dtype)
        )
        if not math.isfinite(val_loss):  # no epoch to select, nothing worth testing or saving
            raise TrainingError(
                f"val/loss is {val_loss} after epoch {epoch + 1}: the weights diverged; "
                "lower optim.lr or set train.grad_clip"
            )
        metrics = {
            "train/loss": train["loss"],
            "train/acc": train["acc"],
            "val/loss": val_loss,
            "val/acc": float((val_probs.argmax(1) == val_targets).mean()),
            "lr": train["lr"],  # used during the epoch, not where the schedule ended it
            "epoch_seconds": time.perf_counter() - tic,
        }
        if cfg.nan_policy == "skip":
            metrics["train/skipped_steps"] = train["skipped"]
        if l1:
            metrics["train/l1"] = train["l1"]
        schedule.step_epoch(val_loss)
        if cfg.early_stopping.monitor not in metrics:
            raise ConfigError(
                f"train.early_stopping.monitor={cfg.early_stopping.monitor!r} is not one of: {', '.join(metrics)}"
            )
        if stopper.step(metrics[cfg.early_stopping.monitor], epoch):
            saver.save_best(eval_model, epoch, metrics)
        history.append(metrics)
        if average is not None:
            average.add(distributed.unwrap(model))
        log.info(epoch_line(epoch, cfg.epochs, metrics, best=stopper.best_epoch == epoch))
        if on_epoch:
            on_epoch(epoch, metrics)
        # After the epoch's metrics are logged: an interrupt before this line redoes the epoch
        # on resume (and re-logs its step) rather than leaving a gap in the metric history.
        if main:
            state = parts.state_dict(epoch, history)
            save_atomic({**state, **(checkpoint_extra or {})}, last_path)
        if stopper.should_stop:
            log.info(
                "early stop: %s did not improve by > %g for %d epochs (best %.4f at epoch %d)",
                cfg.early_stopping.monitor,
                cfg.early_stopping.min_delta,
                stopper.bad_epochs,
                stopper.best,
                stopper.best_epoch + 1,
            )
            break
    if average is not None and len(average):
        # The averaged weights replace model selection (restore_best): SWA's premise is that
        # the mean of the last epochs generalises better than any one of them.
        distributed.unwrap(model).load_state_dict(average.average())
        update_batch_norm(model, train_loader, batches, amp_dtype)
        distributed.broadcast_model(model)  # each rank saw its shard: rank 0's statistics
        weights_epoch = len(history) - 1
        log.info(
            "testing the average of epochs %d-%d (BatchNorm statistics recomputed on train)",
            weights_epoch + 2 - len(average),
            weights_epoch + 1,
        )
        checkpoint = saver.save_averaged(model, weights_epoch, history[-1])
    else:
        checkpoint, weights_epoch = saver.finish(model, ema, stopper.best_epoch, history)
    return FitResult(
        history=history,
        best_epoch=stopper.best_epoch,
        best_value=stopper.best,
        stopped_early=stopper.should_stop,
        checkpoint=checkpoint,
        weights_epoch=weights_epoch,
        train_seconds=time.perf_counter() - start,
        averaged_epochs=len(average) if average is not None else 0,
    )
