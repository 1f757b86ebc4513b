"""Progress of a fit for the person watching it.

On a terminal: a bar per epoch with the running loss and accuracy and the ETA of the whole
run, then a bar for validation. Elsewhere (a pipe, CI, a cluster log) no bar, but one plain
line every `every_s` seconds, e.g.
`epoch 2/8  batch 40/120  loss 0.412  acc 0.871  3.1 it/s  eta 2m10s`.

The running numbers are sums the training step keeps on the device; they are read (one host
sync) only when a bar refreshes or a line is due, never per batch.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tqdm import tqdm

log = logging.getLogger(__name__)

BAR_REFRESH_S = 0.5  # how often a bar's running loss/acc is read from the device
MODES = ("bar", "lines", "off")


def progress_mode(setting: bool | None, is_main: bool) -> str:
    """train.progress: None (bar on a terminal, lines otherwise), true (bar), false (neither)."""
    if not is_main or setting is False:
        return "off"
    if setting is True or sys.stderr.isatty():
        return "bar"
    return "lines"


def duration(seconds: float) -> str:
    """42s, 2m10s, 1h05m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class RunProgress:
    """Keeps the time per train and per validation batch over the run, for its ETA."""

    def __init__(
        self,
        epochs: int,
        train_batches: int,
        val_batches: int,
        mode: str,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        assert mode in MODES, mode
        self.epochs, self.train_batches, self.val_batches = epochs, train_batches, val_batches
        self.mode, self.every_s, self.clock = mode, every_s, clock
        self.seconds = {"train": 0.0, "val": 0.0}
        self.batches = {"train": 0, "val": 0}

    def eta(self, epoch: int, train_done: int, val_done: int) -> float | None:
        """Seconds left to the last epoch (an early stop ends sooner), None before any batch."""
        if not self.batches["train"]:
            return None
        per_train = self.seconds["train"] / self.batches["train"]
        # Before the first validation: a forward pass alone, about a third of a training step.
        per_val = (
            self.seconds["val"] / self.batches["val"] if self.batches["val"] else per_train / 3
        )
        epochs_after = self.epochs - epoch - 1
        train_left = self.train_batches - train_done + epochs_after * self.train_batches
        val_left = self.val_batches - val_done + epochs_after * self.val_batches
        return train_left * per_train + val_left * per_val

    def train(self, loader: Any, epoch: int) -> EpochProgress:
        return EpochProgress(self, loader, epoch)

    def validate(self, loader: Any, epoch: int) -> Iterator[Any]:
        """Yields the validation batches, counting their time; a bar on a terminal."""
        bar = self._bar(f"val {epoch + 1}/{self.epochs}", len(loader))
        tic = self.clock()
        done = 0
        try:
            for batch in loader:
                yield batch
                done += 1
                now = self.clock()
                self.seconds["val"] += now - tic
                self.batches["val"] += 1
                tic = now
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    def _bar(self, desc: str, total: int) -> tqdm | None:
        if self.mode != "bar":
            return None
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


class EpochProgress:
    """One training epoch: wraps its loader, and `show(...)` after each batch reports the
    running sums when a refresh or a plain line is due."""

    def __init__(self, run: RunProgress, loader: Any, epoch: int):
        self.run, self.loader, self.epoch = run, loader, epoch
        self.done = 0
        self.bar = run._bar(f"epoch {epoch + 1}/{run.epochs}", len(loader))
        self.started = self.last_shown = self._tic = run.clock()

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.loader
        finally:
            if self.bar is not None:
                self.bar.close()

    def __len__(self) -> int:
        return len(self.loader)

    def show(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> None:
        """After each batch: count its time; refresh the bar or log a line when one is due."""
        run = self.run
        now = run.clock()
        run.seconds["train"] += now - self._tic
        run.batches["train"] += 1
        self._tic = now
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if run.mode == "off" or seen == 0:
            return
        every = BAR_REFRESH_S if run.mode == "bar" else run.every_s
        last = self.done == len(self.loader)
        if now - self.last_shown < every and not (run.mode == "bar" and last):
            return
        self.last_shown = now
        loss, acc = loss_sum.item() / seen, correct.item() / seen
        eta = run.eta(self.epoch, self.done, 0)
        eta_text = f"eta {duration(eta)}" if eta is not None else ""
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.3f}  acc {acc:.3f}  run {eta_text}")
            return
        rate = self.done / max(now - self.started, 1e-9)
        speed = f"{rate:.1f} it/s" if rate >= 1 else f"{1 / rate:.1f} s/it"  # as tqdm shows it
        log.info(
            "epoch %d/%d  batch %d/%d  loss %.3f  acc %.3f  %s  %s",
            self.epoch + 1,
            run.epochs,
            self.done,
            len(self.loader),
            loss,
            acc,
            speed,
            eta_text,
        )
