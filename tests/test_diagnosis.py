"""Learning-curve diagnosis, LR suggestion and calibration: pure functions on made-up numbers."""

import math

import numpy as np
import pytest

from pipeline.evaluation.diagnosis import diagnose, render_report
from pipeline.evaluation.metrics import calibration_bins, expected_calibration_error, topk_accuracy
from pipeline.training.lr_find import smooth, suggest_lr


def _history(train_loss, val_loss, train_acc, val_acc):
    return [
        {"train/loss": a, "val/loss": b, "train/acc": c, "val/acc": d}
        for a, b, c, d in zip(train_loss, val_loss, train_acc, val_acc, strict=True)
    ]


def test_overfitting_val_loss_rises_while_train_falls():
    history = _history(
        [1.0, 0.5, 0.2, 0.1, 0.05],
        [0.9, 0.6, 0.55, 0.7, 0.9],
        [0.7, 0.85, 0.95, 0.98, 0.99],
        [0.72, 0.82, 0.84, 0.83, 0.82],
    )
    result = diagnose(history)
    assert result.verdict == "overfitting"
    assert "Validation loss rose 64% from its minimum 0.5500 (epoch 3)" in result.findings[0]
    assert any("17.0 points above validation accuracy" in f for f in result.findings)


def test_underfitting_both_losses_high():
    history = _history([2.2, 2.1, 2.05], [2.2, 2.12, 2.08], [0.2, 0.25, 0.3], [0.22, 0.26, 0.29])
    result = diagnose(history)
    assert result.verdict == "underfitting"
    assert result.findings[0].startswith("Training accuracy is only 0.300")
    assert any("still falling" in f for f in result.findings)


def test_good_fit_small_gap_and_flat_val_loss():
    history = _history(
        [0.5, 0.2, 0.1, 0.09],
        [0.3, 0.15, 0.12, 0.1195],
        [0.9, 0.95, 0.97, 0.975],
        [0.93, 0.96, 0.965, 0.97],
    )
    result = diagnose(history)
    assert result.verdict == "good fit"
    assert result.findings == [
        "Training and validation accuracy are close (0.975 vs 0.970, gap +0.5 points): "
        "no overfitting gap."
    ]


def test_report_has_the_diagnosis_metrics_and_epochs():
    history = _history([1.0, 0.5], [0.9, 0.6], [0.7, 0.9], [0.72, 0.88])
    text = render_report("Run x", history, {"test/acc": 0.875}, best_epoch=1)
    assert text.startswith("# Run x\n\n## Learning curves: good fit")
    assert "| test/acc | 0.8750 |" in text
    assert "| 2 (best) | 0.5000 | 0.9000 | 0.6000 | 0.8800 |" in text
    assert "Only 2 epoch(s)" in text


def _sweep(curve, noise: float = 0.05, weight: float = 0.05):
    """A 100-step range test over 1e-6..1 on a made-up loss curve of log10(LR), noisy and
    smoothed as lr_range_test smooths it."""
    lrs = np.logspace(-6, 0, 100)
    losses = curve(np.log10(lrs)) + np.random.default_rng(0).normal(0, noise, len(lrs))
    return lrs, smooth(losses, weight)


def test_lr_suggestion_is_on_the_fall_near_its_steepest_point():
    # Flat, then a symmetric fall steepest at 1e-3, a minimum near 3e-2, then divergence.
    def curve(x):
        return 2.3 - 2.0 / (1 + np.exp(-3 * (x + 3))) + 50 * np.clip(10**x - 0.03, 0, None)

    lrs, smoothed = _sweep(curve)
    suggested = suggest_lr(lrs, smoothed)
    assert abs(np.log10(suggested / 1e-3)) < 0.5  # within half a decade of the steepest fall
    assert suggested < lrs[np.argmin(smoothed)] / 10
    assert math.isnan(suggest_lr(lrs, np.linspace(1, 3, 100)))  # loss only rises: no advice


def test_lr_suggestion_keeps_clear_of_a_minimum_at_the_edge_of_divergence():
    # The loss falls faster and faster up to 0.1 and blows up right after: the steepest fall
    # is the minimum itself, one step from divergence (the old rule suggested ~0.08 here).
    def curve(x):
        return np.where(x <= -1, 2.3 - 2.0 * 10 ** ((x + 1) / 1.5), 0.3 + 40 * (10**x - 0.1))

    lrs, smoothed = _sweep(curve)
    suggested = suggest_lr(lrs, smoothed)
    assert suggested < lrs[np.argmin(smoothed)] / 10
    assert curve(np.log10(suggested)) < 2.3 - 0.1  # the loss is already falling there


def test_ece_zero_when_confidence_matches_accuracy():
    # 10 predictions at confidence 0.8, 8 of them right: perfectly calibrated.
    probs = np.tile([0.8, 0.2], (10, 1))
    targets = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(targets, probs) == pytest.approx(0.0)
    # Same confidence, all wrong: ECE = |0 - 0.8|.
    assert expected_calibration_error(np.ones(10, int), probs) == pytest.approx(0.8)
    bins = calibration_bins(targets, probs, n_bins=10)
    assert bins["count"].sum() == 10 and bins["count"][7] == 10  # 0.8 lies in (0.7, 0.8]


def test_topk_accuracy():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    targets = np.array([1, 2, 0])
    assert topk_accuracy(targets, probs, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(targets, probs, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(targets, probs, 10) == 1.0
