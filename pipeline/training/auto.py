"""`finetune=auto`: pick the transfer strategy from the data, and say why.

The rule of thumb (small data whose classes ImageNet features already separate: train the
head only; data the features do not fit, or plenty of it: fine-tune everything) made
measurable with two numbers: images per class, and the validation accuracy of a linear
probe on the frozen backbone's features (a logistic regression on features extracted once,
seconds on a CPU for a few thousand images). The thresholds come from the measurements in
docs/backbones-and-finetuning.md ("finetune=auto").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A probe this good leaves fine-tuning little to gain, and a small set much to overfit.
PROBE_FITS = 0.95
# From this many training images per class on, fine-tuning everything is the safe default.
MANY_PER_CLASS = 1000


@dataclass(frozen=True)
class AutoChoice:
    finetune: dict[str, Any]  # FinetuneConfig fields to set
    optim: dict[str, Any] = field(default_factory=dict)  # OptimConfig fields to set
    other: dict[str, Any] = field(default_factory=dict)  # other settings, by dotted key
    reason: str = ""
    images_per_class: float = 0.0
    probe_acc: float | None = None

    def params(self) -> dict[str, Any]:
        """What a run logs about the choice, as `finetune.auto.*` params."""
        return {
            "finetune.auto.strategy": self.finetune["strategy"],
            "finetune.auto.images_per_class": round(self.images_per_class, 1),
            "finetune.auto.probe_acc": "" if self.probe_acc is None else round(self.probe_acc, 4),
            "finetune.auto.changes": ", ".join(
                [
                    *(
                        f"{group}.{k}={v}"
                        for group, changes in (("finetune", self.finetune), ("optim", self.optim))
                        for k, v in changes.items()
                    ),
                    *(f"{k}={v}" for k, v in self.other.items()),
                ]
            ),
            "finetune.auto.reason": self.reason,
        }


def choose_finetune(n_train: int, n_classes: int, probe_acc: float | None) -> AutoChoice:
    """The strategy for `n_train` training images of `n_classes` classes whose frozen
    features a linear probe classifies with `probe_acc` on val (None: not measured). Pure."""
    per_class = n_train / max(n_classes, 1)
    facts = f"{per_class:.0f} train images per class"
    if probe_acc is not None:
        facts += f", linear probe val/acc {probe_acc:.3f}"
    if per_class >= MANY_PER_CLASS:
        return AutoChoice(
            {"strategy": "full"},
            reason=f"full: {facts}; at >= {MANY_PER_CLASS} per class every layer can adapt "
            "without overfitting",
            images_per_class=per_class,
            probe_acc=probe_acc,
        )
    if probe_acc is not None and probe_acc >= PROBE_FITS:
        return AutoChoice(
            {"strategy": "frozen"},
            reason=f"frozen: {facts}; the pretrained features already separate the classes "
            f"(probe >= {PROBE_FITS}), and fine-tuning on so few images has more to overfit "
            "than to gain",
            images_per_class=per_class,
            probe_acc=probe_acc,
        )
    why = (
        f"the probe stays below {PROBE_FITS}: the features need adapting"
        if probe_acc is not None
        else "no probe measured"
    )
    # Few images: batch statistics of a few dozen of them stand in badly for ImageNet's, and
    # replacing them at every step shifts what each pretrained layer sees (digits, 3 seeds:
    # finetune.bn=eval lifted full fine-tuning from 0.87 to 0.97 test/acc).
    return AutoChoice(
        {"strategy": "full", "bn": "eval"},
        reason=f"full with finetune.bn=eval: {facts}; {why}, and so few images per class "
        "keep ImageNet's BatchNorm statistics",
        images_per_class=per_class,
        probe_acc=probe_acc,
    )


def probe_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    seed: int = 0,
) -> float:
    """Validation accuracy of a logistic regression on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
    )
    probe.fit(train_features, train_labels)
    return float(probe.score(val_features, val_labels))
