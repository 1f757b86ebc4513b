"""Hyperparameter search: the Optuna sweeper configs compose, map Hydra's sweep syntax and
continue a study from its storage; stage=search nests trials."""

import dataclasses
import subprocess
import sys

import optuna
import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.pipeline_optuna_sweeper.optuna_sweeper import OptunaSweeper, search_space
from pipeline.commands.runtime import HydraRuntime
from pipeline.commands.search import run_search
from pipeline.compose import compose, register_configs
from pipeline.config import CONF_DIR, SearchConfig, run_config_from_dict
from pipeline.errors import ConfigError
from pipeline.experiments.search import objective
from tests.conftest import tiny_overrides


def _hydra_cfg(*overrides):
    register_configs()  # the base_<group> schemas the conf/ options start from
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=True)


def test_optuna_search_config_composes_with_the_four_knobs():
    cfg = _hydra_cfg("hparams_search=lite0_digits")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.pipeline_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.study_name == "lite0_digits"
    assert set(sweeper.params) == {"optim.lr", "optim.weight_decay", "head.dropout", "finetune"}
    assert sweeper.params["optim.lr"].startswith("tag(log, interval(")
    run_cfg = run_config_from_dict(OmegaConf.to_container(cfg, resolve=False))
    assert run_cfg.stage == "search" and run_cfg.search.metric == "val/acc"
    assert run_cfg.search.direction == sweeper.direction
    # One trial's overrides, as the sweeper would pass them, give a valid config.
    trial = compose(
        [
            "hparams_search=lite0_digits",
            "optim.lr=0.003",
            "optim.weight_decay=0.02",
            "head.dropout=0.3",
            "finetune=frozen",
        ]
    )
    assert (trial.optim.lr, trial.head.dropout, trial.finetune.strategy) == (0.003, 0.3, "frozen")


def test_depth_search_config_needs_partial_finetuning():
    if not (CONF_DIR / "finetune" / "partial.yaml").exists():
        pytest.skip("finetune=partial (train_last_n) is not on this branch")
    cfg = _hydra_cfg("hparams_search=lite0_digits_depth")
    assert "finetune.train_last_n" in cfg.hydra.sweeper.params
    assert cfg.finetune.strategy == "partial"


def test_objective_is_the_kept_epochs_validation_metric():
    history = [{"val/acc": 0.5, "val/loss": 1.0}, {"val/acc": 0.7, "val/loss": 0.8}]
    assert objective(history, 0, "val/acc") == 0.5
    assert objective(history, 1, "val/loss") == 0.8
    assert SearchConfig(direction="minimize").better(0.7, 0.8)
    assert not SearchConfig().better(0.7, 0.8) and SearchConfig().better(0.1, None)


@pytest.mark.slow
def test_trials_nest_under_one_study_parent_that_keeps_the_best(
    tiny_cfg, image_folder, mlflow_uri, tmp_path
):
    cfg = tiny_cfg(
        "stage=search",
        "data=folder",
        f"data.root={image_folder}",
        "data.batch_size=8",
        "tracking.experiment=tests-search",
    )
    cfg = dataclasses.replace(
        cfg, search=SearchConfig(study="s1", metric="val/loss", direction="minimize")
    )
    values = []
    for trial, lr in enumerate(("1e-3", "1e-12")):
        runtime = HydraRuntime(  # as a sweep's job would get it
            overrides=(f"optim.lr={lr}", "train.epochs=1"),
            job_num=trial,
            swept=frozenset({"optim.lr"}),
        )
        values.append(run_search(cfg, tmp_path / f"trial{trial}", runtime))
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tests-search").experiment_id
    [parent] = client.search_runs([experiment], "tags.stage = 'search' and tags.study = 's1'")
    trials = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["trial"] for r in trials) == ["0", "1"]
    by_trial = {int(r.data.tags["trial"]): r for r in trials}
    for trial, value in enumerate(values):  # the returned objective is the logged val/loss
        history = client.get_metric_history(by_trial[trial].info.run_id, "val/loss")
        assert value == pytest.approx(history[-1].value)
    best = min(range(2), key=lambda t: values[t])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best/val/loss"] == pytest.approx(values[best])
    assert parent.data.tags["best_run_id"] == by_trial[best].info.run_id
    assert parent.data.tags["best.optim.lr"] == ("1e-3", "1e-12")[best]
    assert "best.train.epochs" not in parent.data.tags  # only swept keys


def test_sweep_syntax_maps_to_optuna_distributions():
    space, fixed = search_space(
        [
            "optim.lr=tag(log, interval(1e-4, 3e-2))",
            "head.dropout=interval(0.0, 0.5)",
            "finetune=choice(frozen, full)",
            "finetune.train_last_n=range(0, 7)",  # Hydra's range stops before 7
            "data.batch_size=range(8, 40, 8)",
            "train.epochs=2",
            "head.dropout=0.1",  # a later fixed value takes its key out of the search
        ]
    )
    assert space == {
        "optim.lr": FloatDistribution(1e-4, 3e-2, log=True),
        "finetune": CategoricalDistribution(["frozen", "full"]),
        "finetune.train_last_n": IntDistribution(0, 6),
        "data.batch_size": IntDistribution(8, 32, step=8),
    }
    assert fixed == {"train.epochs": "2", "head.dropout": "0.1"}
    with pytest.raises(ConfigError, match=r"optim.lr: tag\(log, \.\.\.\) applies to interval"):
        search_space(["optim.lr=tag(log, choice(1e-3, 1e-2))"])


