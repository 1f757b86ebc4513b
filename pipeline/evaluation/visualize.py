"""Figures for looking at a trained model: kernels, feature maps, Grad-CAM, mistakes, calibration.

Every figure has a fixed size in pixels (figsize x dpi, no tight bbox), so callers and tests
know what they get. Images come in as uint8 HWC arrays.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.evaluation.config import VisualizeConfig as VisualizeConfig
from pipeline.evaluation.plots import _pyplot, _save, draw_matrix


def _grid(n: int, max_cols: int = 8) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


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


FEATURE_COLS = 8  # channels per row of the feature-map figure: tiles stay large


def plot_feature_maps(
    image: np.ndarray, maps: dict[str, np.ndarray], channels: int, path: Path
) -> Path:
    """The input, then each layer's first `channels` activation maps (8 a row), on one colour
    scale per layer, so its channels compare, with that scale's colour bar."""
    plt = _pyplot()
    shown = {name: fmap[: min(channels, fmap.shape[0])] for name, fmap in maps.items()}
    cols = min(FEATURE_COLS, max(len(s) for s in shown.values()))
    layer_rows = [math.ceil(len(s) / cols) for s in shown.values()]
    rows = 1 + sum(layer_rows)
    fig, axes = plt.subplots(
        rows,
        cols + 1,
        figsize=(cols * 1.7 + 0.8, rows * 1.95 + 0.5),
        squeeze=False,
        gridspec_kw={"width_ratios": [1] * cols + [0.08]},
    )
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("input", fontsize=10)
    row = 1
    for (name, fmap), n_rows in zip(shown.items(), layer_rows, strict=True):
        low, high = float(fmap.min()), float(fmap.max())
        mapped = None
        for c, channel in enumerate(fmap):
            ax = axes[row + c // cols, c % cols]
            mapped = ax.imshow(
                channel, cmap="viridis", vmin=low, vmax=high, interpolation="nearest"
            )
            ax.set_title(f"ch {c}", fontsize=9)
        full = maps[name].shape
        axes[row, 0].text(  # above the channel titles of the layer's first row
            0,
            1.22,
            f"{name}: {full[0]} channels of {full[1]}x{full[2]}",
            transform=axes[row, 0].transAxes,
            fontsize=10,
            fontweight="bold",
            va="bottom",
        )
        bar = axes[row, -1]
        bar.axis("on")
        fig.colorbar(mapped, cax=bar)
        bar.tick_params(labelsize=8)
        row += n_rows
    fig.suptitle("feature maps: one colour scale per layer (bar on the right)", fontsize=12)
    fig.subplots_adjust(left=0.02, right=0.94, top=1 - 0.5 / (rows * 1.95 + 0.5), bottom=0.01)
    fig.subplots_adjust(hspace=0.6, wspace=0.08)
    return _save(fig, path)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Heat map (H, W) in [0, 1] blended over a uint8 RGB image of the same size."""
    plt = _pyplot()
    heat = plt.get_cmap("jet")(cam)[..., :3] * 255.0
    return (alpha * heat + (1 - alpha) * image.astype(np.float64)).round().astype(np.uint8)


def plot_gradcam(
    images: list[np.ndarray], cams: list[np.ndarray], titles: list[str], path: Path
) -> Path:
    """Pairs of (image, Grad-CAM overlay), one pair per column, 4 columns a row, with the
    heat map's colour bar (0: no evidence, 1: the image's strongest)."""
    plt = _pyplot()
    n = len(images)
    cols = min(n, 4)
    pairs = math.ceil(n / cols)
    fig, axes = plt.subplots(
        2 * pairs, cols, figsize=(3.0 * cols + 1.2, 6.4 * pairs + 0.6), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, (image, cam, title) in enumerate(zip(images, cams, titles, strict=True)):
        top, bottom = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        top.imshow(image)
        top.set_title(title, fontsize=10)
        bottom.imshow(overlay(image, cam))
    heat = plt.cm.ScalarMappable(cmap="jet", norm=plt.Normalize(0, 1))
    bar = fig.colorbar(heat, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    bar.set_label("Grad-CAM (1 = strongest evidence in the image)", fontsize=10)
    fig.suptitle("Grad-CAM: where the evidence for the predicted class is", fontsize=13)
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
    size = max(5.0, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    draw_matrix(ax, cm, class_names, counts=False)
    fig.colorbar(ax.images[0], ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title("confusion matrix, share of each true class\n(recall on the diagonal)")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(bins: dict, ece: float, path: Path) -> Path:
    """Accuracy vs confidence per bin (the diagonal is perfect calibration), each bar labelled
    with its image count, and the counts again below: a bin of 2 images proves little."""
    plt = _pyplot()
    edges, count = bins["edges"], bins["count"]
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    filled = count > 0
    fig, (ax, below) = plt.subplots(
        2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.bar(
        centers[filled], bins["accuracy"][filled], width=width, edgecolor="black", label="accuracy"
    )
    ax.plot(
        bins["confidence"][filled],
        bins["accuracy"][filled],
        "o",
        color="tab:orange",
        markersize=4,
        label="mean confidence of the bin",
    )
    for x, n in zip(centers[filled], count[filled], strict=True):  # at the foot of each bar
        ax.text(  # white boxes: readable on a bar and on an empty (0 accuracy) one
            x,
            0.015,
            f"{int(n)}",
            ha="center",
            va="bottom",
            fontsize=9,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.85},
        )
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"reliability diagram: ECE {ece:.4f}, {int(count.sum())} images\n"
        "(the number at the foot of a bar: images in that bin)"
    )
    ax.legend(loc="upper left", fontsize=9)
    below.bar(centers, count, width=width, edgecolor="black", color="tab:grey")
    below.set_ylabel("images")
    below.set_xlabel("confidence (top-1 probability)")
    below.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)


def plot_lr_find(
    lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray, suggested: float, path: Path
) -> Path:
    """Loss vs LR, with the suggested LR marked on the smoothed curve and written out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(lrs, losses, alpha=0.3, label="loss per step")
    ax.plot(lrs, smoothed, label="smoothed loss")
    if math.isfinite(suggested):
        at = int(np.argmin(np.abs(np.log(lrs) - math.log(suggested))))
        ax.axvline(suggested, color="red", linestyle="--", linewidth=1)
        ax.plot(
            [suggested],
            [smoothed[at]],
            "o",
            color="red",
            markersize=9,
            label=f"suggested optim.lr={suggested:.2e}",
        )
        ax.annotate(
            f"optim.lr={suggested:.2e}",
            (suggested, smoothed[at]),
            xytext=(10, 18),
            textcoords="offset points",
            color="red",
            fontsize=11,
        )
        title = f"LR range test: suggested optim.lr={suggested:.2e}"
    else:
        title = "LR range test: no suggestion (the loss never fell)"
    if len(smoothed) and np.isfinite(smoothed[0]):
        # Divergence at the end would squash the interesting part: cap the axis.
        ax.set_ylim(0.9 * float(np.nanmin(losses)), 1.5 * float(smoothed[0]))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
