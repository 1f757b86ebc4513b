"""Ablation planning and summary statistics: pure functions, no training."""

import csv
import math

import numpy as np
import pytest
from scipy import stats

from pipeline.compose import compose
from pipeline.config import AblationConfig
from pipeline.errors import ConfigError
from pipeline.experiments.ablation import passthrough_overrides, plan_children
from pipeline.experiments.compare import (
    bootstrap_ci,
    format_table,
    paired_test,
    plot_summary,
    summarize_variants,
    summary_figure,
    table_legend,
    write_csv,
)


def _ablation(**kw):
    base = {
        "name": "t",
        "baseline": ["head=mlp"],
        "components": {"dropout": ["head.dropout=0.0"], "augmentation": ["augment=none"]},
        "seeds": 2,
    }
    return AblationConfig(**{**base, **kw})


def test_leave_one_out_plan_is_seed_major_and_pairs_by_seed():
    children = plan_children(_ablation(first_seed=5), ["train.threads=2"])
    assert [(c.variant, c.seed) for c in children] == [
        ("baseline", 5),
        ("no_dropout", 5),
        ("no_augmentation", 5),
        ("baseline", 6),
        ("no_dropout", 6),
        ("no_augmentation", 6),
    ]
    # Baseline, then the command line's, then the variant's own, then the seed: later wins.
    assert children[1].overrides == ("head=mlp", "train.threads=2", "head.dropout=0.0", "seed=5")
    assert children[0].sha != children[3].sha  # the seed is part of a child's identity
    # How it runs is not: the same child with other thread/worker counts is already done.
    fewer = plan_children(_ablation(first_seed=5), ["train.threads=1", "data.num_workers=0"])
    assert [c.sha for c in fewer] == [c.sha for c in children]
    assert plan_children(_ablation(first_seed=5), ["optim.lr=1"])[0].sha != children[0].sha


def test_add_one_in_names_and_narrowing():
    cfg = _ablation(mode="add_one_in", only_variant="with_dropout", only_seed=1)
    assert [(c.variant, c.seed) for c in plan_children(cfg)] == [("with_dropout", 1)]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"mode": "random"}, "ablation.mode"),
        ({"name": "it's"}, "ablation.name"),
        ({"components": {"x": ["seed=3"]}}, "sets a key the ablation controls"),
        ({"components": {"x": ["tracking.uri=x"]}}, "sets a key the ablation controls"),
        ({"components": {"bad name": ["head.dropout=0"]}}, "must match"),
        ({"components": {"x": []}}, "must be a list of overrides"),
        ({"only_variant": "nope"}, "ablation.only_variant='nope' is not one of: baseline"),
        ({"only_seed": 9}, "ablation.only_seed=9"),
    ],
)
def test_bad_ablations_fail_with_one_line(kw, message):
    with pytest.raises(ConfigError, match=message):
        plan_children(_ablation(**kw))


def test_passthrough_keeps_training_overrides_and_drops_the_ablations_own():
    cli = [
        "stage=ablate",
        "ablation=x",
        "ablation.seeds=2",
        "tracking.uri=sqlite:///a.db",
        "seed=3",
        "train.threads=2",
        "+head.extra=1",
        "hparams_search=y",
    ]
    assert passthrough_overrides(cli) == ["train.threads=2", "+head.extra=1"]


def test_shipped_ablation_composes_and_every_variant_config_is_valid():
    cfg = compose(["stage=ablate", "ablation=quickstart_components"])
    assert cfg.ablation.name == "quickstart_components" and cfg.tracking.experiment == "ablations"
    children = plan_children(cfg.ablation)
    variants = {c.variant: c for c in children if c.seed == 0}
    assert {"baseline", "no_pretrained", "no_augmentation", "no_finetuning"} <= set(variants)
    scratch = compose(list(variants["no_pretrained"].overrides))
    base = compose(list(variants["baseline"].overrides))
    assert base.backbone.pretrained and not scratch.backbone.pretrained
    assert base.head.kind == "mlp" and base.augment.preset == "light"
    assert compose(list(variants["no_augmentation"].overrides)).augment.preset == "none"
    assert compose(list(variants["no_finetuning"].overrides)).finetune.strategy == "frozen"


def test_shipped_add_one_in_example_builds_up_from_a_linear_probe():
    cfg = compose(["stage=ablate", "ablation=recipe_add_one_in"])
    variants = {c.variant: c for c in plan_children(cfg.ablation) if c.seed == 0}
    base = compose(list(variants["baseline"].overrides))
    assert (base.finetune.strategy, base.head.kind, base.optim.name) == ("frozen", "linear", "sgd")
    assert compose(list(variants["with_mlp_head"].overrides)).head.kind == "mlp"
    assert compose(list(variants["with_adamw"].overrides)).optim.name == "adamw"
    full = compose(list(variants["with_finetuning"].overrides))
    assert full.finetune.strategy == "full" and full.augment.preset == "none"


