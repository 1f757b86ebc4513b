"""The depth study's report (ablation=depth): pure functions on made-up seeds."""

from __future__ import annotations

import pytest

from pipeline.compose import compose
from pipeline.experiments.compare import summarize_variants
from pipeline.experiments.depth import (
    FULL,
    depth_study,
    format_depth_report,
    plot_depth,
    rule_of_thumb,
    study_depths,
)


def test_the_shipped_depth_ablation_is_recognised_and_others_are_not():
    depth = compose(["stage=ablate", "ablation=depth"]).ablation
    depths = study_depths(depth.baseline, depth.components, "with_")
    assert depths == {
        "baseline": 0,
        **{f"with_last{k}": k for k in range(1, 8)},
        "with_full": FULL,
    }
    other = compose(["stage=ablate", "ablation=recipe_add_one_in"]).ablation
    assert study_depths(other.baseline, other.components, "with_") is None


def _rows(accs: dict[str, list[float]], params: dict[str, int]) -> list[dict]:
    return [
        {
            "variant": v,
            "seed": seed,
            "test/acc": acc,
            "train_seconds": 10.0 * (1 + params[v] / 1e6),
            "trainable_params": params[v],
        }
        for v, values in accs.items()
        for seed, acc in enumerate(values)
    ]


DEPTHS = {"baseline": 0, "with_last2": 2, "with_full": FULL}
PARAMS = {"baseline": 12_810, "with_last2": 2_000_000, "with_full": 3_400_000}


def _study(accs: dict[str, list[float]], per_class: int):
    rows = _rows(accs, PARAMS)
    summaries = summarize_variants(rows, list(DEPTHS), "test/acc", "baseline", 100)
    return depth_study(DEPTHS, summaries, rows, {str(c): per_class for c in range(10)})


def test_small_data_where_deeper_wins_disagrees_with_the_rule_by_the_paired_gain(tmp_path):
    study = _study(
        {
            "baseline": [0.80, 0.82, 0.81],
            "with_last2": [0.95, 0.96, 0.955],
            "with_full": [0.93, 0.95, 0.935],
        },
        per_class=108,
    )
    assert study.best.variant == "with_last2" and study.best.trainable_params == 2_000_000
    assert study.vs_frozen.mean_diff == pytest.approx(0.145)
    assert study.vs_full.mean_diff == pytest.approx(0.0167, abs=1e-4)
    sentence = rule_of_thumb(study)
    assert sentence.startswith("With 108 training images per class (small: under 1000 per")
    assert "the measurements disagree: training last 2 beats frozen by +0.145 test/acc" in sentence
    report = format_depth_report(study, "depth")
    assert "| last 2 | 2,000,000 | 0.9550 ± 0.0050 | 30 ± 0 | +0.1450 |" in report
    assert "**Best depth: last 2** (test/acc 0.9550 ± 0.0050, n=3)." in report
    assert "- vs full: Δ +0.0167" in report
    assert plot_depth(study, tmp_path / "depth.png").stat().st_size > 10_000


def test_small_data_where_frozen_is_as_good_agrees_with_the_rule():
    study = _study(
        {
            "baseline": [0.95, 0.96, 0.94],
            "with_last2": [0.96, 0.94, 0.955],
            "with_full": [0.90, 0.91, 0.92],
        },
        per_class=60,
    )
    sentence = rule_of_thumb(study)
    assert (
        "the measurements agree: the best depth (last 2) is +0.002 test/acc from frozen" in sentence
    )
    assert "within the seeds' noise" in sentence


def test_frozen_best_names_the_runner_up_and_its_distance():
    study = _study(
        {
            "baseline": [0.96, 0.97, 0.95],
            "with_last2": [0.94, 0.95, 0.93],
            "with_full": [0.90, 0.91, 0.92],
        },
        per_class=60,
    )
    assert study.best.label == "frozen"
    assert rule_of_thumb(study).endswith(
        "the measurements agree: frozen is the best depth, the next best (last 2) -0.020 "
        "test/acc from it."
    )


def test_a_single_seed_says_once_why_there_is_no_ci_or_p():
    study = _study({"baseline": [0.95], "with_last2": [0.95], "with_full": [0.94]}, per_class=98)
    report = format_depth_report(study, "one_seed")
    line = next(ln for ln in report.splitlines() if ln.startswith("- vs full:"))
    assert line == "- vs full: Δ +0.0100; no CI or p: n=1"
