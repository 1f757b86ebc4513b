"""Compare variants across seeds: mean ± std, delta vs baseline, paired tests. Pure functions.

Rows are one dict per finished child: {"variant": ..., "seed": ..., <metric>: value, ...}.
Variant and baseline pair up by seed (same split, same initialisation), so the paired tests
look at per-seed differences, which removes the seed-to-seed noise both share.

The CI shown is the paired t-test's own interval for the mean difference, so CI and p always
agree (the CI excludes 0 exactly when p < 0.05). With a handful of seeds a percentile bootstrap
is overconfident (3 pairs have only 10 distinct resamples), so it goes only into the CSV, and
only from MIN_BOOTSTRAP_PAIRS pairs.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# (metric key, column title, format) for the summary table, in column order.
COLUMNS = (
    ("test/acc", "test/acc", "{:.4f}"),
    ("test/f1_macro", "test/f1_macro", "{:.4f}"),
    ("best_epoch", "best epoch", "{:.1f}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
)
METRICS = tuple(key for key, _, _ in COLUMNS)
MIN_BOOTSTRAP_PAIRS = 5  # fewer pairs: the bootstrap CI is left out (NaN in the CSV)
MIN_MEANINGFUL_PAIRS = 3  # fewer: the table's legend warns that CI and p mean little
SAME_DIFFERENCE = 1e-9  # per-seed differences closer than this are one value (float noise)


@dataclass
class Paired:
    """Variant minus baseline on the seeds both have."""

    n: int
    mean_diff: float
    ci_low: float  # 95% t-interval of the mean difference: the same test as p_value
    ci_high: float
    p_value: float  # two-sided paired t-test; NaN where undefined (see `untestable`)
    identical: bool = False  # the same difference on every seed: no spread to test against
    bootstrap_low: float = math.nan  # percentile bootstrap CI, from MIN_BOOTSTRAP_PAIRS pairs
    bootstrap_high: float = math.nan

    @property
    def untestable(self) -> str | None:
        """Why there is no CI or p, or None when there is."""
        if self.n < 2:
            return f"n={self.n}"
        return "identical Δ" if self.identical else None


@dataclass
class VariantSummary:
    variant: str
    n: int
    seeds: list[int]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    delta: float = math.nan  # mean(variant) - mean(baseline) of the compared metric
    paired: Paired | None = None


def mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan with fewer than two values); missing
    (None or nan) values are left out."""
    present = [v for v in values if v is not None and not math.isnan(v)]
    if not present:
        return math.nan, math.nan
    arr = np.asarray(present, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan


def bootstrap_ci(
    diffs: list[float], resamples: int = 10000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `diffs` (seeded, so reruns agree)."""
    arr = np.asarray(diffs, dtype=float)
    if len(arr) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(resamples, len(arr)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def t_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float]:
    """The paired t-test's CI of the mean of `diffs`: mean ± t(n-1) · sd / sqrt(n)."""
    from scipy import stats

    arr = np.asarray(diffs, dtype=float)
    half = stats.t.ppf((1 + level) / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return float(arr.mean() - half), float(arr.mean() + half)


def paired_test(
    variant: dict[int, float], baseline: dict[int, float], resamples: int = 10000
) -> Paired:
    """Paired t-test and its CI of the mean difference, over seeds both have.

    No CI or p from one pair, nor when every seed gives the same difference: t is 0/0 or
    infinite there, and p = 0 would claim a certainty three seeds cannot give."""
    from scipy import stats

    seeds = sorted(set(variant) & set(baseline))
    diffs = [variant[s] - baseline[s] for s in seeds]
    if not diffs:
        return Paired(0, math.nan, math.nan, math.nan, math.nan)
    paired = Paired(len(diffs), float(np.mean(diffs)), math.nan, math.nan, math.nan)
    paired.identical = len(diffs) > 1 and bool(np.ptp(diffs) <= SAME_DIFFERENCE)
    if paired.untestable:
        return paired
    paired.ci_low, paired.ci_high = t_interval(diffs)
    paired.p_value = float(stats.ttest_1samp(diffs, 0.0).pvalue)  # = ttest_rel on the pairs
    if len(diffs) >= MIN_BOOTSTRAP_PAIRS:
        paired.bootstrap_low, paired.bootstrap_high = bootstrap_ci(diffs, resamples)
    return paired


def summarize_variants(
    rows: list[dict],
    variants: list[str],
    metric: str = "test/acc",
    baseline: str = "baseline",
    resamples: int = 10000,
) -> list[VariantSummary]:
    """One summary per variant, in `variants` order (variants without rows get n=0)."""
    by_variant: dict[str, list[dict]] = {v: [] for v in variants}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    per_seed = {
        v: {r["seed"]: r[metric] for r in rs if r.get(metric) is not None}
        for v, rs in by_variant.items()
    }
    summaries = []
    for variant, variant_rows in by_variant.items():
        summary = VariantSummary(
            variant, len(variant_rows), sorted(r["seed"] for r in variant_rows)
        )
        for key in dict.fromkeys([*METRICS, metric]):
            summary.mean[key], summary.std[key] = mean_std([r.get(key) for r in variant_rows])
        if variant != baseline and baseline in by_variant:
            summary.delta = summary.mean[metric] - mean_std(list(per_seed[baseline].values()))[0]
            summary.paired = paired_test(per_seed[variant], per_seed[baseline], resamples)
        summaries.append(summary)
    return summaries


# --- presentation ---------------------------------------------------------------------------


def _pm(mean: float, std: float, fmt: str) -> str:
    if math.isnan(mean):
        return "–"
    return fmt.format(mean) + ("" if math.isnan(std) else " ± " + fmt.format(std))


def _metric_format(metric: str) -> str:
    return dict((k, f) for k, _, f in COLUMNS).get(metric, "{:.4f}")


def _signed(value: float, fmt: str = "{:+.4f}") -> str:
    return "–" if math.isnan(value) else fmt.format(value)


def ci_text(paired: Paired | None) -> str:
    if paired is None:
        return "–"
    if paired.untestable:
        return f"n/a ({paired.untestable})"
    return f"[{paired.ci_low:+.4f}, {paired.ci_high:+.4f}]"


def p_text(paired: Paired | None) -> str:
    """p to 3 significant digits; never "0", which no finite number of seeds can show."""
    if paired is None:
        return "–"
    if paired.untestable:
        return f"n/a ({paired.untestable})"
    return "<0.0001" if paired.p_value < 1e-4 else f"{paired.p_value:.3g}"


def table_legend(summaries: list[VariantSummary], metric: str, baseline: str) -> str:
    """What the table's columns mean, and a warning when too few seeds pair up."""
    legend = (
        f"Δ, CI and p compare each variant with `{baseline}` on {metric}, paired by seed; "
        "± is the standard deviation over seeds. The CI is the paired t-test's 95% interval "
        "of the mean per-seed Δ, so it excludes 0 exactly when p < 0.05; both are n/a from a "
        "single pair or when Δ is the same on every seed (no spread to test against)."
    )
    pairs = [s.paired.n for s in summaries if s.paired is not None]
    if pairs and min(pairs) < MIN_MEANINGFUL_PAIRS:
        legend += (
            f"\n\n**Warning**: as few as {min(pairs)} seed(s) pair up with `{baseline}`; "
            f"with fewer than {MIN_MEANINGFUL_PAIRS} neither CI nor p means much "
            "(raise `ablation.seeds`)."
        )
    return legend


def format_table(summaries: list[VariantSummary], metric: str = "test/acc") -> str:
    """A Markdown table: readable in the terminal and rendered by MLflow's artifact view."""
    columns = [(k, t, f) for k, t, f in COLUMNS if k != metric]
    fmt = _metric_format(metric)
    header = ["variant", "n", metric, "Δ vs baseline", "95% CI of Δ (paired t)", "p (paired t)"]
    header += [title for _, title, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        cells = [s.variant, str(s.n), _pm(s.mean[metric], s.std[metric], fmt)]
        cells += [_signed(s.delta), ci_text(s.paired), p_text(s.paired)]
        cells += [_pm(s.mean[k], s.std[k], f) for k, _, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(summaries: list[VariantSummary], path: Path, metric: str = "test/acc") -> Path:
    """The table's numbers in full; p_value/ci_* empty (NaN) where the table says n/a."""
    keys = list(dict.fromkeys([*METRICS, metric]))
    header = ["variant", "n", "seeds"]
    header += [f"{k}_{stat}" for k in keys for stat in ("mean", "std")]
    header += ["metric", "delta", "paired_n", "paired_mean_diff", "ci_low", "ci_high", "p_value"]
    header += ["identical_diffs", "bootstrap_ci_low", "bootstrap_ci_high"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for s in summaries:
            p = s.paired or Paired(0, math.nan, math.nan, math.nan, math.nan)
            writer.writerow(
                [s.variant, s.n, " ".join(map(str, s.seeds))]
                + [v for k in keys for v in (s.mean[k], s.std[k])]
                + [metric, s.delta, p.n, p.mean_diff, p.ci_low, p.ci_high, p.p_value]
                + [p.identical, p.bootstrap_low, p.bootstrap_high]
            )
    return path


def in_unit_interval(metric: str) -> bool:
    """Accuracy-like metrics (acc, f1, precision, recall) live in [0, 1]."""
    words = set(re.split(r"[/_]", metric))
    return bool(words & {"acc", "accuracy", "f1", "precision", "recall"})


def _bar_label(summary: VariantSummary, metric: str) -> str:
    fmt = _metric_format(metric)
    if summary.paired is None:
        return fmt.format(summary.mean[metric])
    delta = _signed(summary.delta, fmt.replace("{:", "{:+"))
    return f"Δ {delta}\np {p_text(summary.paired)}"


def plot_summary(
    summaries: list[VariantSummary], path: Path, metric: str = "test/acc", title: str = ""
) -> Path:
    fig = summary_figure(summaries, metric, title)  # selects the headless backend first
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_figure(summaries: list[VariantSummary], metric: str = "test/acc", title: str = ""):
    """Bars of mean `metric` per variant with ± std error bars, each variant's Δ and p above
    its bar; the baseline mean dashed. Bars start at 0 (their length is the value), and an
    accuracy-like metric gets its whole [0, 1] range, so small differences look small."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.variant for s in summaries]
    means = np.array([s.mean[metric] for s in summaries])
    stds = np.nan_to_num([s.std[metric] for s in summaries])
    colors = ["tab:gray" if s.paired is None else "tab:blue" for s in summaries]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 3), 4.5))
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=colors)
    ax.axhline(means[0], color="black", linestyle="--", linewidth=1, label=f"{names[0]} mean")
    for i, summary in enumerate(summaries):
        if np.isfinite(means[i]):
            top = means[i] + stds[i] if means[i] >= 0 else 0.0
            ax.annotate(
                _bar_label(summary, metric),
                (i, top),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},  # over the dashes
            )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    if in_unit_interval(metric):
        ax.set_ylim(0, 1.2)  # room above 1 for the labels
        ax.set_yticks(np.linspace(0, 1, 6))
    else:
        low, high = ax.get_ylim()
        ax.set_ylim(min(low, 0.0), high + 0.2 * (high - min(low, 0.0)))
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(title or metric)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # off the bars
    fig.tight_layout()
    return fig


# --- a parent run's view ----------------------------------------------------------------------


def lower_is_better(metric: str) -> bool:
    return "loss" in set(re.split(r"[/_]", metric))


def best_variant(summaries: list[VariantSummary], metric: str) -> VariantSummary | None:
    """The variant with the best mean `metric` (lowest for a loss), or None if none has one."""
    scored = [s for s in summaries if not math.isnan(s.mean.get(metric, math.nan))]
    if not scored:
        return None
    sign = 1 if lower_is_better(metric) else -1
    return min(scored, key=lambda s: sign * s.mean[metric])


def parent_metrics(summaries: list[VariantSummary], metric: str) -> dict[str, float]:
    """The few numbers a parent run logs: the best variant's mean and std of `metric`, and the
    number of variants. Per-variant numbers stay on the children (one chart per key compares
    them there) and in the parent's table."""
    best = best_variant(summaries, metric)
    out = {"variants": float(len(summaries))}
    if best is not None:
        out[f"best/{metric}"] = best.mean[metric]
        out[f"best/{metric}_std"] = best.std[metric]
    return {k: v for k, v in out.items() if not math.isnan(v)}


def table_columns(summaries: list[VariantSummary], metric: str = "test/acc") -> dict[str, list]:
    """The table as columns (MLflow's `log_table`): numbers, not text, so the UI sorts them;
    NaN (no std from one seed, no test from one pair) as None."""

    def number(value: float) -> float | None:
        return None if math.isnan(value) else round(float(value), 6)

    keys = list(dict.fromkeys([metric, *METRICS]))
    columns: dict[str, list] = {"variant": [s.variant for s in summaries]}
    columns["n"] = [s.n for s in summaries]
    for key in keys:
        columns[f"{key} mean"] = [number(s.mean[key]) for s in summaries]
        columns[f"{key} std"] = [number(s.std[key]) for s in summaries]
    columns["delta"] = [number(s.delta) for s in summaries]
    columns["p (paired t)"] = [number(s.paired.p_value) if s.paired else None for s in summaries]
    return columns