ROWS = [
    {"variant": "baseline", "seed": 0, "test/acc": 0.90, "test/f1_macro": 0.89, "best_epoch": 3},
    {"variant": "baseline", "seed": 1, "test/acc": 0.92, "test/f1_macro": 0.91, "best_epoch": 2},
    {"variant": "baseline", "seed": 2, "test/acc": 0.95, "test/f1_macro": 0.94, "best_epoch": 3},
    {"variant": "no_x", "seed": 0, "test/acc": 0.80, "test/f1_macro": 0.70, "best_epoch": 1},
    {"variant": "no_x", "seed": 1, "test/acc": 0.84, "test/f1_macro": 0.83, "best_epoch": 1},
    {"variant": "no_x", "seed": 2, "test/acc": 0.83, "test/f1_macro": 0.80, "best_epoch": 2},
]


def test_summary_is_mean_std_delta_and_paired_tests_over_seeds():
    base, no_x = summarize_variants(ROWS, ["baseline", "no_x"], resamples=2000)
    assert base.n == 3 and base.seeds == [0, 1, 2] and base.paired is None
    assert base.mean["test/acc"] == pytest.approx(np.mean([0.90, 0.92, 0.95]))
    assert base.std["test/acc"] == pytest.approx(np.std([0.90, 0.92, 0.95], ddof=1))
    assert no_x.mean["test/f1_macro"] == pytest.approx(np.mean([0.70, 0.83, 0.80]))
    assert math.isnan(no_x.mean["peak_memory_mb"])  # not measured: shown as "–", not 0
    assert no_x.delta == pytest.approx(np.mean([0.80, 0.84, 0.83]) - np.mean([0.90, 0.92, 0.95]))
    diffs = [-0.10, -0.08, -0.12]
    assert no_x.paired.n == 3 and no_x.paired.mean_diff == pytest.approx(np.mean(diffs))
    expected_p = stats.ttest_rel([0.80, 0.84, 0.83], [0.90, 0.92, 0.95]).pvalue
    assert no_x.paired.p_value == pytest.approx(expected_p)
    half = stats.t.ppf(0.975, 2) * np.std(diffs, ddof=1) / np.sqrt(3)  # the t-test's own CI
    assert no_x.paired.ci_low == pytest.approx(np.mean(diffs) - half)
    assert no_x.paired.ci_high == pytest.approx(np.mean(diffs) + half)


def test_paired_test_uses_only_shared_seeds_and_handles_tiny_samples():
    result = paired_test({0: 0.5, 1: 0.7, 7: 0.1}, {0: 0.4, 1: 0.5})
    assert result.n == 2 and result.mean_diff == pytest.approx(0.15)
    single = paired_test({0: 0.5}, {0: 0.4})
    assert single.n == 1 and math.isnan(single.p_value) and math.isnan(single.ci_low)
    assert single.untestable == "n=1"


def test_identical_differences_have_no_p_or_ci_instead_of_p_zero():
    # Two seeds, each +0.05: the t statistic is d/0. This printed p = 0 and a CI [+0.05, +0.05].
    exact = paired_test({0: 0.75, 1: 0.875}, {0: 0.70, 1: 0.825})
    # The same with float noise in the differences (0.05 vs 0.05000000000000004): p ~ 1e-15.
    noisy = paired_test({0: 0.85, 1: 0.9}, {0: 0.8, 1: 0.85})
    same = paired_test({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6})  # no difference at all
    for paired in (exact, noisy, same):
        assert paired.identical and paired.untestable == "identical Δ"
        assert math.isnan(paired.p_value) and math.isnan(paired.ci_low)
    assert exact.mean_diff == pytest.approx(0.05)
    rows = [
        {"variant": v, "seed": s, "test/acc": acc}
        for v, accs in (("baseline", (0.8, 0.85)), ("no_x", (0.85, 0.9)))
        for s, acc in enumerate(accs)
    ]
    summaries = summarize_variants(rows, ["baseline", "no_x"])
    assert (
        format_table(summaries)
        .splitlines()[3]
        .startswith(
            "| no_x | 2 | 0.8750 ± 0.0354 | +0.0500 | n/a (identical Δ) | n/a (identical Δ) |"
        )
    )


def test_ci_and_p_agree_where_a_bootstrap_ci_did_not():
    # All three differences positive but far apart: the percentile bootstrap of 3 pairs never
    # leaves [0.01, 0.2], so it "excluded 0" next to p = 0.34. The t-interval says what p says.
    spread = paired_test({0: 0.51, 1: 0.52, 2: 0.70}, {0: 0.5, 1: 0.5, 2: 0.5})
    assert spread.p_value == pytest.approx(0.341, abs=1e-3)
    assert spread.ci_low < 0 < spread.ci_high
    assert math.isnan(spread.bootstrap_low)  # 3 pairs: too few for a bootstrap CI
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 6, 10):
        for _ in range(20):
            diffs = rng.normal(0.02, 0.03, n)
            paired = paired_test(dict(enumerate(diffs)), dict.fromkeys(range(n), 0.0))
            assert (paired.p_value < 0.05) == (not paired.ci_low <= 0 <= paired.ci_high)
            assert (n >= 5) == math.isfinite(paired.bootstrap_low)


