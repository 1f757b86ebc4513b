"""Exponential moving average of model weights (validated and kept instead of the raw ones).

A small own version of timm's ModelEmaV3: only the parameters trainable at each step are
averaged (a frozen backbone never changes, so averaging it would be wasted work; a stage that
`finetune=gradual` unfreezes later is averaged from then on), floating-point buffers such as
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
        ema_params = dict(self.module.named_parameters())
        self._params = [(ema_params[n], p) for n, p in model.named_parameters()]
        ema_buffers = dict(self.module.named_buffers())
        buffers = list(model.named_buffers())
        self._buffers = [(ema_buffers[n], b) for n, b in buffers if b.is_floating_point()]
        self._copied = [(ema_buffers[n], b) for n, b in buffers if not b.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        # Which parameters train is read at every step, not once: fine-tuning strategies
        # unfreeze stages mid-run. A parameter frozen until now still holds its EMA value,
        # which equals its live value, so averaging can start from there.
        pairs = [(e, p) for e, p in self._params if p.requires_grad] + self._buffers
        if pairs:
            ema, live = zip(*pairs, strict=True)
            torch._foreach_lerp_(list(ema), list(live), 1.0 - self.decay)
        for ema_buffer, buffer in self._copied:
            ema_buffer.copy_(buffer)
