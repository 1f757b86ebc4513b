"""What a training run leaves in MLflow for the runs table: grouping tags, a note, flat
single-line params of its own groups only, summary metrics, dataset inputs, a logged model,
system metrics, and an experiment that opens on the model-training view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.commands import run_stage
from pipeline.commands.runtime import HydraRuntime
from pipeline.compose import compose
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.runs import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    Run,
    grouping_tags,
    start_run,
    sweep_id,
)
from tests.conftest import tiny_overrides

SWEEP_DIR = Path("outputs/multirun/2026-11-30/06-45-11")
RUNTIME = HydraRuntime(
    overrides=("train.epochs=2", "tracking.uri=http://alice:s3cret@mlflow.example:5000"),
    job_num=1,
    multirun=True,
    sweep_dir=SWEEP_DIR,
)


@pytest.fixture(scope="module")
def trained(mlflow_uri, tmp_path_factory):
    """One 2-epoch tiny run as a sweep's job would start it (stage=train via run_stage)."""
    tmp = tmp_path_factory.mktemp("run_logging")
    on = ["tracking.log_model=true", "tracking.system_metrics=true"]  # off in tiny_overrides
    cfg = compose([*tiny_overrides(mlflow_uri, tmp), "train.epochs=2", *on])
    result = run_stage(cfg, tmp / "out", RUNTIME)
    client = MlflowClient(mlflow_uri)
    return result, client, client.get_run(result.run_id)


def test_sweep_id_is_the_sweep_folders_date_and_time():
    assert sweep_id(SWEEP_DIR) == "2026-11-30/06-45-11"
    assert sweep_id("/abs/multirun/2026-01-02/03-04-05") == "2026-01-02/03-04-05"


def test_grouping_tags_leave_out_what_a_plain_python_call_lacks():
    assert grouping_tags("evaluate", 7) == {"stage": "evaluate", "seed": "7"}


def test_a_training_run_is_tagged_to_group_by_stage_seed_overrides_and_sweep(trained):
    _, _, run = trained
    tags = run.data.tags
    assert tags["stage"] == "train" and tags["seed"] == "42"
    assert tags["overrides"] == "train.epochs=2 tracking.uri=http://mlflow.example:5000"
    assert tags["sweep"] == "2026-11-30/06-45-11"


def test_the_run_description_reads_like_the_report(trained):
    result, _, run = trained
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(f"**{run.info.run_name}**: ")
    assert any(v in note for v in ("good fit.", "overfitting.", "underfitting."))
    assert f"{result.test_metrics['test/acc']:.4f}" in note and "| test/acc |" in note


def test_params_hold_only_the_training_groups_each_on_one_line(trained):
    result, _, run = trained
    params = run.data.params
    other_stages = ("lr_find.", "visualize.", "ablation.", "search.", "eval.")
    assert not [k for k in params if k.startswith(other_stages)]
    assert not {"format", "run_id", "checkpoint", "input", "stage"} & set(params)
    assert not [k for k, v in params.items() if "\n" in v]
    assert params["optim.lr"] and params["train.epochs"] == "2"
    counts = json.loads((result.out_dir / "class_counts.json").read_text())["test"]
    assert params["data.class_counts.test"] == ",".join(f"{c}={n}" for c, n in counts.items())
    assert params["input.mean"].count(",") == 2 and "[" not in params["input.mean"]


def test_summary_metrics_best_and_per_class_test(trained):
    result, _, run = trained
    metrics = run.data.metrics
    best = result.fit.history[result.fit.best_epoch]
    assert metrics["best/val/acc"] == pytest.approx(best["val/acc"])
    assert metrics["best/val/loss"] == pytest.approx(best["val/loss"])
    for name in ("precision", "recall", "f1"):
        assert {f"test/{name}/{c}" for c in "0123456789"} <= set(metrics)
    mean_f1 = np.mean([metrics[f"test/f1/{c}"] for c in "0123456789"])
    assert mean_f1 == pytest.approx(metrics["test/f1_macro"])


def test_train_val_and_test_are_logged_as_dataset_inputs(trained):
    _, _, run = trained
    inputs = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
        for d in run.inputs.dataset_inputs
    }
    assert sorted(inputs) == ["test", "train", "val"]
    assert {d.name for d in inputs.values()} == {"digits-train", "digits-val", "digits-test"}
    assert '"num_rows": 359' in inputs["test"].profile  # the test split's 359 images
    assert len({d.digest for d in inputs.values()}) == 3


def test_the_logged_model_loads_with_pyfunc_and_answers_with_labels(
    trained, mlflow_uri, monkeypatch
):
    import mlflow.pyfunc

    result = trained[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # where runs:/ URIs are looked up
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    answer = model.predict(images)
    classes = [str(c) for c in range(10)]
    assert list(answer.columns) == ["label", *classes]
    assert np.allclose(answer[classes].sum(axis=1), 1.0, atol=1e-5)
    assert list(answer["label"]) == [classes[i] for i in answer[classes].to_numpy().argmax(1)]


@pytest.mark.slow  # a second training run
def test_system_metrics_are_logged_when_on_and_not_when_off(trained, mlflow_uri, tmp_path):
    _, _, run = trained
    assert "system/cpu_utilization_percentage" in run.data.metrics
    cfg = compose(
        [
            *tiny_overrides(mlflow_uri, tmp_path),
            "tracking.system_metrics=false",
            "tracking.log_model=false",
        ]
    )
    result = run_stage(cfg, tmp_path / "out", HydraRuntime())
    client = MlflowClient(mlflow_uri)
    off = client.get_run(result.run_id)
    assert off.info.status == "FINISHED"
    assert not [k for k in off.data.metrics if k.startswith("system/")]
    assert "overrides" not in off.data.tags and "sweep" not in off.data.tags
    models = client.search_logged_models([off.info.experiment_id])
    assert result.run_id not in {m.source_run_id for m in models}


def test_the_experiment_opens_on_the_model_training_view(trained, mlflow_uri):
    _, client, run = trained
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    # The key-metrics view the printed UI link opens (what MLflow's Share button writes).
    view = json.loads(experiment.tags["mlflow.sharedViewState.pipeline"])
    assert view["selectedColumns"][:2] == ["metrics.`test/acc`", "metrics.`test/f1_macro`"]
    assert view["orderByKey"] == "metrics.`test/acc`" and view["orderByAsc"] is False
    # An experiment made before (or by MLflow itself) is tagged when a run uses it.
    client.create_experiment("made-elsewhere")
    with start_run(TrackingConfig(uri=mlflow_uri, experiment="made-elsewhere")):
        pass
    tags = client.get_experiment_by_name("made-elsewhere").tags
    assert tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert "mlflow.sharedViewState.pipeline" in tags


def test_a_dataset_two_parallel_jobs_insert_at_once_is_linked_on_retry():
    """A joblib sweep's jobs log the same new dataset together: SQLite refuses the second
    insert (UNIQUE constraint), which failed that job's run; a retry links the dataset."""
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas
    from mlflow.exceptions import MlflowException

    class RacingClient:
        calls = 0

        def log_inputs(self, run_id, datasets):
            RacingClient.calls += 1
            if RacingClient.calls == 1:
                raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets")

    dataset = from_pandas(pd.DataFrame({"image": ["a.png"], "label": [0]}), name="d-train")
    Run(RacingClient(), "run-id").log_inputs({"train": dataset})
    assert RacingClient.calls == 2
