"""Compare variants across seeds: mean ± std, delta vs baseline, paired tests. Pure functions.

Rows are one dict per finished child: {"variant": ..., "seed": ..., <metric>: value, ...}.
Variant and baseline pair up by seed (same split, same initialisation), so the paired tests
look at per-seed differences, which removes the seed-to-seed noise both share.
"""

from __future__ import annotations

import csv
import math
import warnings
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


@dataclass
class Paired:
    """Variant minus baseline on the seeds both have."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided paired t-test


@dataclass
class VariantSummary:
    variant: str
    n: int
    seeds: list[int]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    delta: float = math.nan  # mean(variant) - mean(baseline) of the compared metric
    paired: Paired | None = None


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan with fewer than two values)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=float)
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


def paired_test(
    variant: dict[int, float], baseline: dict[int, float], resamples: int = 10000
) -> Paired:
    """Paired t-test and bootstrap CI of the mean difference, over seeds both have."""
    from scipy import stats

    seeds = sorted(set(variant) & set(baseline))
    diffs = [variant[s] - baseline[s] for s in seeds]
    if not diffs:
        return Paired(0, math.nan, math.nan, math.nan, math.nan)
    low, high = bootstrap_ci(diffs, resamples)
    p = math.nan
    if len(diffs) > 1 and np.ptp(diffs) > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(stats.ttest_rel([variant[s] for s in seeds], [baseline[s] for s in seeds])[1])
    elif len(diffs) > 1:
        p = 1.0 if diffs[0] == 0 else 0.0  # identical non-zero differences: no variance at all
    return Paired(len(diffs), float(np.mean(diffs)), low, high, p)


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


def _signed(value: float, fmt: str = "{:+.4f}") -> str:
    return "–" if math.isnan(value) else fmt.format(value)


def format_table(summaries: list[VariantSummary], metric: str = "test/acc") -> str:
    """A Markdown table: readable in the terminal and rendered by MLflow's artifact view."""
    columns = [(k, t, f) for k, t, f in COLUMNS if k != metric]
    fmt = dict((k, f) for k, _, f in COLUMNS).get(metric, "{:.4f}")
    header = ["variant", "n", metric, "Δ vs baseline", "95% CI of Δ (paired)", "p (paired t)"]
    header += [title for _, title, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        paired = s.paired
        ci = (
            "–"
            if paired is None or math.isnan(paired.ci_low)
            else f"[{paired.ci_low:+.4f}, {paired.ci_high:+.4f}]"
        )
        p = "–" if paired is None or math.isnan(paired.p_value) else f"{paired.p_value:.3g}"
        cells = [s.variant, str(s.n), _pm(s.mean[metric], s.std[metric], fmt)]
        cells += [_signed(s.delta), ci, p]
        cells += [_pm(s.mean[k], s.std[k], f) for k, _, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(summaries: list[VariantSummary], path: Path, metric: str = "test/acc") -> Path:
    keys = list(dict.fromkeys([*METRICS, metric]))
    header = ["variant", "n", "seeds"]
    header += [f"{k}_{stat}" for k in keys for stat in ("mean", "std")]
    header += ["metric", "delta", "paired_n", "paired_mean_diff", "ci_low", "ci_high", "p_value"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for s in summaries:
            p = s.paired or Paired(0, math.nan, math.nan, math.nan, math.nan)
            writer.writerow(
                [s.variant, s.n, " ".join(map(str, s.seeds))]
                + [v for k in keys for v in (s.mean[k], s.std[k])]
                + [metric, s.delta, p.n, p.mean_diff, p.ci_low, p.ci_high, p.p_value]
            )
    return path


def plot_summary(
    summaries: list[VariantSummary], path: Path, metric: str = "test/acc", title: str = ""
) -> Path:
    """Bars of mean `metric` per variant with ± std error bars; the baseline mean dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s.variant for s in summaries]
    means = np.array([s.mean[metric] for s in summaries])
    stds = np.nan_to_num([s.std[metric] for s in summaries])
    colors = ["tab:gray" if s.paired is None else "tab:blue" for s in summaries]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 4))
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=colors)
    ax.axhline(means[0], color="black", linestyle="--", linewidth=1, label=names[0])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    finite = means[np.isfinite(means)]
    if finite.size:
        low = max(0.0, float((finite - stds[np.isfinite(means)]).min()) - 0.05)
        ax.set_ylim(bottom=low if metric.endswith(("acc", "f1_macro")) else None)
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(title or metric)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
