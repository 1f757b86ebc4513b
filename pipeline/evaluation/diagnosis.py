"""Learning-curve diagnosis in plain words, and the run's `report.md`.

Pure functions of the per-epoch history (train/val loss and accuracy): the same signals a
person reads off the learning curves, with the thresholds named so they can be argued with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GAP = 0.05  # train/acc - val/acc above this (5 points) is an overfitting signal
RISE = 0.05  # val/loss this far (5%) above its minimum at the end means it turned upward
LOW_ACC = 0.80  # train/acc below this means the model does not fit even its training data
STILL_FALLING = 0.01  # val/loss improved by > 1% in the last epoch: training stopped too soon


@dataclass
class Diagnosis:
    verdict: str  # overfitting | underfitting | good fit
    findings: list[str]  # one plain sentence per signal, most important first


def diagnose(history: list[dict[str, float]]) -> Diagnosis:
    if not history:
        return Diagnosis("unknown", ["No epochs were recorded, so there is nothing to diagnose."])
    train_loss = [h["train/loss"] for h in history]
    val_loss = [h["val/loss"] for h in history]
    last = history[-1]
    n = len(history)
    best = min(range(n), key=val_loss.__getitem__)
    gap = last["train/acc"] - last["val/acc"]
    findings: list[str] = []
    over = under = False

    rise = val_loss[-1] / max(val_loss[best], 1e-12) - 1
    if best < n - 1 and rise > RISE and train_loss[-1] < train_loss[best]:
        over = True
        findings.append(
            f"Validation loss rose {rise:.0%} from its minimum {val_loss[best]:.4f} (epoch "
            f"{best + 1}) to {val_loss[-1]:.4f} (epoch {n}) while training loss kept falling "
            f"({train_loss[best]:.4f} -> {train_loss[-1]:.4f}): the model is overfitting; "
            "early stopping keeps the best epoch's weights."
        )
    if gap > GAP:
        over = True
        findings.append(
            f"Training accuracy {last['train/acc']:.3f} is {gap * 100:.1f} points above "
            f"validation accuracy {last['val/acc']:.3f}: it fits the training images better "
            "than new ones (overfitting signal). More data, stronger augmentation, weight decay "
            "or dropout, or freezing more of the backbone narrow the gap."
        )
    elif gap < -GAP:
        findings.append(
            f"Validation accuracy {last['val/acc']:.3f} is above training accuracy "
            f"{last['train/acc']:.3f}: augmentation (and dropout) make the training batches "
            "harder than validation, so there is no sign of overfitting."
        )
    else:
        findings.append(
            f"Training and validation accuracy are close ({last['train/acc']:.3f} vs "
            f"{last['val/acc']:.3f}, gap {gap * 100:+.1f} points): no overfitting gap."
        )
    if last["train/acc"] < LOW_ACC and not over:
        under = True
        findings.insert(
            0,
            f"Training accuracy is only {last['train/acc']:.3f} and both losses stay high "
            f"(train {train_loss[-1]:.4f}, val {val_loss[-1]:.4f}): the model underfits, it "
            "does not fit even the training data. Train longer, raise the learning rate, "
            "unfreeze more of the backbone (finetune=full) or use a larger model.",
        )
    if n >= 2 and best == n - 1 and val_loss[-2] - val_loss[-1] > STILL_FALLING * val_loss[-2]:
        findings.append(
            f"Validation loss was still falling at the last epoch ({val_loss[-2]:.4f} -> "
            f"{val_loss[-1]:.4f}): more epochs would likely help."
        )
    if n < 3:
        findings.append(f"Only {n} epoch(s): too few to see a trend in the curves.")
    verdict = "overfitting" if over else "underfitting" if under else "good fit"
    return Diagnosis(verdict, findings)


def render_report(
    title: str,
    history: list[dict[str, float]],
    metrics: dict[str, float] | None = None,
    best_epoch: int | None = None,
    sections: list[str] | None = None,
) -> str:
    """Markdown: diagnosis, headline metrics, `sections` (markdown lines, e.g. the baseline
    comparison) and the per-epoch table."""
    diagnosis = diagnose(history)
    lines = [f"# {title}", "", f"## Learning curves: {diagnosis.verdict}", ""]
    lines += [f"- {finding}" for finding in diagnosis.findings]
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in metrics.items()]
    if sections:
        lines += ["", *sections]
    if history:
        lines += [
            "",
            "## Per epoch",
            "",
            "| epoch | train/loss | train/acc | val/loss | val/acc |",
            "|---|---|---|---|---|",
        ]
        for i, h in enumerate(history):
            mark = " (best)" if i == best_epoch else ""
            lines.append(
                f"| {i + 1}{mark} | {h['train/loss']:.4f} | {h['train/acc']:.4f} | "
                f"{h['val/loss']:.4f} | {h['val/acc']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def write_report(
    path: Path, title: str, history, metrics=None, best_epoch=None, sections=None
) -> Path:
    Path(path).write_text(render_report(title, history, metrics, best_epoch, sections))
    return Path(path)
