"""stage=baseline: majority, raw-pixel and linear-probe baselines logged like training runs,
and a training run's report.md measured against the best of them."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.commands.baseline import run_baseline
from pipeline.commands.train import run_train
from pipeline.data.splits import run_splits
from pipeline.errors import ConfigError
from pipeline.evaluation.baselines import (
    BaselineConfig,
    BestBaseline,
    baseline_lines,
    majority_baseline,
)
from tests.conftest import write_image_folder

TEST_KEYS = {"test/acc", "test/f1_macro", "test/loss"}  # what training runs log for test


@pytest.fixture
def uneven_folder(tmp_path):
    """Separable shapes, one class three times as common as the others."""
    root = write_image_folder(tmp_path / "images", classes=("circle",), per_class=30)
    write_image_folder(root, classes=("circle", "square"), per_class=10)  # adds 'square'
    write_image_folder(root, classes=("circle", "square", "stripe"), per_class=10)
    return root


def test_baselines_log_training_keys_and_tags_and_the_majority_share(
    tiny_cfg, uneven_folder, mlflow_uri, tmp_path, capsys
):
    cfg = tiny_cfg(
        "stage=baseline",
        "data=folder",
        f"data.root={uneven_folder}",
        "tracking.experiment=baselines",
        "baseline.c_grid=[0.1,1.0]",
    )
    results = run_baseline(cfg, tmp_path / "out")
    assert [r.kind for r in results] == ["majority", "pixels", "probe"]

    client = MlflowClient(mlflow_uri)
    splits = run_splits(cfg.data, cfg.seed)
    for result in results:
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"baseline/{result.kind}-folder-s42"
        assert run.data.tags["stage"] == "baseline"
        assert run.data.tags["baseline"] == result.kind
        assert set(run.data.metrics) >= TEST_KEYS
        assert run.data.params["data.split_digest"] == splits.digest()
        assert run.data.params["data.name"] == "folder"
    # Majority: the largest class share of the test split (the train majority is circle).
    test_counts = np.bincount(splits.test.labels)
    majority, pixels, probe = (r.metrics for r in results)
    assert majority["test/acc"] == pytest.approx(test_counts.max() / test_counts.sum())
    assert splits.class_names[int(np.bincount(splits.train.labels).argmax())] == "circle"
    # Shapes are separable from 16x16 pixels: far above the majority class.
    assert pixels["test/acc"] > majority["test/acc"] + 0.2
    assert client.get_run(results[2].run_id).data.params["baseline.C"] in ("0.1", "1.0")
    table = capsys.readouterr().out
    assert "kind        test/acc  test/f1_macro" in table
    assert f"majority   {majority['test/acc']:>9.4f}" in table
    assert 0 <= probe["test/acc"] <= 1


@pytest.mark.slow
def test_training_report_states_the_margin_over_the_best_logged_baseline(
    tiny_cfg, uneven_folder, mlflow_uri, tmp_path
):
    common = ("data=folder", f"data.root={uneven_folder}", "tracking.experiment=vs_baseline")
    # None logged yet: the majority class, scored on the spot.
    first = run_train(tiny_cfg(*common), tmp_path / "first")
    report = (tmp_path / "first" / "report.md").read_text()
    assert "## Baseline" in report and "the best baseline, majority" in report
    assert "scored on the spot" in report
    client = MlflowClient(mlflow_uri)
    splits = run_splits(tiny_cfg(*common).data, 42)
    expected = majority_baseline(splits.train.labels, splits.test.labels).acc
    metrics = client.get_run(first.run_id).data.metrics
    assert metrics["baseline/best_acc"] == pytest.approx(expected)
    assert metrics["test/acc_over_baseline"] == pytest.approx(metrics["test/acc"] - expected)

    # Logged: the best of them on the same split (pixels beats majority here).
    baselines = run_baseline(
        tiny_cfg(*common, "baseline.kinds=[majority,pixels]"), tmp_path / "baselines"
    )
    pixels = baselines[1]
    second = run_train(tiny_cfg(*common), tmp_path / "second")
    metrics = client.get_run(second.run_id).data.metrics
    assert metrics["baseline/best_acc"] == pytest.approx(pixels.metrics["test/acc"])
    report = (tmp_path / "second" / "report.md").read_text()
    assert f"the best baseline, pixels (test/acc {pixels.metrics['test/acc']:.4f}; run " in report
    margin = (metrics["test/acc"] - pixels.metrics["test/acc"]) * 100
    assert (f"{margin:.1f} points above" in report) == (margin > 0)


def test_report_lines_say_the_margin_or_warn():
    best = BestBaseline("probe", 0.80, "run abc")
    above = "\n".join(baseline_lines(0.85, best))
    assert "test/acc 0.8500 is **5.0 points above** the best baseline, probe" in above
    below = "\n".join(baseline_lines(0.78, best))
    assert "**Warning: test/acc 0.7800 did not beat** the best baseline, probe" in below
    assert "(-2.0 points)" in below


def test_baseline_settings_are_checked():
    with pytest.raises(ConfigError, match=r"baseline\.kinds"):
        BaselineConfig(kinds=["majority", "knn"])
    with pytest.raises(ConfigError, match=r"baseline\.c_grid"):
        BaselineConfig(c_grid=[0.0])


def test_a_run_below_the_baseline_warns_in_one_line(caplog):
    from pipeline.commands.train_outputs import log_baseline_comparison
    from pipeline.tracking.runs import Run

    lines = log_baseline_comparison(Run(), 0.5, BestBaseline("majority", 0.6, "scored now"))
    assert "did not beat" in lines[-1]
    assert caplog.messages == [
        "test/acc 0.5000 did not beat the majority baseline's 0.6000 (scored now)"
    ]
