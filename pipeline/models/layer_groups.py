"""A backbone's "stages": its parameters in groups, ordered from input to output.

Stage-wise fine-tuning (`partial`, `gradual`) and layer-wise LR decay both need to know
which parameters sit how deep. timm already answers that for every family with
`model.group_matcher(coarse=True)`, the grouping its own layer-decay code uses, so the
same setting works for ResNet (stem, layer1..4), VGG (one group per conv, then fc6/fc7),
Inception (stem convs, then one group per Mixed block) and EfficientNet (stem, block
stages, head conv).
"""

from __future__ import annotations

from timm.models import group_parameters
from torch import nn


def backbone_stages(model: nn.Module) -> list[list[str]]:
    """Parameter names per stage, from the input (index 0) to the output (last).

    Parameters no matcher claims (VGG's fc6/fc7, an EfficientNet's head conv) form the
    last stage, as in timm. A group holding only 1-D tensors (a BatchNorm that timm's VGG
    matcher puts apart from its conv) joins the group before it: a conv and its norm
    always train together."""
    names = [name for name, _ in model.named_parameters()]
    if not names:
        return []
    try:
        # A method of timm's models; typed on nn.Module as a submodule lookup, hence the ignore.
        matcher = model.group_matcher(coarse=True)  # type: ignore[operator]
        grouped = group_parameters(model, matcher)
        groups = [grouped[i] for i in sorted(grouped)]
    except (AttributeError, NotImplementedError):
        # Not a timm model (or one without a matcher): each top-level child is a stage.
        groups = _top_level_groups(names)
    params = dict(model.named_parameters())
    stages: list[list[str]] = []
    for group in groups:
        if stages and all(params[name].ndim <= 1 for name in group):
            stages[-1].extend(group)
        else:
            stages.append(list(group))
    return stages


def _top_level_groups(names: list[str]) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split(".")[0], []).append(name)
    return list(groups.values())
