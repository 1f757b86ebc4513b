"""Backbone screening: which pretrained features separate *these* classes best, per second?

A linear probe (standardised features, logistic regression) cross-validated over stratified
folds of train+val ranks frozen backbones in seconds per backbone on a CPU: the features
are computed once, and the probe is the `finetune=frozen head=linear` model without the
epochs. The test split is never read, so screening leaves it untouched for the run chosen.

Pure functions: which backbones to try, the probe, the table, the plot and the words.
Extraction and tracking live in `pipeline/commands/screen.py`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.models.weights import OFFLINE_FIXES

SCRATCH = "scratch"


@dataclass(frozen=True)
class Candidate:
    """One backbone to screen: `label` as the user wrote it (or the conf/backbone option)."""

    label: str
    name: str  # the timm model name
    pretrained: bool = True
    weights: str | None = None  # a local file, as backbone.weights
    option: str | None = None  # the conf/backbone option, when the label names one

    @property
    def override(self) -> str:
        """The command-line override that trains this backbone."""
        chosen = f"backbone={self.option}" if self.option else f"backbone.name={self.name}"
        if not self.pretrained:
            chosen += " backbone.pretrained=false"
        if self.weights:
            chosen += f" backbone.weights={self.weights}"
        return chosen


def parse_candidate(entry: str, options: dict[str, str]) -> Candidate:
    """'resnet50', 'resnet50@scratch', 'resnet50@/models/r50.pth'; `options` maps a
    conf/backbone option to its timm name (efficientnet_lite0 -> tf_efficientnet_lite0)."""
    base, _, suffix = entry.partition("@")
    name = options.get(base, base)
    option = base if base in options else None
    if suffix == SCRATCH:
        return Candidate(entry, name, pretrained=False, option=option)
    if suffix:
        return Candidate(f"{base}@{Path(suffix).name}", name, weights=suffix, option=option)
    return Candidate(entry, name, option=option)


def default_candidates(
    options: dict[str, str], backbone_name: str, backbone_weights: str | None
) -> list[Candidate]:
    """Every conf/backbone option, and the configured backbone if it is none of them;
    backbone.weights goes with the configured backbone. The caller skips those whose
    weights are not here."""
    candidates = [
        Candidate(
            option, name, weights=backbone_weights if name == backbone_name else None, option=option
        )
        for option, name in options.items()
    ]
    if backbone_name not in options.values():
        candidates.append(Candidate(backbone_name, backbone_name, weights=backbone_weights))
    return candidates


def probe_fold_accuracies(
    features: np.ndarray, labels: np.ndarray, folds: int, seed: int
) -> list[float]:
    """Held-out accuracy of a logistic-regression probe on each of `folds` stratified folds.

    Standardised first: pooled features of different backbones differ in scale by orders of
    magnitude, and one regularisation strength should mean the same for all of them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    check_fold_sizes(labels, folds)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    accuracies = []
    for train_idx, test_idx in splitter.split(features, labels):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(features[train_idx], labels[train_idx])
        accuracies.append(float(probe.score(features[test_idx], labels[test_idx])))
    return accuracies


def check_fold_sizes(labels: np.ndarray, folds: int) -> None:
    """Every fold needs an image of every class to be stratified."""
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if counts.min() < folds:
        raise DataError(
            f"screen.folds={folds} needs at least {folds} train+val images per class, the "
            f"smallest class has {counts.min()}: lower screen.folds"
        )


# --- results --------------------------------------------------------------------------------


@dataclass
class ScreenRow:
    candidate: Candidate
    weights_source: str = ""
    img_size: int = 0
    params: int = 0
    feature_dim: int = 0
    fold_accuracies: list[float] = field(default_factory=list)
    extract_seconds: float = math.nan
    images: int = 0
    skipped: str = ""  # why it was not screened (the one-line error), else ""

    @property
    def acc_mean(self) -> float:
        return float(np.mean(self.fold_accuracies)) if self.fold_accuracies else math.nan

    @property
    def acc_std(self) -> float:
        accs = self.fold_accuracies
        return float(np.std(accs, ddof=1)) if len(accs) > 1 else math.nan

    @property
    def img_per_s(self) -> float:
        return self.images / self.extract_seconds if self.extract_seconds > 0 else math.nan


def ranked(rows: list[ScreenRow]) -> list[ScreenRow]:
    """Screened rows, best probe accuracy first (ties: the faster), then the skipped ones."""
    done = sorted(
        (r for r in rows if not r.skipped), key=lambda r: (-r.acc_mean, -(r.img_per_s or 0))
    )
    return done + [r for r in rows if r.skipped]


HEADER = (
    "backbone",
    "weights",
    "input px",
    "params (M)",
    "feature dim",
    "probe acc (mean ± std over folds)",
    "extract s",
    "img/s",
)