def test_tiny_p_is_never_printed_as_zero_and_few_seeds_are_flagged():
    far = [(0.1, 0.9), (0.1, 0.9 + 1e-6), (0.1, 0.9 - 1e-6)]  # a huge effect, tiny spread
    rows = [
        {"variant": v, "seed": s, "test/acc": acc}
        for s, pair in enumerate(far)
        for v, acc in zip(("baseline", "with_x"), pair, strict=True)
    ]
    summaries = summarize_variants(rows, ["baseline", "with_x"])
    assert 0 < summaries[1].paired.p_value < 1e-4
    assert "| <0.0001 |" in format_table(summaries).splitlines()[3]
    assert "Warning" not in table_legend(summaries, "test/acc", "baseline")
    two = summarize_variants([r for r in rows if r["seed"] < 2], ["baseline", "with_x"])
    assert "**Warning**: as few as 2 seed(s) pair up with `baseline`; with fewer than 3 " in (
        table_legend(two, "test/acc", "baseline")
    )


def test_bootstrap_ci_is_seeded_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(0.1, 0.05, 5), rng.normal(0.1, 0.05, 200)
    assert bootstrap_ci(small, 1000) == bootstrap_ci(small, 1000)
    lo_s, hi_s = bootstrap_ci(small, 2000)
    lo_l, hi_l = bootstrap_ci(large, 2000)
    assert hi_l - lo_l < hi_s - lo_s and lo_l < 0.1 < hi_l


def test_table_csv_and_chart(tmp_path):
    summaries = summarize_variants(ROWS, ["baseline", "no_x"], resamples=500)
    table = format_table(summaries)
    lines = table.splitlines()
    assert lines[0].startswith(
        "| variant | n | test/acc | Δ vs baseline | 95% CI of Δ (paired t) | p (paired t) |"
    )
    assert lines[2].startswith("| baseline | 3 | 0.9233 ± 0.0252 | – |")
    assert "| no_x | 3 | 0.8233 ± 0.0208 | -0.1000 |" in lines[3]
    with open(write_csv(summaries, tmp_path / "a.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["baseline", "no_x"]
    assert float(rows[1]["test/acc_mean"]) == pytest.approx(summaries[1].mean["test/acc"])
    assert float(rows[1]["p_value"]) == pytest.approx(summaries[1].paired.p_value)
    png = plot_summary(summaries, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_chart_starts_at_zero_and_labels_each_variant_with_delta_and_p():
    import matplotlib.pyplot as plt

    summaries = summarize_variants(ROWS, ["baseline", "no_x"], resamples=500)
    fig = summary_figure(summaries)
    ax = fig.axes[0]
    # The bars' lengths are the accuracies: no axis cut just below the smallest bar.
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 1
    p = summaries[1].paired.p_value
    assert [t.get_text() for t in ax.texts] == ["0.9233", f"Δ -0.1000\np {p:.3g}"]
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert not any(legend.overlaps(bar.get_window_extent()) for bar in ax.patches)
    plt.close(fig)
    # Other metrics start at 0 too, and their labels use the metric's own format.
    seconds = [{**r, "train_seconds": 10.0 + 5 * (r["variant"] == "no_x")} for r in ROWS]
    summaries = summarize_variants(seconds, ["baseline", "no_x"], "train_seconds")
    ax = summary_figure(summaries, "train_seconds").axes[0]
    assert ax.get_ylim()[0] == 0 and ax.texts[1].get_text() == "Δ +5\np n/a (identical Δ)"
    plt.close(fig)


def test_ablate_without_an_ablation_says_how_to_pick_one():
    with pytest.raises(ConfigError, match=r"pick one with ablation=<name>"):
        plan_children(AblationConfig())


@pytest.mark.slow
def test_cli_dry_run_composes_children_inside_hydra_and_fails_bad_components_in_one_line(
    tmp_path,
):
    import subprocess
    import sys

    base = [
        sys.executable,
        "-m",
        "pipeline",
        "stage=ablate",
        "ablation=quickstart_components",
        "ablation.dry_run=true",
        "tracking.enabled=false",
        f"hydra.run.dir={tmp_path}",
    ]
    ok = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "6 variants x 3 seeds; 0 of 18 runs already finished, 18 to run" in ok.stdout
    assert "would run no_pretrained seed 2: backbone.img_size=48" in ok.stdout
    bad = subprocess.run(
        [*base, '+ablation.components.head=["head.kind=nope"]'],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: head.kind='nope' is not one of: linear, mlp"
    )
