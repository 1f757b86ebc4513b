"""Settings of the model (conf/backbone, conf/head): `BackboneConfig`, `HeadConfig`.

Torch-free, so that the run config (and `python -m pipeline --help` or a typo'd override)
loads without timm; the models are built in backbone.py and head.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError


@dataclass
class BackboneConfig:
    name: str = "tf_efficientnet_lite0"  # any timm model name
    pretrained: bool = True  # false: random init, logged as weights_source=scratch
    weights: str | None = None  # local .pth/.safetensors file; wins over every other source
    img_size: int | None = None  # None: the pretrained config's input size
    drop_path_rate: float = 0.0  # stochastic depth, where the family supports it
    allow_hub: bool = True  # false: never try the network, even when it is up

    def __post_init__(self) -> None:
        if self.img_size is not None and self.img_size < 8:
            raise ConfigError(f"backbone.img_size must be >= 8, got {self.img_size}")
        if not 0 <= self.drop_path_rate < 1:
            raise ConfigError(
                f"backbone.drop_path_rate must be in [0, 1), got {self.drop_path_rate}"
            )


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
