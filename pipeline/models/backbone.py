"""timm backbones without their classifier, plus the input spec they were trained with."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.layers import SelectAdaptivePool2d
from torch import nn

from pipeline.errors import ConfigError, first_line
from pipeline.models.config import BackboneConfig as BackboneConfig
from pipeline.models.weights import WeightsInfo, load_backbone_state, resolve_pretrained

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """What the backbone expects: taken from timm's pretrained data config, never hard-coded."""

    img_size: int
    interpolation: str
    mean: tuple[float, ...]  # per channel
    std: tuple[float, ...]
    crop_pct: float


def check_model_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise ConfigError(f"unknown backbone {name!r}{hint}")


def input_spec_of(model: nn.Module, img_size: int | None) -> InputSpec:
    data_cfg = timm.data.resolve_model_data_config(model)
    size = img_size or data_cfg["input_size"][-1]
    return InputSpec(
        img_size=int(size),
        interpolation=str(data_cfg.get("interpolation", "bicubic")),
        mean=tuple(float(m) for m in data_cfg["mean"]),
        std=tuple(float(s) for s in data_cfg["std"]),
        crop_pct=float(data_cfg.get("crop_pct", 0.875)),
    )


def create_backbone(
    cfg: BackboneConfig, global_pool: str = "avg", trained: str | None = None
) -> tuple[nn.Module, InputSpec, WeightsInfo]:
    """A timm model with num_classes=0: forward(x) returns pooled features (B, C).
    `trained` names where its weights come from next (a trained run's checkpoint): then it
    is built without pretrained weights, and says so rather than "random init"."""
    check_model_name(cfg.name)
    kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": global_pool}
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    # pretrained=False: weights are resolved and loaded here, so timm never retries a hub.
    model = timm.create_model(cfg.name, pretrained=False, **kwargs)
    use_fast_pooling(model)
    if trained is not None:
        info = WeightsInfo("checkpoint", trained)
        log.debug("%s: built for the trained weights of %s", cfg.name, trained)
    elif cfg.pretrained:
        state, info = resolve_pretrained(cfg.name, model, cfg.weights, allow_hub=cfg.allow_hub)
        load_backbone_state(model, state)
        log.info("loaded %s weights for %s from %s", info.source, cfg.name, info.path)
    else:
        info = WeightsInfo("scratch")
        log.info("%s: random init (backbone.pretrained=false)", cfg.name)
    return model, input_spec_of(model, cfg.img_size), info


@torch.no_grad()
def feature_dim(model: nn.Module, img_size: int) -> int:
    """Width of the pooled features (pooling choice and pre-logits layers included).

    Probed with one small image (any size the net accepts gives the same width); nets
    with a minimum input (Inception: 75 px) are probed at the configured size instead."""
    was_training = model.training
    model.eval()
    try:
        for size in dict.fromkeys((min(img_size, 64), img_size)):
            try:
                return int(model(torch.zeros(1, 3, size, size)).shape[-1])
            except RuntimeError as exc:
                error = exc
        cfg = getattr(model, "pretrained_cfg", {})
        native = cfg.get("input_size", (3, img_size))[-1]
        raise ConfigError(
            f"backbone.img_size={img_size} is too small for {cfg.get('architecture', 'this')}"
            f" ({first_line(error)}): set backbone.img_size={native} (its pretrained"
            " size) or null"
        )
    finally:
        model.train(was_training)


def use_fast_pooling(model: nn.Module) -> int:
    """Swap timm's global pooling to its `fast` variants (mean / amax over H, W); returns
    how many were swapped.

    Same values, but `nn.AdaptiveAvgPool2d` and `nn.AdaptiveMaxPool2d` have no deterministic
    CUDA backward, so `train.deterministic=true` would stop at the first backward pass on a
    GPU; `mean` and `amax` are deterministic (and channels_last-friendly).
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if (
                isinstance(child, SelectAdaptivePool2d)
                and child.pool_type in ("avg", "max", "avgmax", "catavgmax")
                and getattr(child.pool, "output_size", None) in (1, (1, 1))
            ):
                flatten = isinstance(child.flatten, nn.Flatten)
                fast = SelectAdaptivePool2d(pool_type="fast" + child.pool_type, flatten=flatten)
                setattr(parent, name, fast)
                swapped += 1
    return swapped
