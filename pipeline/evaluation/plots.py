"""PNG figures for the run report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed, safe in workers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path) -> Path:
    plt = _pyplot()
    n = len(class_names)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (accuracy {np.trace(cm) / max(cm.sum(), 1):.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_learning_curves(
    history: list[dict[str, float]], path: Path, best_epoch: int | None = None
) -> Path:
    """Loss and accuracy per epoch, train vs val: the under/overfitting diagnosis at a glance."""
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(
                epochs, [h[f"{split}/{metric}"] for h in history], style, label=split, markersize=3
            )
        if best_epoch is not None and best_epoch >= 0:
            ax.axvline(best_epoch + 1, color="grey", linestyle="--", linewidth=1, label="best")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
