"""data.kfold=K: K nested MLflow runs, mean and std on the parent, test split held out."""

import csv
import re

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.commands.evaluate import run_evaluate
from pipeline.commands.train import run_train
from pipeline.compose import compose
from pipeline.data.config import DataConfig
from pipeline.data.splits import build_splits, kfold_splits, stratified_folds
from pipeline.errors import ConfigError
from pipeline.experiments.kfold import summarize_folds
from tests.conftest import tiny_overrides, write_image_folder


def test_folds_are_stratified_seeded_and_cover_every_sample():
    labels = np.repeat([0, 1, 2], [10, 7, 3])
    folds = stratified_folds(labels, 3, seed=0)
    assert sorted(np.bincount(folds).tolist()) == [6, 7, 7]
    for label in range(3):
        per_fold = np.bincount(folds[labels == label], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1
    assert (stratified_folds(labels, 3, seed=0) == folds).all()
    assert (stratified_folds(labels, 3, seed=1) != folds).any()


def test_kfold_splits_keep_the_test_split_out(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=10)
    splits = build_splits(DataConfig(name="folder", root=str(root)), seed=0)
    folds, _ = kfold_splits(splits, 4, seed=0)
    test_ids = set(splits.test.ids)
    val_ids = [set(f.val.ids) for f in folds]
    assert set().union(*val_ids) == set(splits.train.ids) | set(splits.val.ids)
    assert sum(map(len, val_ids)) == len(set().union(*val_ids))  # folds are disjoint
    for fold in folds:
        assert fold.test.ids == splits.test.ids
        assert not (set(fold.train.ids) | set(fold.val.ids)) & test_ids
        assert not set(fold.train.ids) & set(fold.val.ids)


def test_summary_is_mean_and_sample_std():
    summary = summarize_folds([{"test/acc": 0.5}, {"test/acc": 0.7}, {"test/acc": 0.9}])
    assert summary["test/acc_mean"] == pytest.approx(0.7)
    assert summary["test/acc_std"] == pytest.approx(0.2)


@pytest.fixture(scope="module")
def kfold_job(mlflow_uri, tmp_path_factory):
    """One 2-fold job (a parent and 2 fold runs), read by both tests below."""
    tmp = tmp_path_factory.mktemp("kfold_job")
    root = write_image_folder(tmp / "imgs", per_class=8)
    base = ("data=folder", f"data.root={root}", "data.kfold=2")
    cfg = compose([*tiny_overrides(mlflow_uri, tmp), *base, "tracking.run_name=cv"])
    return run_train(cfg, tmp / "out"), base, tmp / "out"


@pytest.mark.slow  # three MLflow runs (parent + 2 folds)
def test_kfold_run_nests_one_child_per_fold_under_a_parent(kfold_job, mlflow_uri):
    result, _, out = kfold_job
    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["kfold"] == "2"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    assert sorted(c.data.tags["fold"] for c in children) == ["0", "1"]
    assert {c.info.run_name for c in children} == {"cv-fold0", "cv-fold1"}
    accs = [c.data.metrics["test/acc"] for c in children]
    metrics = parent.data.metrics
    assert metrics["test/acc_mean"] == pytest.approx(np.mean(accs))
    assert metrics["test/acc_std"] == pytest.approx(np.std(accs, ddof=1))
    for name in ("test/loss", "test/f1_macro", "val/acc", "val/loss"):
        assert f"{name}_mean" in metrics and f"{name}_std" in metrics
    # Every child tested on the same held-out images, none of which it trained on.
    with open(out / "folds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test_ids = {r["image"] for r in rows if r["split"] == "test"}
    assert len(test_ids) == 6 and {r["fold"] for r in rows if r["split"] != "test"} == {"0", "1"}
    for i in range(2):
        with open(out / f"fold{i}" / "splits.csv", newline="") as f:
            fold_rows = list(csv.DictReader(f))
        assert {r["image"] for r in fold_rows if r["split"] == "test"} == test_ids
        assert not {r["image"] for r in fold_rows if r["split"] != "test"} & test_ids


def _ids(path, split):
    with open(path, newline="") as f:
        return [r["image"] for r in csv.DictReader(f) if r["split"] == split]


def test_data_fold_needs_kfold_and_kfold_resumes_one_fold_at_a_time():
    with pytest.raises(
        ConfigError, match=re.escape("data.fold=2 needs data.kfold=K >= 2 and 0 <= data.fold < K")
    ):
        compose(["data.kfold=2", "data.fold=2"])
    with pytest.raises(ConfigError, match=r"data\.fold=0 needs data\.kfold"):
        compose(["data.fold=0"])
    with pytest.raises(ConfigError, match=r"resume a fold's run with data\.fold=I"):
        compose(["data.kfold=2", "train.resume=abc"])


@pytest.mark.slow  # the 2-fold job's fold 1 alone: trained, evaluated on val, resumed
def test_data_fold_is_that_fold_of_the_job_for_train_evaluate_and_resume(
    kfold_job, tiny_cfg, mlflow_uri, tmp_path
):
    job, base, job_out = kfold_job
    one = run_train(tiny_cfg(*base, "data.fold=1"), tmp_path / "one")
    for split in ("train", "val", "test"):
        assert _ids(tmp_path / "one" / "splits.csv", split) == _ids(
            job_out / "fold1" / "splits.csv", split
        )
    client = MlflowClient(mlflow_uri)
    (fold1,) = client.search_runs(
        [client.get_run(job.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{job.run_id}' and tags.fold = '1'",
    )
    for name, value in one.test_metrics.items():
        assert fold1.data.metrics[name] == pytest.approx(value, abs=1e-6), name

    # eval.split=val scores the fold's own validation images (folds.csv: fold 1 = its val).
    evaluate_cfg = tiny_cfg("stage=evaluate", f"run_id={one.run_id}", "eval.split=val")
    run_evaluate(evaluate_cfg, tmp_path / "eval")
    with open(job_out / "folds.csv", newline="") as f:
        fold1_val = {r["image"] for r in csv.DictReader(f) if r["fold"] == "1"}
    with open(tmp_path / "eval" / "val_predictions.csv", newline="") as f:
        assert {r["image"] for r in csv.DictReader(f)} == fold1_val

    resumed = run_train(
        tiny_cfg(*base, "data.fold=1", "train.epochs=2", f"train.resume={one.run_id}"),
        tmp_path / "resumed",
    )
    assert resumed.run_id == one.run_id and len(resumed.fit.history) == 2
