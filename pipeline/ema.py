"""Exponential moving average of model weights (validated and kept instead of the raw ones).

A small own version of timm's ModelEmaV3: only trainable parameters are averaged (a frozen
backbone never changes, so averaging it would be wasted work), floating-point buffers such as
batch-norm running statistics are averaged too, integer buffers are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """`ema = decay * ema + (1 - decay) * weights` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        params = dict(model.named_parameters())
        ema_params = dict(self.module.named_parameters())
        averaged = [(ema_params[n], p) for n, p in params.items() if p.requires_grad]
        buffers = dict(model.named_buffers())
        ema_buffers = dict(self.module.named_buffers())
        averaged += [(ema_buffers[n], b) for n, b in buffers.items() if b.is_floating_point()]
        self._ema = [e for e, _ in averaged]
        self._live = [m for _, m in averaged]
        self._copied = [
            (ema_buffers[n], b) for n, b in buffers.items() if not b.is_floating_point()
        ]

    @torch.no_grad()
    def update(self) -> None:
        if self._ema:
            torch._foreach_lerp_(self._ema, self._live, 1.0 - self.decay)
        for ema_buffer, buffer in self._copied:
            ema_buffer.copy_(buffer)
