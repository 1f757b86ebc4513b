"""Classifier heads on pooled backbone features."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from pipeline.errors import ConfigError

POOLS = ("avg", "max", "avgmax", "catavgmax")


@dataclass
class HeadConfig:
    kind: str = "linear"  # linear | mlp
    pool: str = "avg"  # avg | max | avgmax | catavgmax (concat of avg and max)
    hidden: int = 512  # mlp only
    dropout: float = 0.0  # before the last linear layer
    batchnorm: bool = False  # mlp only: BatchNorm1d after the hidden layer

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp"):
            raise ConfigError(f"head.kind={self.kind!r} is not one of: linear, mlp")
        if self.pool not in POOLS:
            raise ConfigError(f"head.pool={self.pool!r} is not one of: {', '.join(POOLS)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"head.dropout must be in [0, 1), got {self.dropout}")
        if self.hidden < 1:
            raise ConfigError(f"head.hidden must be >= 1, got {self.hidden}")


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
