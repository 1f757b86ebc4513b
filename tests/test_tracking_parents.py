"""Parent runs (tracking.parents): found by tag, created once even when asked for at once,
shared by stage=ablate and stage=search."""

import dataclasses
import threading
from types import SimpleNamespace

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

import pipeline.commands.train as train_stage
from pipeline.commands.ablate import run_ablate
from pipeline.commands.runtime import HydraRuntime
from pipeline.commands.search import run_search
from pipeline.compose import compose
from pipeline.config import AblationConfig, SearchConfig
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.parents import child_tracking, find_or_create_parent
from pipeline.tracking.store import mlflow_client


def _tracking(mlflow_uri, tmp_path, experiment):
    tracking = TrackingConfig(
        uri=mlflow_uri, artifact_root=str(tmp_path / "artifacts"), experiment=experiment
    )
    # Made here: two first runs of a new experiment are not what these tests race. Its
    # artifacts go under tmp_path (MLflow's default, ./mlruns, is the repo's own folder).
    location = (tmp_path / "artifacts").resolve().as_uri()
    MlflowClient(mlflow_uri).create_experiment(experiment, artifact_location=location)
    return tracking


def _all_runs(mlflow_uri, experiment, view=ViewType.ACTIVE_ONLY):
    client = MlflowClient(mlflow_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], run_view_type=view)


def _both_create_before_either_looks(monkeypatch):
    """Two threads each find no parent, create one, and only then look again: the race."""
    barrier = threading.Barrier(2, timeout=30)
    create_run = MlflowClient.create_run

    def racing(self, *args, **kwargs):
        barrier.wait()  # neither has created yet: both found none
        run = create_run(self, *args, **kwargs)
        barrier.wait()  # both exist before either checks who was first
        return run

    monkeypatch.setattr(MlflowClient, "create_run", racing)


def _in_threads(target, *args_list):
    results, errors = [None] * len(args_list), []

    def run(i, args):
        try:
            results[i] = target(*args)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(args_list)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    return results


def test_two_threads_asking_for_the_same_parent_at_once_get_one(mlflow_uri, tmp_path, monkeypatch):
    tracking = _tracking(mlflow_uri, tmp_path, "parents-race")
    mlflow_client(mlflow_uri)  # the store exists before the race
    _both_create_before_either_looks(monkeypatch)
    tags = {"ablation": "race", "stage": "ablate"}
    ask = (tracking, tags, "ablation/race", {"ablation.seeds": 3})
    parents = _in_threads(find_or_create_parent, ask, ask)

    assert parents[0].run_id == parents[1].run_id
    [alive] = _all_runs(mlflow_uri, "parents-race")
    assert alive.info.run_id == parents[0].run_id
    assert alive.data.tags["ablation"] == "race" and alive.data.params == {"ablation.seeds": "3"}
    assert len(_all_runs(mlflow_uri, "parents-race", ViewType.ALL)) == 2  # the loser: deleted
    # Asked again later, the same one; and children link to it.
    again = find_or_create_parent(tracking, tags, "ablation/race", {})
    assert again.run_id == alive.info.run_id
    child = child_tracking(tracking, again, "race/baseline/seed0", {"variant": "baseline"})
    assert child.parent_run_id == again.run_id and child.tags == {"variant": "baseline"}


def test_a_parent_name_with_quotes_is_found_again(mlflow_uri, tmp_path):
    tracking = _tracking(mlflow_uri, tmp_path, "parents-quotes")
    tags = {"study": "bob's", "stage": "search"}
    first = find_or_create_parent(tracking, tags, "search/bob's", {})
    assert find_or_create_parent(tracking, tags, "search/bob's", {}).run_id == first.run_id


def _fake_train(calls):
    """run_train without training: records the child's tracking, returns a fixed result."""

    def train(cfg, out_dir, runtime=None):
        calls.append(cfg.tracking)
        out_dir.mkdir(parents=True)  # as training does
        fit = SimpleNamespace(history=[{"val/acc": 0.5}], best_epoch=0)
        return SimpleNamespace(fit=fit, test_metrics={"test/acc": 0.4}, run_id=None)

    return train


def test_two_search_trials_at_once_share_one_study_parent(mlflow_uri, tmp_path, monkeypatch):
    tracking = _tracking(mlflow_uri, tmp_path, "parents-search")
    cfg = compose([])
    cfg = dataclasses.replace(cfg, tracking=tracking, search=SearchConfig(study="race"))
    calls = []
    monkeypatch.setattr(train_stage, "run_train", _fake_train(calls))
    _both_create_before_either_looks(monkeypatch)
    trials = [(cfg, tmp_path / f"t{n}", HydraRuntime(job_num=n)) for n in (0, 1)]
    assert _in_threads(run_search, *trials) == [0.5, 0.5]

    [parent] = _all_runs(mlflow_uri, "parents-search")
    assert parent.data.tags["study"] == "race" and parent.data.tags["stage"] == "search"
    assert [c.parent_run_id for c in calls] == [parent.info.run_id] * 2


def test_ablate_finds_its_parent_through_tracking_parents(
    mlflow_uri, tmp_path, monkeypatch, capsys
):
    tracking = _tracking(mlflow_uri, tmp_path, "parents-ablate")
    existing = find_or_create_parent(
        tracking, {"ablation": "found", "stage": "ablate"}, "ablation/found", {}
    )
    ablation = AblationConfig(name="found", components={"dropout": ["head.dropout=0.0"]})
    cfg = compose(["stage=ablate"])
    dry = dataclasses.replace(ablation, dry_run=True)
    assert run_ablate(dataclasses.replace(cfg, tracking=tracking, ablation=dry), tmp_path) is None
    assert f"parent run {existing.run_id}" in capsys.readouterr().out
    assert len(_all_runs(mlflow_uri, "parents-ablate")) == 1
