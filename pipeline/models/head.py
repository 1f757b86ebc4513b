"""Classifier heads on pooled backbone features."""

from __future__ import annotations

from torch import nn

from pipeline.models.config import POOLS as POOLS
from pipeline.models.config import HeadConfig as HeadConfig


def build_head(cfg: HeadConfig, in_features: int, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    if cfg.kind == "mlp":
        layers.append(nn.Linear(width, cfg.hidden, bias=not cfg.batchnorm))
        if cfg.batchnorm:
            layers.append(nn.BatchNorm1d(cfg.hidden))
        layers.append(nn.ReLU(inplace=True))
        width = cfg.hidden
    if cfg.dropout:
        layers.append(nn.Dropout(cfg.dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
