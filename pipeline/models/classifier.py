"""Backbone + head as one module that respects which parts are frozen."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.backbone import BackboneConfig, InputSpec, create_backbone, feature_dim
from pipeline.models.head import HeadConfig, build_head
from pipeline.models.weights import WeightsInfo

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


class Classifier(nn.Module):
    """`head(backbone(x))`. Batch-norm layers whose parameters are frozen stay in eval mode,
    so feature extraction never updates their running statistics; a wholly frozen backbone
    runs under `no_grad` (no activations kept for backward)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.backbone_frozen = False
        # finetune.bn=eval: every backbone BatchNorm normalises with its running statistics
        # and never updates them, trainable or not (its scale and shift still train).
        self.norms_eval = False
        self._frozen_norms: list[nn.Module] = []

    def refresh_frozen(self) -> None:
        """Call after changing `requires_grad` on backbone parameters (or `norms_eval`)."""
        params = list(self.backbone.parameters())
        self.backbone_frozen = bool(params) and not any(p.requires_grad for p in params)
        self._frozen_norms = [
            m
            for m in self.backbone.modules()
            if isinstance(m, _NORM_TYPES)
            and (self.norms_eval or not any(p.requires_grad for p in m.parameters()))
        ]
        self.train(self.training)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if mode and self.backbone_frozen:
            self.backbone.eval()  # dropout / drop-path off too: pure feature extraction
        elif mode:
            for module in self._frozen_norms:
                module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone_frozen:
            with torch.no_grad():
                features = self.backbone(x)
        else:
            features = self.backbone(x)
        return self.head(features)


def build_model(
    backbone_cfg: BackboneConfig,
    head_cfg: HeadConfig,
    num_classes: int,
    trained: str | None = None,  # the weights come from this run/checkpoint next
) -> tuple[Classifier, InputSpec, WeightsInfo]:
    backbone, spec, weights = create_backbone(backbone_cfg, head_cfg.pool, trained)
    head = build_head(head_cfg, feature_dim(backbone, spec.img_size), num_classes)
    return Classifier(backbone, head), spec, weights
