"""MLflow bookkeeping: run names, creating the local store, credentials in the URI."""

import multiprocessing
import random
import resource
import signal
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.commands import lr_find as lr_find_stage
from pipeline.commands import train as train_stage
from pipeline.commands.lr_find import run_lr_find
from pipeline.commands.train import run_train
from pipeline.compose import compose
from pipeline.errors import ConfigError
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.credentials import redact, take_credentials
from pipeline.tracking.runs import client_and_experiment, run_name_for, start_run
from pipeline.tracking.store import mlflow_client

# --- run names --------------------------------------------------------------------------------


@pytest.mark.slow  # two training runs
def test_two_runs_with_one_seed_get_different_names_that_say_what_they_are(
    tiny_cfg, image_folder, tmp_path
):
    cfg = tiny_cfg(
        "data=folder", f"data.root={image_folder}", "data.batch_size=4", "tracking.experiment=names"
    )
    first = run_train(cfg, tmp_path / "a")  # both seed everything with seed 42 first
    second = run_train(cfg, tmp_path / "b")
    client = MlflowClient(cfg.tracking.uri)
    names = [client.get_run(r.run_id).info.run_name for r in (first, second)]
    assert names[0] == "test_efficientnet-full-folder-s42"
    assert names[1].startswith(names[0] + "-") and len(names[1]) == len(names[0]) + 5
    assert client.get_run(second.run_id).data.tags["mlflow.runName"] == names[1]


def test_start_run_names_stay_unique_under_a_seeded_random(mlflow_uri, tmp_path):
    tracking = TrackingConfig(
        uri=mlflow_uri, artifact_root=str(tmp_path / "artifacts"), experiment="names-seeded"
    )
    names = []
    for _ in range(3):
        random.seed(0)  # what seed_everything does before every run
        with start_run(tracking, tags={"stage": "lr_find"}, name="lr_find/x-s0") as run:
            names.append(run.name)
    assert names[0] == "lr_find/x-s0"
    assert len(set(names)) == 3
    # tracking.run_name replaces the built name, and is kept unique the same way.
    named = TrackingConfig(**{**tracking.__dict__, "run_name": "mine"})
    with start_run(named, name="ignored") as a, start_run(named, name="ignored") as b:
        assert a.name == "mine" and b.name.startswith("mine-")


def test_run_name_for_says_backbone_finetune_data_and_seed():
    cfg = compose(["backbone=resnet18", "finetune=frozen", "data=cifar10", "seed=7"])
    assert run_name_for(cfg, "train") == "resnet18-frozen-cifar10-s7"
    assert run_name_for(cfg, "lr_find") == "lr_find/resnet18-frozen-cifar10-s7"
    folds = compose(["backbone=resnet18", "data.kfold=5", "seed=0"])
    assert run_name_for(folds, "train") == "resnet18-full-digits-kfold5-s0"
    one_fold = compose(["backbone=resnet18", "data.kfold=5", "data.fold=2", "seed=0"])
    assert run_name_for(one_fold, "train") == "resnet18-full-digits-fold2-s0"


# --- the local store ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "module"), [(run_train, train_stage), (run_lr_find, lr_find_stage)]
)
def test_a_bad_tracking_uri_fails_before_any_data_or_model_work(
    stage, module, tiny_cfg, monkeypatch, tmp_path
):
    def no_data(*args, **kwargs):
        raise AssertionError("the data was built before the tracking store was checked")

    monkeypatch.setattr(module, "run_splits", no_data)
    with pytest.raises(ConfigError, match=r"^tracking.uri=foo://x: cannot open the MLflow store"):
        stage(tiny_cfg("tracking.uri=foo://x"), tmp_path / "out")


def _open_store(uri, barrier=None, file_size_limit=None, bypass=False):
    """In a forked child: open (creating) the store, optionally with a small file size
    limit (a disk that fills up) or by MLflow alone (how the store used to be made)."""
    if file_size_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails, nothing dies
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.RLIM_INFINITY))
    if barrier:
        barrier.wait()
    try:
        MlflowClient(uri) if bypass else mlflow_client(uri)
    except Exception as exc:
        print(f"child failed: {str(exc).splitlines()[0]}", flush=True)
        raise SystemExit(1) from None


def _in_children(*kwargs_list) -> list[int]:
    """Run _open_store once per kwargs in forked processes at once; their exit codes."""
    fork = multiprocessing.get_context("fork")
    children = [fork.Process(target=_open_store, kwargs=kwargs) for kwargs in kwargs_list]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    return [child.exitcode for child in children]


def _run_count(db) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT count(*) FROM runs").fetchone()[0]