def short_reason(reason: str) -> str:
    """The reason without the ways out that every missing-weights line repeats."""
    return reason.replace(f": {OFFLINE_FIXES}", "")


def format_table(rows: list[ScreenRow]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    if any(OFFLINE_FIXES in r.skipped for r in rows):
        fixes = f"\n\nWithout weights here, {OFFLINE_FIXES} (docs/weights.md)."
    else:
        fixes = ""
    for r in ranked(rows):
        if r.skipped:
            cells = [r.candidate.label, "skipped: " + short_reason(r.skipped).replace("|", "/")]
            cells += ["–"] * (len(HEADER) - 2)
        else:
            cells = [
                r.candidate.label,
                r.weights_source,
                str(r.img_size),
                f"{r.params / 1e6:.1f}",
                str(r.feature_dim),
                f"{r.acc_mean:.4f} ± {r.acc_std:.4f}",
                f"{r.extract_seconds:.1f}",
                f"{r.img_per_s:.0f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + fixes


def write_csv(rows: list[ScreenRow], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                *("backbone", "timm_name", "pretrained", "weights_source", "img_size", "params"),
                *("feature_dim", "probe_acc_mean", "probe_acc_std", "fold_accuracies"),
                *("extract_seconds", "images", "img_per_s", "skipped"),
            ]
        )
        for r in ranked(rows):
            c, folds = r.candidate, " ".join(f"{a:.4f}" for a in r.fold_accuracies)
            writer.writerow(
                [
                    *(c.label, c.name, c.pretrained, r.weights_source, r.img_size, r.params),
                    *(r.feature_dim, r.acc_mean, r.acc_std, folds),
                    *(r.extract_seconds, r.images, r.img_per_s, r.skipped),
                ]
            )
    return path


def recommendation(rows: list[ScreenRow]) -> str:
    """The ranking in words: the best backbone, the runner-up and how far behind it is, and
    the fastest backbone within the best one's fold noise when that is another one."""
    done = [r for r in ranked(rows) if not r.skipped]
    skipped = [r.candidate.label for r in rows if r.skipped]
    tail = f" Skipped (no weights here or unusable): {', '.join(skipped)}." if skipped else ""
    if not done:
        return "No backbone could be screened." + tail
    best = done[0]
    text = f"{_describe(best)}"
    if len(done) > 1:
        runner = done[1]
        text += f"; next {_describe(runner)}, {runner.acc_mean - best.acc_mean:+.3f}"
    noise = best.acc_std if best.acc_std == best.acc_std else 0.0
    close = [r for r in done if best.acc_mean - r.acc_mean <= noise]
    fastest = max(close, key=lambda r: r.img_per_s)
    text += f". Recommended: {best.candidate.override}"
    if fastest is not best:
        text += (
            f" (or {fastest.candidate.label}, within one fold std of it and "
            f"{fastest.img_per_s / best.img_per_s:.1f}x as fast: {fastest.candidate.override})"
        )
    return text + "." + tail


def _describe(row: ScreenRow) -> str:
    scratch = ", random init" if not row.candidate.pretrained else ""
    return (
        f"{row.candidate.label}: probe {row.acc_mean:.3f} ± {row.acc_std:.3f} "
        f"({row.img_per_s:.0f} img/s, {row.params / 1e6:.1f}M params{scratch})"
    )


def plot_screen(rows: list[ScreenRow], path: Path, title: str = "") -> Path:
    """Probe accuracy (± fold std) against extraction speed: up and right is better."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in ranked(rows) if not r.skipped]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, r in enumerate(done):
        scratch = not r.candidate.pretrained
        std = r.acc_std if r.acc_std == r.acc_std else 0.0
        ax.errorbar(
            r.img_per_s,
            r.acc_mean,
            yerr=std,
            fmt="o",
            capsize=4,
            color="tab:gray" if scratch else "tab:blue",
            label="random init" if scratch else "pretrained",
        )
        ax.annotate(
            f"{r.candidate.label}\n{r.params / 1e6:.1f}M, {r.img_size}px",
            (r.img_per_s, r.acc_mean),
            xytext=(6, 4 if i % 2 == 0 else -26),  # alternate above/below: close points
            textcoords="offset points",
            fontsize=8,
        )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if len(unique) > 1:
        ax.legend(unique.values(), unique.keys(), loc="lower right", frameon=False)
    if done:
        ax.set_xscale("log")
        speeds = [r.img_per_s for r in done]
        ax.set_xlim(min(speeds) / 2, max(speeds) * 4)  # room for the labels on the right
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("feature extraction, images/s (log)")
    ax.set_ylabel("linear-probe accuracy (mean ± std over folds)")
    skipped = sum(1 for r in rows if r.skipped)
    ax.set_title((title or "backbone screening") + (f" ({skipped} skipped)" if skipped else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
