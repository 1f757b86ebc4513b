"""Label-issue candidates: images whose given label an out-of-fold linear probe doubts.

A logistic regression on the frozen backbone's features, cross-validated so that every image
is scored by a probe that never saw it; cleanlab's confident learning then picks the images
whose given label is unlikely under those probabilities (Northcutt et al., 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError


@dataclass
class LabelIssues:
    probs: np.ndarray  # (N, C) out-of-fold predicted probabilities
    quality: np.ndarray  # (N,) cleanlab's self-confidence: the probability of the given label
    issues: np.ndarray  # indices cleanlab flags, least likely label first
    folds: int  # the folds actually used (fewer when a class is small)

    @property
    def suggested(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def out_of_fold_probs(
    features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, seed: int
) -> tuple[np.ndarray, int]:
    """(N, C) probabilities, each from a probe trained on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(labels, minlength=num_classes)[np.unique(labels)].min())
    folds = min(folds, smallest)
    if folds < 2:
        raise ConfigError("the label check needs 2 or more images of every class")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(probe, features, labels, cv=cv, method="predict_proba")
    full = np.zeros((len(labels), num_classes))
    full[:, np.unique(labels)] = probs  # classes absent from the data keep probability 0
    return full, folds


def find_label_issues(
    features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, seed: int
) -> LabelIssues:
    try:
        from cleanlab.filter import find_label_issues as cleanlab_find
        from cleanlab.rank import get_label_quality_scores
    except ImportError as exc:
        raise ConfigError(
            "stage=inspect's label check needs cleanlab: pip install -e '.[health]'"
        ) from exc
    probs, used = out_of_fold_probs(features, labels, num_classes, folds, seed)
    present = np.unique(labels)
    # cleanlab wants labels 0..K-1 of the classes present.
    dense = np.searchsorted(present, labels)
    probs_present = probs[:, present] / probs[:, present].sum(axis=1, keepdims=True)
    # n_jobs=1: cleanlab's process pool ends its workers with SIGTERM, which the run's
    # SIGTERM handler (inherited by the forked workers) would report as an interrupt.
    issues = cleanlab_find(
        dense, probs_present, return_indices_ranked_by="self_confidence", n_jobs=1
    )
    quality = get_label_quality_scores(dense, probs_present, method="self_confidence")
    return LabelIssues(probs, quality, np.asarray(issues, dtype=np.int64), used)
