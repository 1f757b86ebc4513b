"""Hyperparameter search: the Optuna sweeper configs compose; stage=search nests trials."""

import dataclasses

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from mlflow.tracking import MlflowClient

from pipeline.config import CONF_DIR, compose, run_config_from_dict
from pipeline.search import SearchConfig, objective
from pipeline.stages import run_search


def _hydra_cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=True)


def test_optuna_search_config_composes_with_the_four_knobs():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from omegaconf import OmegaConf

    cfg = _hydra_cfg("hparams_search=lite0_digits")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
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
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
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
    tiny_cfg, image_folder, mlflow_uri, tmp_path, monkeypatch
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
        monkeypatch.setattr(
            "pipeline.stages.search._trial_overrides",
            lambda t=trial, lr=lr: (t, [f"optim.lr={lr}", "train.epochs=1"], {"optim.lr"}),
        )
        values.append(run_search(cfg, tmp_path / f"trial{trial}"))
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
