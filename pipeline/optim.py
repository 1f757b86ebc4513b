"""Optimizers with per-group learning rates and no weight decay on norms and biases."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")


@dataclass
class OptimConfig:
    name: str = "adamw"  # sgd | adam | adamw | rmsprop | adagrad
    lr: float = 1e-3  # head learning rate; backbone gets lr * backbone_lr_mult
    weight_decay: float = 0.05  # L2 (decoupled for adamw); never applied to norms and biases
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = True  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    backbone_lr_mult: float = 1.0  # discriminative LR: < 1 keeps pretrained features closer

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name={self.name!r} is not one of: {', '.join(OPTIMIZERS)}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.backbone_lr_mult < 0:
            raise ConfigError(f"optim.backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")
        self.betas = tuple(self.betas)
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two values in [0, 1), got {list(self.betas)}")


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters split by (backbone|head) x (decay|no decay).

    1-D tensors (norm scales, biases) get no weight decay: shrinking them towards zero
    only fights the normalisation, it does not regularise."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "head"
        groups.setdefault((part, param.ndim > 1), []).append(param)
    result = []
    for (part, decay), params in sorted(groups.items()):
        lr = cfg.lr * (cfg.backbone_lr_mult if part == "backbone" else 1.0)
        result.append(
            {
                "params": params,
                "lr": lr,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "name": f"{part}/{'decay' if decay else 'no_decay'}",
            }
        )
    return result


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen")
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adagrad(groups, lr=cfg.lr)