class _RecordingLauncher:
    """Runs no training: a trial's objective is its learning rate, or what `objective` says."""

    def __init__(self, objective=lambda values: float(values["optim.lr"])):
        self.objective = objective
        self.jobs: list[tuple[int, dict[str, str]]] = []

    def launch(self, job_overrides, initial_job_idx):
        returns = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            values = dict(o.split("=", 1) for o in overrides)
            self.jobs.append((num, values))
            job = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            job.return_value = self.objective(values)
            returns.append(job)
        return returns


def _sweep(tmp_path, run, n_trials, direction="maximize", launcher=None):
    """One invocation of the sweeper against the study `s` in tmp_path/optuna.db."""
    sweeper = OptunaSweeper(
        sampler=OmegaConf.create(
            {"_target_": "optuna.samplers.TPESampler", "seed": 7, "n_startup_trials": 10}
        ),
        direction=direction,
        storage=f"sqlite:///{tmp_path / 'studies' / 'optuna.db'}",  # studies/ made on demand
        study_name="s",
        n_trials=n_trials,
        n_jobs=2,
        params=OmegaConf.create(
            {"optim.lr": "tag(log, interval(1e-4, 1e-1))", "finetune": "choice(frozen, full)"}
        ),
    )
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / run)}}})
    sweeper.launcher = launcher or _RecordingLauncher()
    sweeper.sweep(["train.epochs=1"])
    return sweeper.launcher.jobs


def _stored_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies' / 'optuna.db'}"
    return optuna.load_study(study_name="s", storage=storage).trials


def test_study_in_sqlite_storage_continues_where_the_last_invocation_stopped(tmp_path):
    first = _sweep(tmp_path, "run1", n_trials=3)
    second = _sweep(tmp_path, "run2", n_trials=2)
    # Hydra job numbers are the Optuna trial numbers: they continue, and n_trials adds up.
    assert [num for num, _ in first] == [0, 1, 2]
    assert [num for num, _ in second] == [3, 4]
    assert all(values["train.epochs"] == "1" for _, values in first + second)
    trials = _stored_trials(tmp_path)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    # The seeded sampler does not re-propose the first invocation's trials.
    first_lrs = {values["optim.lr"] for _, values in first}
    assert first_lrs.isdisjoint(values["optim.lr"] for _, values in second)
    results = yaml.safe_load((tmp_path / "run2" / "optimization_results.yaml").read_text())
    lrs = [float(values["optim.lr"]) for _, values in first + second]
    assert results["n_trials"] == 5 and results["best_value"] == pytest.approx(max(lrs))


def test_continuing_a_study_in_the_other_direction_is_refused(tmp_path):
    _sweep(tmp_path, "run1", n_trials=1)
    with pytest.raises(SystemExit, match=r"^error: study 's' in .* was run to maximize"):
        _sweep(tmp_path, "run2", n_trials=1, direction="minimize")


def test_a_trial_without_an_objective_fails_in_the_study_with_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: a trial returned None.*stage=search$"):
        _sweep(tmp_path, "run1", n_trials=1, launcher=_RecordingLauncher(lambda values: None))
    assert [t.state for t in _stored_trials(tmp_path)] == [TrialState.FAIL]


def test_a_trial_that_exits_is_marked_failed_not_left_running(tmp_path):
    class ExitingLauncher(_RecordingLauncher):
        def launch(self, job_overrides, initial_job_idx):
            raise SystemExit("error: data.root=/nowhere does not exist")

    with pytest.raises(SystemExit, match=r"data\.root"):
        _sweep(tmp_path, "run1", n_trials=1, launcher=ExitingLauncher())
    assert [t.state for t in _stored_trials(tmp_path)] == [TrialState.FAIL]


@pytest.mark.slow
def test_documented_command_continues_a_study_in_sqlite_storage(image_folder, mlflow_uri, tmp_path):
    """The documented `hydra.sweeper.storage=sqlite:///mlruns/optuna.db`, run twice from one folder."""
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "hparams_search=lite0_digits",
        "hydra.sweeper.storage=sqlite:///mlruns/optuna.db",
        *tiny_overrides(mlflow_uri, tmp_path),
        "data=folder",
        f"data.root={image_folder}",
        "data.batch_size=8",
        "search.study=e2e",
    ]
    for run, n_trials in (("run1", 2), ("run2", 1)):
        proc = subprocess.run(
            [*command, f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweep.dir={tmp_path / run}"],
            cwd=tmp_path,  # the storage path is relative to where the command runs
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "mlruns" / "optuna.db").is_file()
    assert sorted(p.name for p in (tmp_path / "run2").iterdir() if p.is_dir()) == ["2"]
    results = yaml.safe_load((tmp_path / "run2" / "optimization_results.yaml").read_text())
    assert results["study"] == "e2e" and results["n_trials"] == 3
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tests").experiment_id
    [parent] = client.search_runs([experiment], "tags.stage = 'search' and tags.study = 'e2e'")
    trials = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["trial"] for r in trials) == ["0", "1", "2"]
    assert parent.data.metrics["trials"] == 3
