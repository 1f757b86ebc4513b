"""Non-finite loss handling for the training loop, without a host sync on every step.

`train.nan_policy=stop` (default) keeps a device-side record of the first bad step and looks
at it every `train.log_every` steps (one sync each) and at the epoch end, then stops with
the step number. `skip` must decide before the backward pass, so it syncs on every step:
it is opt-in and meant for rare bad batches, not for a diverging run.
"""

from __future__ import annotations

import torch

from pipeline import distributed
from pipeline.errors import TrainingError

NAN_POLICIES = ("stop", "skip")


class LossGuard:
    def __init__(self, policy: str, check_every: int, first_step: int, device: torch.device):
        self.policy = policy
        self.check_every = check_every
        self.device = device
        self.step = first_step - 1  # global optimizer step of the current batch
        self.skipped = 0
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def bad_step(self, loss: torch.Tensor) -> bool:
        """Call once per batch before backward; True means: skip this batch."""
        self.step += 1
        finite = torch.isfinite(loss.detach())
        if self.policy == "skip":
            if distributed.any_rank(not bool(finite), self.device):  # every rank skips together
                self.skipped += 1
                return True
            return False
        self.first_bad = torch.where((self.first_bad < 0) & ~finite, self.step, self.first_bad)
        if (self.step + 1) % self.check_every == 0:
            self.check()
        return False

    def check(self) -> None:
        """Raise if a non-finite loss was seen since the last check (one host sync)."""
        if self.policy != "stop":
            return
        bad = int(self.first_bad.item())
        if distributed.any_rank(bad >= 0, self.device):
            where = f"at step {bad + 1} (counting from 1)" if bad >= 0 else "on another rank"
            raise TrainingError(
                f"non-finite training loss {where}: "
                "lower optim.lr, set train.grad_clip, or skip such steps with train.nan_policy=skip"
            )
