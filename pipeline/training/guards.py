"""Non-finite loss handling for the training loop, without a host sync on every step.

`train.nan_policy=stop` (default) keeps a device-side record of the first bad step and looks
at it every `train.log_every` steps (one sync each) and at the epoch end, then stops with
the step number. `skip` must decide before the backward pass, so it syncs on every step:
it is opt-in and meant for rare bad batches, not for a diverging run.
"""

from __future__ import annotations

import torch

from pipeline.errors import TrainingError, find_cause
from pipeline.training import distributed
from pipeline.training.config import NAN_POLICIES as NAN_POLICIES


class LossGuard:
    def __init__(self, policy: str, check_every: int, first_step: int, device: torch.device):
        self.policy = policy
        self.device = device
        self.step = first_step - 1  # global optimizer step of the current batch (0-based)
        self.skipped = 0
        # Finiteness of each step since the last check, written on the device (no sync).
        self.window = torch.ones(check_every, dtype=torch.bool, device=device)
        self.pending = 0  # steps recorded in the window since the last check

    def bad_step(self, loss: torch.Tensor) -> bool:
        """Call once per batch before backward; True means: skip this batch."""
        self.step += 1
        finite = torch.isfinite(loss.detach())
        if self.policy == "skip":
            if distributed.any_rank(not bool(finite), self.device):  # every rank skips together
                self.skipped += 1
                return True
            return False
        self.window[self.pending] = finite
        self.pending += 1
        if self.pending == len(self.window):
            self.check()
        return False

    def check(self) -> None:
        """Raise if a non-finite loss was seen since the last check (one host sync)."""
        if self.policy != "stop" or not self.pending:
            return
        bad = (~self.window[: self.pending]).nonzero()
        first_bad = self.step - self.pending + 1 + int(bad[0]) if len(bad) else -1
        self.window.fill_(True)
        self.pending = 0
        if distributed.any_rank(first_bad >= 0, self.device):
            where = (
                f"at step {first_bad + 1} (counting from 1)"
                if first_bad >= 0
                else "on another rank"
            )
            raise TrainingError(
                f"non-finite training loss {where}: "
                "lower optim.lr, set train.grad_clip, or skip such steps with train.nan_policy=skip"
            )


def out_of_memory(exc: BaseException | None) -> bool:
    """An OOM, also when it arrives wrapped (torch.compile and autotuning re-raise it)."""
    return find_cause(exc, lambda e: isinstance(e, torch.cuda.OutOfMemoryError)) is not None
