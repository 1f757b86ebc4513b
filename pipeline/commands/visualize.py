"""stage=visualize: look inside a trained run's model.

Writes and logs (in a run nested under the training run): the first layer's kernels, feature
maps of chosen layers for one image (`input=<image>`, default the first test image), and
Grad-CAM overlays for a few test images, as a grid and one PNG per image at input size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.commands.trained_run import linked_run, load_trained
from pipeline.config import RunConfig
from pipeline.errors import ConfigError, DataError
from pipeline.evaluation.gradcam import (
    GradCAM,
    capture_activations,
    feature_layers,
    first_conv,
    gradcam_layer,
)
from pipeline.evaluation.visualize import overlay, plot_feature_maps, plot_gradcam, plot_kernels
from pipeline.tracking.store import check_store


@dataclass
class VisualizeResult:
    run_id: str | None
    kernels: Path
    feature_maps: Path
    gradcam: Path
    overlays: list[Path]  # one per image, at the model's input size
    target_layer: str


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def run_visualize(cfg: RunConfig, out_dir: Path) -> VisualizeResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_store(cfg.tracking)  # a bad tracking.uri fails before the model loads
    trained = load_trained(cfg, out_dir)
    model, names, viz = trained.model, trained.class_names, cfg.visualize
    stages = feature_layers(model.backbone)
    layers = viz.layers or stages
    for layer in layers:
        try:
            model.backbone.get_submodule(layer)
        except AttributeError:
            raise ConfigError(
                f"visualize.layers: no module {layer!r} in {trained.cfg.backbone.name} "
                f"(its stages: {', '.join(stages)})"
            ) from None

    test = trained.splits().test
    picks = np.unique(np.linspace(0, len(test) - 1, min(viz.num_images, len(test))).round())
    images = [trained.load_image(test.items[int(i)]) for i in picks]
    labels = [names[test.labels[int(i)]] for i in picks]

    kernels = plot_kernels(
        first_conv(model).weight.detach().float().cpu().numpy(), out_dir / "first_layer_kernels.png"
    )

    if cfg.input and not Path(cfg.input).expanduser().is_file():
        raise DataError(f"input={cfg.input} is not an image file")
    image = trained.load_image(str(Path(cfg.input).expanduser())) if cfg.input else images[0]
    x = trained.to_input(torch.from_numpy(image)[None])
    acts = capture_activations(model, x, [f"backbone.{name}" for name in layers])
    maps = {}
    for name in layers:
        out = acts[f"backbone.{name}"]
        if out.ndim != 4:
            raise ConfigError(
                f"visualize.layers: {name!r} outputs shape {tuple(out.shape)}, not feature maps"
            )
        maps[name] = out[0].float().cpu().numpy()
    feature_maps = plot_feature_maps(image, maps, viz.channels, out_dir / "feature_maps.png")

    batch = trained.to_input(torch.from_numpy(np.stack(images)))
    target = gradcam_layer(model, batch, [f"backbone.{name}" for name in stages])
    cam_maps, class_probs = GradCAM(model, target)(batch)
    cams, probs = cam_maps.cpu().numpy(), class_probs.cpu().numpy()
    titles, overlays = [], []
    (out_dir / "gradcam").mkdir(exist_ok=True)
    for i, (img, cam, p, true) in enumerate(zip(images, cams, probs, labels, strict=True)):
        pred = names[int(p.argmax())]
        titles.append(f"true {true}\npred {pred} ({p.max():.2f})")
        path = out_dir / "gradcam" / f"{i:02d}_true-{_safe(true)}_pred-{_safe(pred)}.png"
        Image.fromarray(overlay(img, cam)).save(path)
        overlays.append(path)
    grid = plot_gradcam(images, list(cams), titles, out_dir / "gradcam.png")

    with linked_run(cfg, trained, "visualize") as run:
        run.log_params(
            {"source": trained.source, "gradcam.layer": target, "visualize.layers": layers}
        )
        for path in (kernels, feature_maps, grid):
            run.log_artifact(path)
        for path in overlays:
            run.log_artifact(path, "gradcam")
    print(f"visualized {trained.source}: Grad-CAM on {target}, feature maps of {', '.join(layers)}")
    for path in (kernels, feature_maps, grid, out_dir / "gradcam"):
        print(f"  {path}")
    if run.run_id:
        print(f"logged to run {run.run_id}")
    return VisualizeResult(run.run_id, kernels, feature_maps, grid, overlays, target)
