"""Figures for looking at a trained model: kernels, feature maps, Grad-CAM, mistakes, calibration.

Every figure has a fixed size in pixels (figsize x dpi, no tight bbox), so callers and tests
know what they get. Images come in as uint8 HWC arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.evaluation.plots import _pyplot

DPI = 100


@dataclass
class VisualizeConfig:
    layers: list[str] = field(default_factory=list)  # backbone modules; []: every stage
    num_images: int = 8  # test images with Grad-CAM overlays
    channels: int = 16  # feature-map channels shown per layer

    def __post_init__(self) -> None:
        self.layers = list(self.layers)
        if self.num_images < 1 or self.channels < 1:
            raise ConfigError("visualize.num_images and visualize.channels must be >= 1")


def _grid(n: int, max_cols: int = 8) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_kernels(weight: np.ndarray, path: Path) -> Path:
    """First-layer kernels (out, 3, kh, kw) as small RGB tiles, each min-max scaled."""
    plt = _pyplot()
    n = weight.shape[0]
    rows, cols = _grid(n)
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, kernel in zip(axes.flat, weight, strict=False):
        k = kernel.transpose(1, 2, 0)
        ax.imshow((k - k.min()) / max(float(k.max() - k.min()), 1e-12), interpolation="nearest")
    fig.suptitle(f"first-layer kernels ({n} x {weight.shape[2]}x{weight.shape[3]})")
    return _save(fig, path)


def plot_feature_maps(
    image: np.ndarray, maps: dict[str, np.ndarray], channels: int, path: Path
) -> Path:
    """The input, then one row per layer: its first `channels` activation maps."""
    plt = _pyplot()
    cols = min(channels, max(m.shape[0] for m in maps.values()))
    rows = len(maps) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0, rows * 1.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("input", fontsize=7)
    for row, (name, fmap) in enumerate(maps.items(), start=1):
        for c in range(min(cols, fmap.shape[0])):
            axes[row, c].imshow(fmap[c], cmap="viridis")
        axes[row, 0].set_title(f"{name} {tuple(fmap.shape)}", fontsize=7, loc="left")
    return _save(fig, path)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Heat map (H, W) in [0, 1] blended over a uint8 RGB image of the same size."""
    plt = _pyplot()
    heat = plt.get_cmap("jet")(cam)[..., :3] * 255.0
    return (alpha * heat + (1 - alpha) * image.astype(np.float64)).round().astype(np.uint8)


def plot_gradcam(
    images: list[np.ndarray], cams: list[np.ndarray], titles: list[str], path: Path
) -> Path:
    """Pairs of (image, Grad-CAM overlay), one pair per column."""
    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 4.0), squeeze=False)
    for i, (image, cam, title) in enumerate(zip(images, cams, titles, strict=True)):
        axes[0, i].imshow(image)
        axes[0, i].set_title(title, fontsize=7)
        axes[1, i].imshow(overlay(image, cam))
        axes[0, i].axis("off")
        axes[1, i].axis("off")
    fig.suptitle("Grad-CAM: where the evidence for the predicted class is")
    return _save(fig, path)


def plot_image_grid(images: list[np.ndarray], titles: list[str], path: Path, title: str) -> Path:
    plt = _pyplot()
    rows, cols = _grid(max(len(images), 1), 6)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.2 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, text in zip(axes.flat, images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(text, fontsize=8)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.suptitle(title)
    return _save(fig, path)


def plot_confusion_normalized(cm: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix: each row shows where a true class's images went."""
    plt = _pyplot()
    n = len(class_names)
    size = max(4.0, 0.5 * n + 2)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color
                )
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix, normalised by true class (recall on the diagonal)")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(bins: dict, ece: float, path: Path) -> Path:
    """Accuracy vs confidence per bin; the diagonal is perfect calibration."""
    plt = _pyplot()
    edges = bins["edges"]
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = bins["count"] > 0
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar(
        centers[filled], bins["accuracy"][filled], width=width, edgecolor="black", label="accuracy"
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram (ECE {ece:.4f})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_lr_find(
    lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray, suggested: float, path: Path
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, alpha=0.3, label="loss")
    ax.plot(lrs, smoothed, label="smoothed")
    if math.isfinite(suggested):
        ax.axvline(suggested, color="red", linestyle="--", label=f"suggested {suggested:.2e}")
    if len(smoothed) and np.isfinite(smoothed[0]):
        # Divergence at the end would squash the interesting part: cap the axis.
        ax.set_ylim(0.9 * float(np.nanmin(losses)), 1.5 * float(smoothed[0]))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
