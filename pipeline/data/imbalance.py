"""Class imbalance: inverse-frequency loss weights and per-sample weights for a sampler."""

from __future__ import annotations

import numpy as np


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes)


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """w_c = N / (C * n_c): 1 for every class when balanced, and the expected per-sample
    weight stays 1, so the loss keeps its scale. A class absent from `labels` gets 0."""
    counts = class_counts(labels, num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


def balanced_sample_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-sample weights under which every class is drawn equally often."""
    return inverse_frequency_weights(labels, num_classes)[labels]
