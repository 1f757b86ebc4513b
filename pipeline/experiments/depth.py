"""The depth study: how many backbone stages should fine-tuning train, on this data?

An ablation is a depth study when its baseline freezes the backbone (`finetune=frozen`) and
each component trains one depth (`finetune=partial finetune.train_last_n=k`, or
`finetune=full`) and nothing else: `ablation=depth` is one. Its report puts accuracy against
trainable parameters and training time, names the best depth with paired statistics against
frozen and full, and checks the rule of thumb ("small data similar to ImageNet: freeze;
large or different data: fine-tune deeper") against what the seeds measured.

Pure functions on the ablation's rows and summaries; `pipeline/commands/ablate.py` calls them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config import override_key
from pipeline.experiments.compare import Paired, VariantSummary, ci_text, p_text, paired_test

# Below this many training images per class a data set counts as small for the rule of thumb
# (CS231n's transfer-learning notes and the Keras guide speak of "small" at hundreds to a
# few thousand; 1,000 per class is ImageNet's own size, the data the features were made on).
SMALL_PER_CLASS = 1000
FULL = 10**6  # sorts after every partial depth


def _finetune_of(overrides: Sequence[str]) -> dict[str, str]:
    out = {}
    for override in overrides:
        key, _, value = override.partition("=")
        key = override_key(key)
        if key in ("finetune", "finetune.strategy"):
            out["strategy"] = value
        elif key == "finetune.train_last_n":
            out["train_last_n"] = value
        else:
            out["other"] = override  # anything else: not a pure depth variant
    return out


def depth_of(overrides: Sequence[str]) -> int | None:
    """Trainable stages a pure depth variant sets (0 frozen, FULL for full), else None."""
    spec = _finetune_of(overrides)
    if "other" in spec:
        return None
    if spec.get("strategy") == "frozen":
        return 0
    if spec.get("strategy") == "full" and "train_last_n" not in spec:
        return FULL
    if spec.get("strategy") == "partial" and spec.get("train_last_n", "").isdigit():
        return int(spec["train_last_n"])
    return None


def study_depths(
    baseline: Sequence[str], components: Mapping[str, Sequence[str]], prefix: str
) -> dict[str, int] | None:
    """variant -> trainable stages, when the ablation is a depth study; else None."""
    if depth_of([o for o in baseline if override_key(o).startswith("finetune")]) != 0:
        return None
    depths = {"baseline": 0}
    for name, overrides in components.items():
        depth = depth_of(overrides)
        if depth is None:
            return None
        depths[prefix + name] = depth
    return depths


def depth_label(depth: int) -> str:
    return "frozen" if depth == 0 else "full" if depth == FULL else f"last {depth}"


@dataclass
class DepthPoint:
    variant: str
    depth: int
    summary: VariantSummary
    trainable_params: float  # mean over the variant's runs (NaN when not logged)

    @property
    def label(self) -> str:
        return depth_label(self.depth)


@dataclass
class DepthStudy:
    points: list[DepthPoint]  # by depth, frozen first
    best: DepthPoint
    vs_frozen: Paired | None  # best minus frozen, paired by seed (None: best is frozen)
    vs_full: Paired | None
    per_class: dict[str, int]  # training images per class
    metric: str

    @property
    def frozen(self) -> DepthPoint:
        return self.points[0]

    @property
    def full(self) -> DepthPoint | None:
        return next((p for p in self.points if p.depth == FULL), None)


def depth_study(
    depths: Mapping[str, int],
    summaries: list[VariantSummary],
    rows: list[dict],
    per_class: Mapping[str, int],
    metric: str = "test/acc",
) -> DepthStudy:
    """The best depth by mean `metric` (ties: the shallower, cheaper one) and its paired
    statistics against frozen and against full."""
    by_variant = {s.variant: s for s in summaries}
    per_seed: dict[str, dict[int, float]] = {v: {} for v in depths}
    params: dict[str, list[float]] = {v: [] for v in depths}
    for row in rows:
        if row["variant"] in depths and row.get(metric) is not None:
            per_seed[row["variant"]][row["seed"]] = row[metric]
            params[row["variant"]].append(row.get("trainable_params", math.nan))
    points = sorted(
        (
            DepthPoint(v, d, by_variant[v], float(np.mean(params[v])) if params[v] else math.nan)
            for v, d in depths.items()
            if v in by_variant and by_variant[v].n
        ),
        key=lambda p: p.depth,
    )
    best = max(points, key=lambda p: (p.summary.mean[metric], -p.depth))
    frozen = points[0]
    full = next((p for p in points if p.depth == FULL), None)

    def against(other: DepthPoint | None) -> Paired | None:
        if other is None or other is best:
            return None
        return paired_test(per_seed[best.variant], per_seed[other.variant])

    return DepthStudy(points, best, against(frozen), against(full), dict(per_class), metric)


def significant(paired: Paired | None) -> bool:
    return paired is not None and not paired.untestable and paired.p_value < 0.05


def rule_of_thumb(study: DepthStudy) -> str:
    """One sentence: what the rule predicts for this data set's size, and whether the
    measured best depth agrees, by how much."""
    size = _per_class(study.per_class)
    high = max(study.per_class.values())
    small = high < SMALL_PER_CLASS
    best, gain = study.best, study.vs_frozen
    what = (
        f"With {size} training images per class ({'small' if small else 'large'}: "
        f"{'under' if small else 'at least'} {SMALL_PER_CLASS} per class), the rule of thumb "
    )
    if small:
        what += "says freeze the backbone and train the head"
        if best.depth == 0:
            runner = max(
                (p for p in study.points if p is not best),
                key=lambda p: p.summary.mean[study.metric],
            )
            delta = runner.summary.mean[study.metric] - best.summary.mean[study.metric]
            return (
                what + f"; the measurements agree: frozen is the best depth, the next best "
                f"({runner.label}) {delta:+.3f} {study.metric} from it."
            )
        if not significant(gain):
            delta = 0.0 if gain is None else gain.mean_diff
            return (
                what + f"; the measurements agree: the best depth ({best.label}) is "
                f"{delta:+.3f} {study.metric} from frozen, within the seeds' noise "
                f"(p {p_text(gain)})."
            )
        assert gain is not None
        return (
            what + f"; the measurements disagree: training {best.label} beats frozen by "
            f"{gain.mean_diff:+.3f} {study.metric} (95% CI {ci_text(gain)}, p {p_text(gain)}). "
            "The rule's other axis, similarity to ImageNet, is not measured here: a data set "
            "unlike ImageNet's photos needs its features adapted even when it is small."
        )
    what += "says fine-tune deeply"
    loss = study.vs_full
    if best.depth == FULL or not significant(loss):
        delta = 0.0 if loss is None else loss.mean_diff
        return (
            what + f"; the measurements agree: the best depth ({best.label}) is {delta:+.3f} "
            f"{study.metric} from full, within the seeds' noise (p {p_text(loss)})."
        )
    assert loss is not None
    return (
        what + f"; the measurements disagree: {best.label} beats full by {loss.mean_diff:+.3f} "
        f"{study.metric} (95% CI {ci_text(loss)}, p {p_text(loss)})."
    )


def _per_class(counts: Mapping[str, int]) -> str:
    low, high = min(counts.values()), max(counts.values())
    return f"{low}" if low == high else f"{low}-{high}"


def format_depth_report(study: DepthStudy, name: str) -> str:
    metric = study.metric
    counts = study.per_class
    lines = [
        f"# Depth study `{name}`",
        "",
        f"{sum(counts.values())} training images in {len(counts)} classes "
        f"({_per_class(counts)} per class). Δ, CI and p: paired by "
        f"seed against frozen; ± is the std over seeds.",
        "",
        f"| depth | trainable params | {metric} | train s | Δ vs frozen | 95% CI of Δ | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for point in study.points:
        s = point.summary
        paired = s.paired if point.depth else None
        delta = "–" if not point.depth else f"{s.delta:+.4f}"
        params = "–" if math.isnan(point.trainable_params) else f"{point.trainable_params:,.0f}"
        lines.append(
            f"| {point.label} | {params} | {_pm(s, metric, '{:.4f}')} | "
            f"{_pm(s, 'train_seconds', '{:.0f}')} | {delta} | {ci_text(paired)} | "
            f"{p_text(paired)} |"
        )
    best = study.best
    lines += [
        "",
        f"**Best depth: {best.label}** ({metric} {_pm(best.summary, metric, '{:.4f}')}, "
        f"n={best.summary.n}).",
        "",
        f"- vs frozen: {_versus(study.vs_frozen, best is study.frozen)}",
        f"- vs full: {_versus(study.vs_full, best is study.full, study.full is None)}",
        "",
        rule_of_thumb(study),
    ]
    return "\n".join(lines) + "\n"


def _versus(paired: Paired | None, itself: bool, absent: bool = False) -> str:
    if absent:
        return "no full variant in this study"
    if itself or paired is None:
        return "it is the best depth"
    if paired.untestable:  # one reason, said once (not after the CI, the p and the n)
        return f"Δ {paired.mean_diff:+.4f}; no CI or p: {paired.untestable}"
    return f"Δ {paired.mean_diff:+.4f}, 95% CI {ci_text(paired)}, p {p_text(paired)} (n={paired.n})"


def _pm(summary: VariantSummary, key: str, fmt: str) -> str:
    mean, std = summary.mean.get(key, math.nan), summary.std.get(key, math.nan)
    if math.isnan(mean):
        return "–"
    return fmt.format(mean) + ("" if math.isnan(std) else " ± " + fmt.format(std))


def plot_depth(study: DepthStudy, path, title: str = ""):
    """Two panels, mean ± std over seeds: metric vs trainable parameters (log), and metric
    vs training seconds; the best depth ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = study.metric
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    means = [p.summary.mean[metric] for p in study.points]
    stds = np.nan_to_num([p.summary.std[metric] for p in study.points])
    xs = {
        "trainable parameters (log)": [p.trainable_params for p in study.points],
        "training seconds (mean over seeds)": [
            p.summary.mean.get("train_seconds", math.nan) for p in study.points
        ],
    }
    for ax, (xlabel, x) in zip(axes, xs.items(), strict=True):
        ax.errorbar(x, means, yerr=stds, fmt="-o", capsize=4, color="tab:blue")
        for xi, yi, point in zip(x, means, study.points, strict=True):
            ax.annotate(
                point.label, (xi, yi), xytext=(4, -12), textcoords="offset points", fontsize=8
            )
            if point is study.best:
                ax.plot([xi], [yi], "o", ms=14, mfc="none", mec="tab:red", label="best")
        if "log" in xlabel and all(v > 0 for v in x):
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.margins(x=0.12)  # room for the end labels
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{metric} (mean ± std over seeds)")
    axes[0].legend(loc="lower right", frameon=False)
    fig.suptitle(title or "depth study")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
