import numpy as np
import pytest
from sklearn.metrics import classification_report as sk_report
from sklearn.metrics import confusion_matrix as sk_confusion

from pipeline.evaluation.metrics import (
    accuracy,
    classification_report,
    confusion_matrix,
    format_report,
    per_class_scores,
    summarize,
)


@pytest.fixture
def labels():
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 4, 200)
    preds = np.where(rng.random(200) < 0.7, targets, rng.integers(0, 4, 200))
    preds[preds == 3] = 2  # class 3 never predicted: precision undefined -> 0
    return targets, preds


def test_confusion_matrix_matches_sklearn(labels):
    targets, preds = labels
    np.testing.assert_array_equal(
        confusion_matrix(targets, preds, 4), sk_confusion(targets, preds, labels=range(4))
    )


def test_report_matches_sklearn(labels):
    targets, preds = labels
    names = ["a", "b", "c", "d"]
    ours = classification_report(confusion_matrix(targets, preds, 4), names)
    theirs = sk_report(
        targets, preds, labels=range(4), target_names=names, output_dict=True, zero_division=0
    )
    for key in [*names, "macro avg", "weighted avg"]:
        for metric in ("precision", "recall", "f1-score", "support"):
            assert ours[key][metric] == pytest.approx(theirs[key][metric]), (key, metric)
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"])
    text = format_report(ours)
    assert "macro avg" in text and "accuracy" in text and text.count("\n") >= 8


def test_summary_and_edge_cases():
    cm = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 3)
    assert accuracy(cm) == pytest.approx(2 / 3)
    scores = per_class_scores(cm)
    assert scores["f1"][2] == 0.0  # class with no support and no predictions
    assert summarize(np.array([0, 1]), np.array([0, 1]), 2) == {"acc": 1.0, "f1_macro": 1.0}
    assert accuracy(np.zeros((2, 2), dtype=int)) == 0.0
