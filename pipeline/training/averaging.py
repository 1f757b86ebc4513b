"""Uniform average of the last k epochs' weights (SWA-style, `train.average_last=k`).

The window is the last k epochs that actually ran: early stopping may end training at any
epoch, so the last k end-of-epoch states are kept (on the CPU) and averaged once training
ends. Floating-point tensors (parameters and BatchNorm statistics) are averaged, integer
buffers come from the last epoch. The averaged BatchNorm statistics belong to no model that
ever ran, so `update_batch_norm` recomputes them with one pass over the training data, as
`torch.optim.swa_utils.update_bn` does (ours goes through the pipeline's on-device
normalisation, which the raw loader batches have not had yet).
"""

from __future__ import annotations

from collections import deque

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pipeline.training.batches import BatchSource, ToDevice
from pipeline.training.precision import autocast


class LastEpochsAverage:
    """Keeps the state dicts of the last `k` epochs; `average()` is their uniform mean."""

    def __init__(self, k: int):
        self.k = k
        self.states: deque[dict[str, torch.Tensor]] = deque(maxlen=k)

    def add(self, model: nn.Module) -> None:
        self.states.append(
            {n: t.detach().to("cpu", copy=True) for n, t in model.state_dict().items()}
        )

    def average(self) -> dict[str, torch.Tensor]:
        last = self.states[-1]
        return {
            name: torch.stack([s[name].float() for s in self.states]).mean(0).to(tensor.dtype)
            if tensor.is_floating_point()
            else tensor.clone()
            for name, tensor in last.items()
        }

    def __len__(self) -> int:
        return len(self.states)

    def state_dict(self) -> list[dict[str, torch.Tensor]]:
        return list(self.states)

    def load_state_dict(self, states: list[dict[str, torch.Tensor]]) -> None:
        self.states = deque(states, maxlen=self.k)


@torch.no_grad()
def update_batch_norm(
    model: nn.Module, loader: BatchSource, batches: ToDevice, amp_dtype: torch.dtype | None
) -> int:
    """Recompute the running statistics of every BatchNorm that normalises with batch
    statistics in train mode (frozen ones, and all backbone ones under finetune.bn=eval,
    keep theirs) as the plain mean over one pass of `loader`. Returns how many were reset."""
    was_training = model.training
    model.train()
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training]
    momenta = {}
    for module in norms:
        module.reset_running_stats()
        momenta[module] = module.momentum
        module.momentum = None  # cumulative moving average: every batch counts the same
    if norms:
        for images, labels in loader:
            x, _ = batches(images, labels)
            with autocast(batches.device, amp_dtype):
                model(x)
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)
    return len(norms)
