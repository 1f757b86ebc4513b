"""Grad-CAM (Selvaraju et al., 2017) with forward/backward hooks, for any timm backbone.

The map for class c is ReLU(sum_k w_k A_k), where A_k are the target layer's activations and
w_k the spatial mean of d(logit_c)/dA_k: where in the image the evidence for c sits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def feature_layers(backbone: nn.Module) -> list[str]:
    """Module names of the backbone's stages, from timm's `feature_info` (last = deepest).

    Falls back to the last Conv2d for models without feature_info.
    """
    info = getattr(backbone, "feature_info", None)
    if info is not None:
        names = info.module_name() if hasattr(info, "module_name") else [f["module"] for f in info]
        names = [n for n in names if n]
        if names:
            return names
    convs = [name for name, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("backbone has no Conv2d layer to take feature maps from")
    return [convs[-1]]


class GradCAM:
    """cams, probs = GradCAM(model, "backbone.blocks.4")(x): one heat map per image."""

    def __init__(self, model: nn.Module, layer: str):
        self.model = model
        self.layer = model.get_submodule(layer)
        self.activations: torch.Tensor | None = None
        self.gradients: torch.Tensor | None = None

    def _keep(self, module, inputs, output) -> None:
        self.activations = output

        def keep_grad(grad: torch.Tensor) -> None:
            self.gradients = grad

        output.register_hook(keep_grad)

    def __call__(
        self, x: torch.Tensor, class_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: normalised NCHW batch. Returns cams (N, H, W) in [0, 1] at x's size, and probs.

        `class_index` defaults to the predicted class of each image.
        """
        self.model.eval()
        handle = self.layer.register_forward_hook(self._keep)
        try:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)  # a graph even if every weight is frozen
                logits = self.model(x)
                if class_index is None:
                    class_index = logits.argmax(1)
                chosen = logits.gather(1, class_index.view(-1, 1)).sum()
                self.model.zero_grad(set_to_none=True)
                chosen.backward()
        finally:
            handle.remove()
        assert self.activations is not None and self.gradients is not None  # set by the hooks
        acts, grads = self.activations.detach(), self.gradients.detach()
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cams = F.relu((weights * acts).sum(1, keepdim=True))
        cams = F.interpolate(cams, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cams.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
        self.activations = self.gradients = None
        return cams / peak, logits.detach().softmax(1)


@torch.no_grad()
def capture_activations(
    model: nn.Module, x: torch.Tensor, layers: list[str]
) -> dict[str, torch.Tensor]:
    """Outputs of the named modules for batch x (one forward pass)."""
    captured: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda m, i, out, name=name: captured.__setitem__(name, out.detach())
        )
        for name in layers
    ]
    try:
        model.eval()
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first convolution that sees the RGB input: its kernels are worth looking at."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return module
    raise ValueError("no Conv2d with 3 input channels in the model")


def gradcam_layer(model: nn.Module, x: torch.Tensor, layers: list[str]) -> str:
    """The deepest of `layers` whose output still has a spatial grid (at least 2x2).

    Grad-CAM's usual target is the last conv stage, but at small inputs (a 32 px image through
    a stride-32 net) that stage is 1x1 and its map carries no "where"; one stage up does.
    """
    acts = capture_activations(model, x[:1], layers)
    for name in reversed(layers):
        out = acts[name]
        if out.ndim == 4 and min(out.shape[-2:]) >= 2:
            return name
    return layers[-1]
