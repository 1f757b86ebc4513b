"""Mixup and CutMix on the device, per batch, with soft targets for the cross-entropy.

Each batch is paired with itself reversed (the loader already shuffled it), as timm does:
no extra permutation or copy of the labels is needed. One mixing factor per batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.repro import epoch_seed


class MixBatch:
    """`(images, labels) -> (mixed images, soft targets)`; a `batch_transform` for training.

    With both alphas > 0 each mixed batch is CutMix with probability `switch_prob`, else
    Mixup. `prob` is the chance that a batch is mixed at all.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        seed: int = 0,
    ):
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Each epoch's draws come from (seed, epoch): a resumed run mixes as it would have."""
        self.rng = np.random.default_rng(epoch_seed(self.seed, epoch))

    def _draw(self) -> tuple[str, float]:
        if self.rng.random() >= self.prob:
            return "none", 1.0
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or self.rng.random() < self.switch_prob
        )
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return ("cutmix" if use_cutmix else "mixup"), float(self.rng.beta(alpha, alpha))

    def _box(self, height: int, width: int, lam: float) -> tuple[int, int, int, int]:
        """A box covering about 1 - lam of the image, centred anywhere (clipped at edges)."""
        cut = math.sqrt(1.0 - lam)
        cy, cx = self.rng.integers(height), self.rng.integers(width)
        h, w = round(height * cut), round(width * cut)
        y0, y1 = max(cy - h // 2, 0), min(cy + h // 2, height)
        x0, x1 = max(cx - w // 2, 0), min(cx + w // 2, width)
        return y0, y1, x0, x1

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        one_hot = F.one_hot(labels, self.num_classes).to(images.dtype)
        kind, lam = self._draw()
        if kind == "mixup":
            images = images * lam + images.flip(0) * (1.0 - lam)
        elif kind == "cutmix":
            height, width = images.shape[-2:]
            y0, y1, x0, x1 = self._box(height, width, lam)
            images = images.clone()
            images[..., y0:y1, x0:x1] = images.flip(0)[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # the area actually pasted
        return images, one_hot * lam + one_hot.flip(0) * (1.0 - lam)


def build_batch_transform(
    mixup_alpha: float, cutmix_alpha: float, prob: float, num_classes: int, seed: int
) -> MixBatch | None:
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return MixBatch(num_classes, mixup_alpha, cutmix_alpha, prob, seed=seed)
