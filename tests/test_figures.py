"""The report figures read without zooming: what each one shows, checked on the figure itself
(its texts, titles, axes and colour bars), before it is saved."""

import math

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation import plots, visualize
from pipeline.evaluation.metrics import calibration_bins


@pytest.fixture
def figures(monkeypatch):
    """Keep each figure a plot function draws, and still write its PNG."""
    kept = []

    def save(fig, path):
        kept.append(fig)
        fig.savefig(path, dpi=plots.DPI)
        return path

    monkeypatch.setattr(plots, "_save", save)
    monkeypatch.setattr(visualize, "_save", save)
    yield kept
    plots._pyplot().close("all")


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts]


def _colorbars(fig) -> list:
    """The axes that hold a colour bar (matplotlib marks them whether it made them or not)."""
    return [ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


CM = np.array([[50, 0, 1, 0], [0, 48, 0, 0], [2, 0, 40, 1], [0, 0, 0, 45]])
NAMES = ["airplane", "bird", "cat", "dog"]


def test_confusion_matrix_shows_counts_and_shares_and_leaves_empty_cells_blank(figures, tmp_path):
    plots.plot_confusion_matrix(CM, NAMES, tmp_path / "cm.png")
    texts = _texts(figures[0])
    assert len(texts) == np.count_nonzero(CM)  # no annotation for the 9 empty cells
    assert not any("0.00" in t or t.startswith("0\n") for t in texts)
    assert "50\n98%" in texts and "1\n2%" in texts  # count, then its share of the true class
    assert "187 images, accuracy 97.9%" in figures[0].axes[0].get_title()
    assert len(_colorbars(figures[0])) == 1


def test_normalised_confusion_matrix_has_no_zero_noise(figures, tmp_path):
    cm = CM.copy()
    cm[0, 0] = 999  # one mistake in 1000: a share below 0.5% reads "<1%", not "0.00"
    visualize.plot_confusion_normalized(cm, NAMES, tmp_path / "cm.png")
    texts = _texts(figures[0])
    assert len(texts) == np.count_nonzero(cm)
    assert "<1%" in texts and "100%" in texts
    assert not any(t in ("0.00", "0%", "0") for t in texts)


def test_share_text():
    assert [plots.share_text(s) for s in (0, 0.004, 0.0051, 0.5, 1.0)] == [
        "",
        "<1%",
        "1%",
        "50%",
        "100%",
    ]


def test_learning_curves_have_an_lr_panel_and_the_run_name_in_the_title(figures, tmp_path):
    history = [
        {"train/loss": 1 / e, "val/loss": 1.2 / e, "train/acc": e / 4, "val/acc": e / 5, "lr": lr}
        for e, lr in zip((1, 2, 3, 4), (1e-3, 8e-4, 3e-4, 1e-5), strict=True)
    ]
    title = "Run lite0-frozen-folder-s42 (abc123): efficientnet_lite0 on folder"
    plots.plot_learning_curves(history, tmp_path / "lc.png", best_epoch=2, title=title)
    fig = figures[0]
    assert fig._suptitle.get_text() == title
    lr_axis = fig.axes[2]
    assert lr_axis.get_ylabel() == "learning rate" and lr_axis.get_yscale() == "log"
    np.testing.assert_allclose(lr_axis.lines[0].get_ydata(), [1e-3, 8e-4, 3e-4, 1e-5])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "best epoch (3), chosen on val" in legend
    assert list(fig.axes[0].get_xticks()) == [1, 2, 3, 4]  # whole epochs, not 1.5


def test_reliability_diagram_writes_each_bins_count(figures, tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=200)
    targets = rng.integers(0, 3, size=200)
    bins = calibration_bins(targets, probs)
    visualize.plot_reliability(bins, 0.1, tmp_path / "rel.png")
    fig = figures[0]
    filled = bins["count"][bins["count"] > 0].astype(int)
    assert sorted(int(t) for t in _texts(fig)) == sorted(filled.tolist())
    counts_axis = fig.axes[1]
    assert counts_axis.get_ylabel() == "images"
    assert sum(p.get_height() for p in counts_axis.patches) == 200
    assert "200 images" in fig.axes[0].get_title()


def test_gradcam_tiles_are_large_with_a_colour_bar(figures, tmp_path):
    images = [np.full((224, 224, 3), 120, np.uint8)] * 6
    cams = [np.linspace(0, 1, 224 * 224).reshape(224, 224)] * 6
    path = visualize.plot_gradcam(images, cams, ["true a\npred a (0.90)"] * 6, tmp_path / "g.png")
    bars = _colorbars(figures[0])
    assert len(bars) == 1 and "Grad-CAM" in bars[0].get_ylabel()
    with Image.open(path) as png:
        width, height = png.size
    # 4 pairs a row: each tile at least 250 px wide (it was 180 px in 8 columns)
    assert width / 4 >= 250 and height >= 2 * 2 * 250


def test_feature_maps_have_one_colour_bar_per_layer_and_wrap_at_8_channels(figures, tmp_path):
    maps = {"blocks.0": np.random.rand(16, 28, 28), "blocks.4": np.random.rand(4, 7, 7)}
    visualize.plot_feature_maps(np.zeros((56, 56, 3), np.uint8), maps, 16, tmp_path / "f.png")
    fig = figures[0]
    assert len(_colorbars(fig)) == 2
    assert "blocks.0: 16 channels of 28x28" in _texts(fig)
    images = [ax for ax in fig.axes if ax.images and ax not in _colorbars(fig)]
    assert len(images) == 1 + 16 + 4
    assert math.isclose(fig.get_size_inches()[0], 8 * 1.7 + 0.8)  # 8 columns, not 16


def test_lr_find_marks_and_writes_the_suggestion(figures, tmp_path):
    lrs = np.logspace(-6, 0, 50)
    losses = np.concatenate([np.linspace(2.3, 0.5, 40), np.linspace(0.6, 3, 10)])
    visualize.plot_lr_find(lrs, losses, losses, 1.2e-3, tmp_path / "lr.png")
    ax = figures[0].axes[0]
    assert ax.get_title() == "LR range test: suggested optim.lr=1.20e-03"
    assert "optim.lr=1.20e-03" in _texts(figures[0])
    marker = [line for line in ax.lines if line.get_marker() == "o"]
    assert marker and marker[0].get_xdata()[0] == pytest.approx(1.2e-3)
    visualize.plot_lr_find(lrs, losses, losses, math.nan, tmp_path / "none.png")
    assert "no suggestion" in figures[1].axes[0].get_title()
