"""PNG figures for the run report (matplotlib, headless).

Sized to be read without zooming: text at 9 pt or more, matrix annotations that scale with
the number of classes, and no "0.00" noise in empty cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 100  # figure sizes below are in inches: pixels = inches x DPI


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed, safe in workers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def share_text(share: float) -> str:
    """A row share for a matrix cell: '' for an empty cell, never '0.00' for a non-empty one."""
    if share == 0:
        return ""
    return "<1%" if share < 0.005 else f"{share:.0%}"


def draw_matrix(ax, cm: np.ndarray, class_names: list[str], counts: bool) -> list[str]:
    """Row-normalised colours; each non-empty cell annotated with its count and row share
    (`counts`) or its share alone; empty cells stay blank. Returns the annotation texts."""
    n = len(class_names)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    texts = []
    if n <= 30:
        fontsize = max(6.0, min(13.0, 110 / n))
        for i in range(n):
            for j in range(n):
                if cm[i, j] == 0:
                    continue
                text = share_text(norm[i, j])
                if counts:  # the share below the count while there is room for two lines
                    text = f"{cm[i, j]}\n{text}" if n <= 15 else str(cm[i, j])
                texts.append(text)
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
        tilted = n * max(len(name) for name in class_names) > 40  # would the names collide?
        ax.set_xticks(
            range(n), class_names, rotation=45 if tilted else 0, ha="right" if tilted else "center"
        )
        ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return texts


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path) -> Path:
    """Counts (with each row's share below them), coloured by the share of the true class."""
    plt = _pyplot()
    n = len(class_names)
    size = max(5.0, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    draw_matrix(ax, cm, class_names, counts=True)
    fig.colorbar(ax.images[0], ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    total = max(int(cm.sum()), 1)
    ax.set_title(f"confusion matrix: {total} images, accuracy {np.trace(cm) / total:.1%}")
    fig.tight_layout()
    return _save(fig, path)


def plot_learning_curves(
    history: list[dict[str, float]],
    path: Path,
    best_epoch: int | None = None,
    title: str | None = None,
) -> Path:
    """Loss and accuracy per epoch, train vs val, and the learning rate each epoch used:
    the under/overfitting diagnosis at a glance, with the schedule that shaped it."""
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, metric in zip(axes, ("loss", "acc"), strict=False):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(
                epochs, [h[f"{split}/{metric}"] for h in history], style, label=split, markersize=4
            )
        ax.set_ylabel(metric)
    lrs = [h.get("lr", np.nan) for h in history]
    axes[2].plot(epochs, lrs, "-o", color="tab:green", markersize=4, label="peak LR")
    if all(np.isfinite(lr) and lr > 0 for lr in lrs) and lrs:
        axes[2].set_yscale("log")
    axes[2].set_ylabel("learning rate")
    axes[2].set_title("learning rate (the highest any step of the epoch used)", fontsize=10)
    for ax in axes:
        if best_epoch is not None and best_epoch >= 0:
            ax.axvline(
                best_epoch + 1,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"best epoch ({best_epoch + 1}), chosen on val",
            )
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    if len(epochs) <= 20:
        for ax in axes:
            ax.set_xticks(epochs)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, path)
