"""Baselines a fine-tuned model has to beat, and how far a training run landed above them.

`stage=baseline` fits three on the training run's own split: the majority class, logistic
regression on raw pixels resized small, and a linear probe (logistic regression) on the
frozen backbone's features. Each choice (the regularisation C) is made on val; test is
scored once. The fits here are pure functions of arrays; `commands/baseline.py` gathers
the pixels and features and logs one MLflow run per baseline.

A training run then looks up the best baseline logged on the same split (the split's
digest, `Splits.digest`), or, when none is, scores the majority class on the spot.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.evaluation.config import KINDS as KINDS
from pipeline.evaluation.config import BaselineConfig as BaselineConfig
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.runs import client_and_experiment

SPLIT_DIGEST = "data.split_digest"  # the param that names a run's split


@dataclass
class BaselineFit:
    kind: str
    test_probs: np.ndarray  # (N test, C): what test/acc, test/f1_macro and test/loss score
    val_acc: float
    choice: str  # what was chosen on val (or fixed), in words
    params: dict[str, object]  # logged beside the config


def majority(
    train_labels: np.ndarray, val_labels: np.ndarray, n_test: int, classes: int
) -> BaselineFit:
    """Every image gets the train split's class frequencies: the argmax is the majority
    class, and the loss is what knowing only the class balance buys."""
    prior = np.bincount(train_labels, minlength=classes) / len(train_labels)
    top = int(prior.argmax())
    return BaselineFit(
        "majority",
        np.tile(prior, (n_test, 1)),
        float(np.mean(np.asarray(val_labels) == top)),
        f"class {top}",
        {"baseline.class": top},
    )


def pixel_features(images: list[np.ndarray], size: int, grey: bool) -> np.ndarray:
    """uint8 HWC RGB images -> (N, size*size*channels) float32, each resized with area
    averaging (a blur before subsampling, so the small image is not aliased)."""
    rows = []
    for image in images:
        small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        if grey:
            small = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        rows.append(small.reshape(-1))
    return np.stack(rows).astype(np.float32)


def logistic(
    kind: str,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test_x: np.ndarray,
    classes: int,
    cfg: BaselineConfig,
) -> BaselineFit:
    """Standardised features (train's mean and std), multinomial logistic regression for
    each C of cfg.c_grid on train, the C with the best val accuracy kept. No refit on
    train+val: a training run does not train on val either."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train[0])
    train_x, val_x, test_x = (scaler.transform(x) for x in (train[0], val[0], test_x))
    best = None
    for c in sorted(cfg.c_grid):
        with warnings.catch_warnings():  # max_iter bounds the cost; a C short of it is fine
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=cfg.max_iter).fit(train_x, train[1])
        acc = float(np.mean(model.predict(val_x) == val[1])) if len(val[1]) else 0.0
        if best is None or acc > best[0]:
            best = (acc, c, model)
    assert best is not None  # c_grid is never empty
    acc, c, model = best
    probs = np.zeros((len(test_x), classes))
    probs[:, model.classes_] = model.predict_proba(test_x)  # classes absent from train: 0
    return BaselineFit(kind, probs, acc, f"C={c:g}", {"baseline.C": c})


def cross_entropy(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean -log p(true class), as test/loss of a training run (a 0 probability is
    clipped to 1e-12 rather than giving inf)."""
    picked = probs[np.arange(len(targets)), np.asarray(targets, dtype=np.int64)]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


# --- a training run's comparison ---------------------------------------------------------


@dataclass
class BestBaseline:
    kind: str
    acc: float  # its test/acc
    source: str  # 'run <id>', or how it was scored on the spot


def majority_baseline(train_labels: np.ndarray, test_labels: np.ndarray) -> BestBaseline:
    """The cheap fallback: train's most frequent class, scored on test (no model, no run)."""
    top = np.bincount(train_labels).argmax()
    acc = float(np.mean(np.asarray(test_labels) == top))
    return BestBaseline("majority", acc, "scored on the spot; stage=baseline logs the others")


def find_best_baseline(tracking: TrackingConfig, split_digest: str) -> BestBaseline | None:
    """The finished baseline run with the highest test/acc on this very split, in this
    experiment; None when there is none (or tracking is off)."""
    if not tracking.enabled:
        return None
    client, experiment_id = client_and_experiment(tracking)
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.stage = 'baseline' and attributes.status = 'FINISHED' "
            f"and params.`{SPLIT_DIGEST}` = '{split_digest}'"
        ),
        order_by=["metrics.`test/acc` DESC"],
        max_results=1,
    )
    if not runs or "test/acc" not in runs[0].data.metrics:
        return None
    run = runs[0]
    return BestBaseline(
        run.data.tags.get("baseline", "?"), run.data.metrics["test/acc"], f"run {run.info.run_id}"
    )


def baseline_metrics(test_acc: float, best: BestBaseline) -> dict[str, float]:
    return {"baseline/best_acc": best.acc, "test/acc_over_baseline": test_acc - best.acc}


def baseline_lines(test_acc: float, best: BestBaseline) -> list[str]:
    """report.md's section: the margin in points, and a warning when there is none."""
    margin = (test_acc - best.acc) * 100
    said = f"the best baseline, {best.kind} (test/acc {best.acc:.4f}; {best.source})"
    if margin > 0:
        verdict = f"test/acc {test_acc:.4f} is **{margin:.1f} points above** {said}."
    else:
        verdict = (
            f"**Warning: test/acc {test_acc:.4f} did not beat** {said} ({margin:+.1f} points): "
            "this fine-tuning learned nothing a trivial model does not; check the data, "
            "the learning rate and the number of epochs."
        )
    return ["## Baseline", "", verdict]
