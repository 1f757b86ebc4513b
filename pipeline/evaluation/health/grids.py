"""PNG grids of the top suspects, readable without zooming: duplicate pairs side by side,
label issues with the given and the suggested label."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from pipeline.data.decode import BAD_IMAGE_ERRORS, read_rgb
from pipeline.data.health.duplicates import DuplicatePair
from pipeline.evaluation.health.findings import Findings
from pipeline.evaluation.plots import _pyplot

CELL = 2.6  # inches per image: titles at 9 pt stay legible at 100 % zoom
PAIRS_PER_ROW = 2
ISSUES_PER_ROW = 4


def _thumb(item) -> np.ndarray:
    if not isinstance(item, str):
        return item
    try:
        return read_rgb(item, 256)  # JPEG draft decode: fast for large photos
    except BAD_IMAGE_ERRORS:
        return np.zeros((8, 8, 3), np.uint8)


def _show(ax, image: np.ndarray, title: str, colour: str = "black") -> None:
    small = max(image.shape[:2]) < 64  # digits, CIFAR: blocky pixels, not a blur
    ax.imshow(image, interpolation="nearest" if small else "antialiased")
    ax.set_title(title, fontsize=9, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])


def _wrap(path: str, width: int = 34) -> str:
    """A path on at most two lines, split at a '/' where it can be: the file's name whole."""
    folder, _, name = path.rpartition("/")
    lines = [folder + "/", name] if folder else [name]
    if any(len(line) > width for line in lines):
        lines = textwrap.wrap(path, width, break_on_hyphens=False)
    return "\n".join(lines[-2:])


def duplicate_grid(f: Findings, pairs: list[DuplicatePair], path: Path, title: str) -> Path | None:
    if not pairs:
        return None
    plt = _pyplot()
    rows = -(-len(pairs) // PAIRS_PER_ROW)
    cols = 2 * min(PAIRS_PER_ROW, len(pairs))
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(CELL * cols, (CELL + 0.8) * rows + 0.5),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat:
        ax.axis("off")
    index = {ref: i for i, ref in enumerate(f.refs)}
    for k, pair in enumerate(pairs):
        row, col = divmod(k, PAIRS_PER_ROW)
        colour = "firebrick" if pair.cross_split else "black"
        for side, ref in enumerate((pair.a, pair.b)):
            ax = axes[row, 2 * col + side]
            ax.axis("on")
            head = f"#{k + 1} sim {pair.similarity:.3f}" if side == 0 else f"#{k + 1} ({ref.label})"
            label = f"{head}\n{ref.split}: {_wrap(f.short(ref))}"
            _show(ax, _thumb(f.items[index[ref]]), label, colour)
    fig.suptitle(f"{title} (red: across splits)", fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def label_issue_grid(f: Findings, count: int, path: Path) -> Path | None:
    if f.labels is None or not len(f.labels.issues):
        return None
    plt = _pyplot()
    shown = f.labels.issues[:count]
    cols = min(ISSUES_PER_ROW, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(CELL * cols, (CELL + 0.9) * rows + 0.5),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat:
        ax.axis("off")
    for k, i in enumerate(shown):
        ax = axes.flat[k]
        ax.axis("on")
        ref = f.refs[i]
        suggested = f.class_names[f.labels.suggested[i]]
        label = (
            f"#{k + 1} given {ref.label} -> {suggested}\n"
            f"p(given) {f.labels.quality[i]:.2f}  {ref.split}\n{_wrap(f.short(ref))}"
        )
        _show(ax, _thumb(f.items[i]), label)
    fig.suptitle("Label-issue candidates: given label -> the probe's suggestion", fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
