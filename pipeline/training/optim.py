"""Optimizers with per-group learning rates and no weight decay on norms and biases."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.layer_groups import backbone_stages
from pipeline.training.config import OPTIMIZERS as OPTIMIZERS
from pipeline.training.config import OptimConfig as OptimConfig


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters split by (backbone|head) x (decay|no decay).

    1-D tensors (norm scales, biases) get no weight decay: shrinking them towards zero
    only fights the normalisation, it does not regularise. With `layer_decay` < 1 the
    backbone is further split by stage (timm's grouping, `pipeline/models/layer_groups.py`): the stage
    just below the head gets lr * backbone_lr_mult * decay, the one below that decay**2..."""
    depth = _distance_from_head(model) if cfg.layer_decay != 1.0 else {}
    groups: dict[tuple[str, bool], tuple[float, list[nn.Parameter]]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part, scale = "head", 1.0
        if name.startswith("backbone."):
            part, scale = "backbone", cfg.backbone_lr_mult
            if depth:
                distance, stage = depth[name.removeprefix("backbone.")]
                part, scale = f"backbone/stage{stage:02d}", scale * cfg.layer_decay**distance
        groups.setdefault((part, param.ndim > 1), (scale, []))[1].append(param)
    result = []
    for (part, decay), (scale, params) in sorted(groups.items()):
        result.append(
            {
                "params": params,
                "lr": cfg.lr * scale,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "name": f"{part}/{'decay' if decay else 'no_decay'}",
            }
        )
    return result


def _distance_from_head(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Backbone parameter name -> (stages between it and the head, its stage index)."""
    stages = backbone_stages(model.get_submodule("backbone"))
    return {
        name: (len(stages) - index, index) for index, names in enumerate(stages) for name in names
    }


def penalised_weights(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The weights an L1 penalty applies to: what the optimizer trains, less the 1-D tensors
    (norm scales, biases), by the same rule as weight decay in `param_groups`."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.ndim > 1]


def l1_norm(weights: list[nn.Parameter]) -> torch.Tensor:
    """sum |w| over `weights`, in float32 (a differentiable scalar)."""
    return torch.stack([w.float().abs().sum() for w in weights]).sum()


def transfer_state(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> None:
    """Carry momentum / Adam moments over to a rebuilt optimizer for the parameters in both
    (the head keeps its state when a fine-tuning strategy unfreezes more of the backbone)."""
    kept = {p for group in new.param_groups for p in group["params"]}
    for param, state in old.state.items():
        if param in kept:
            new.state[param] = state


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