def test_a_local_stores_artifacts_go_beside_it_unless_told_otherwise(mlflow_uri, tmp_path):
    # Before: tracking.uri=sqlite:///elsewhere/mlflow.db put the files in ./mlruns/artifacts.
    db = Path(mlflow_uri.removeprefix("sqlite:///"))
    client, experiment_id = client_and_experiment(
        TrackingConfig(uri=mlflow_uri, experiment="artifacts-beside-the-store")
    )
    location = client.get_experiment(experiment_id).artifact_location
    assert location == (db.parent / "artifacts").resolve().as_uri()

    told = TrackingConfig(
        uri=mlflow_uri, experiment="artifacts-told", artifact_root=str(tmp_path / "files")
    )
    client, experiment_id = client_and_experiment(told)
    assert client.get_experiment(experiment_id).artifact_location == (tmp_path / "files").as_uri()


@pytest.mark.slow  # creating an MLflow store: its ~60 schema migrations take seconds
def test_first_runs_at_once_on_a_fresh_store_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    barrier = multiprocessing.get_context("fork").Barrier(3)
    # Before: 2 of 3 failed with "duplicate column name: step".
    assert _in_children(*[{"uri": uri, "barrier": barrier}] * 3) == [0, 0, 0]
    tracking = TrackingConfig(uri=uri, artifact_root=str(tmp_path / "artifacts"))
    with start_run(tracking, name="after") as run:
        run.log_metrics({"x": 1.0})
    assert _run_count(tmp_path / "fresh" / "mlflow.db") == 1


@pytest.mark.slow  # creates a store three times
def test_a_full_disk_while_the_store_is_created_leaves_nothing_broken(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracking = TrackingConfig(uri=uri, artifact_root=str(tmp_path / "artifacts"))
    # The store is ~1 MB when made; the disk "fills" at 300 kB, midway through.
    assert _in_children({"uri": uri, "file_size_limit": 300_000}) == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db.lock"]  # no half store
    with start_run(tracking, name="after-full-disk") as run:
        run.log_metrics({"x": 1.0})

    # A store half made by MLflow alone (before this fix) with no run in it is made anew.
    db = tmp_path / "old" / "mlflow.db"  # a new path: this process caches the first store
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    tracking = TrackingConfig(uri=uri, artifact_root=str(tmp_path / "artifacts"))
    assert _in_children({"uri": uri, "file_size_limit": 300_000, "bypass": True}) == [1]
    assert db.is_file()  # "table spans already exists" whenever it was opened again
    with start_run(tracking, name="after-repair") as run:
        run.log_metrics({"x": 1.0})
    assert _run_count(db) == 1


def test_the_default_relative_sqlite_uri_opens_an_existing_store(tmp_path, monkeypatch):
    # tracking.uri=sqlite:///mlruns/mlflow.db (the default) is relative to the working folder;
    # before the fix every run after a store's first failed: "cannot open the MLflow store:
    # relative path can't be expressed as a file URI".
    monkeypatch.chdir(tmp_path)
    tracking = TrackingConfig(uri="sqlite:///mlruns/mlflow.db", experiment="relative")
    for name in ("first", "second"):
        with start_run(tracking, name=name):
            pass
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("relative").experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["first", "second"]


# --- credentials in the URI -----------------------------------------------------------------


def test_a_password_in_the_tracking_uri_goes_to_mlflows_environment_variables(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)  # and restored after the test
    cfg = compose(["tracking.uri=https://alice:s%40cret@mlflow.example.com:8443/base"])
    assert cfg.tracking.uri == "https://mlflow.example.com:8443/base"
    assert "s@cret" not in str(cfg.to_dict())
    import os

    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s@cret"


def test_a_database_password_in_the_tracking_uri_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^tracking.uri=postgresql://db:5432/mlflow: a data"):
        take_credentials(TrackingConfig(uri="postgresql://mlflow:s3cret@db:5432/mlflow"))
    bare = TrackingConfig(uri="postgresql://mlflow@db:5432/mlflow")
    assert take_credentials(bare) is bare  # a user name alone is kept: no secret


def test_redact_takes_user_and_password_out_of_every_uri_in_a_text():
    text = "- tracking.uri=http://u:s3cret@host:5000\nuri: https://u:p@h/x?y=a@b file:///a@b"
    assert redact(text) == "- tracking.uri=http://host:5000\nuri: https://h/x?y=a@b file:///a@b"


def test_redact_takes_out_a_password_that_holds_an_unescaped_at_sign():
    # urlsplit (and MLflow) split user info at the last '@': so must the redaction.
    text = "tracking.uri=http://alice:p@ss@127.0.0.1:5000/x and ops@example.org"
    assert redact(text) == "tracking.uri=http://127.0.0.1:5000/x and ops@example.org"
