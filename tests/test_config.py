import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.compose import compose, register_configs
from pipeline.config import CONF_DIR, run_config_from_dict
from pipeline.errors import ConfigError
from pipeline.evaluation.baselines import BaselineConfig
from pipeline.evaluation.evaluate import EvalConfig
from pipeline.evaluation.visualize import VisualizeConfig
from pipeline.models.head import HeadConfig
from pipeline.tracking.config import TrackingConfig
from pipeline.training.config import TrainConfig
from pipeline.training.finetune import FinetuneConfig
from pipeline.training.lr_find import LRFindConfig
from pipeline.training.optim import OptimConfig
from pipeline.training.sched import SchedConfig


def test_default_config_is_the_quickstart():
    cfg = compose()
    assert cfg.stage == "train"
    assert cfg.data.name == "digits"
    assert cfg.backbone.name == "tf_efficientnet_lite0" and cfg.backbone.pretrained
    assert cfg.backbone.img_size == 64 and cfg.augment.hflip == 0.0  # set by data=digits
    assert cfg.tracking.uri == "sqlite:///mlruns/mlflow.db"
    assert cfg.tracking.experiment == "quickstart"


@pytest.mark.parametrize(
    "group",
    ["data", "augment", "backbone", "head", "finetune", "optim", "sched", "train", "tracking"],
)
def test_every_group_is_a_typed_config(group):
    cfg = compose()
    assert type(getattr(cfg, group)).__name__.endswith("Config")


def test_group_choice_and_values_compose():
    cfg = compose(
        ["backbone=resnet50", "optim=sgd", "optim.lr=3e-4", "sched=step", "finetune=frozen"]
    )
    assert cfg.backbone.name == "resnet50"
    assert cfg.optim.name == "sgd" and cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.sched.name == "step" and cfg.finetune.strategy == "frozen"


@pytest.mark.parametrize(
    ("group", "dataclass"),
    [
        ("head", HeadConfig),
        ("finetune", FinetuneConfig),
        ("optim", OptimConfig),
        ("sched", SchedConfig),
        ("train", TrainConfig),
        ("tracking", TrackingConfig),
        ("eval", EvalConfig),
        ("visualize", VisualizeConfig),
        ("lr_find", LRFindConfig),
        ("baseline", BaselineConfig),
    ],
)
def test_default_options_are_the_dataclass_defaults(group, dataclass):
    # One source of defaults: what `python -m pipeline` runs with is what the dataclass says
    # (~experiment: without the quickstart preset, which sets train.epochs and tracking.experiment).
    assert getattr(compose(["~experiment"]), group) == dataclass()


def test_a_required_value_is_missing_until_given():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        folder = hydra_compose("config", overrides=["data=folder"])
        digits = hydra_compose("config")
    assert OmegaConf.is_missing(folder.data, "root")  # `root: ???` in --cfg job
    assert digits.data.root is None and not OmegaConf.is_missing(digits.data, "root")
    # The RunConfig holds None; the data loader names what to set (tests/test_data_sources.py).
    assert compose(["data=folder"]).data.root is None
    assert compose(["data=csv", "data.root=x.csv"]).data.root == "x.csv"


def test_folder_data_drops_digits_input_settings():
    cfg = compose(["data=folder", "data.root=some/folder"])
    assert cfg.backbone.img_size is None and cfg.augment.hflip == 0.5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("optim.lr=abc", r"optim.lr='abc' has the wrong type \(expected float\)"),
        ("optim.lr=null", "optim.lr must not be null"),
        ("optim.betas=[0.9,abc]", r"optim.betas\[1\]='abc' has the wrong type \(expected float\)"),
        ("backbone.img_size=abc", r"backbone.img_size='abc' has the wrong type \(expected int\)"),
        ("augment.scale=[0.5]", r"augment.scale must be \[low, high\] with 0 < low <= high <= 1"),
        ("optim.name=lion", "optim.name='lion' is not one of"),
        ("train.early_stopping.patience=-2", "patience"),
        ("data.val_fraction=0.8", "must leave images to train on"),
    ],
)
def test_bad_values_fail_with_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        compose([override])
    assert "\n" not in str(info.value)


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match=r"unknown config key optim\.lrr"):
        run_config_from_dict({"optim": {"lrr": 1}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1e-3", "unknown config key optim.lrr; did you mean optim.lr?"),
        (
            "train.early_stopping.patiense=3",
            "unknown config key train.early_stopping.patiense; "
            "did you mean train.early_stopping.patience?",
        ),
        ("optm=sgd", "unknown config key optm; did you mean optim?"),
        ("optim=adamww", "unknown optim option 'adamww'; did you mean adamw, adam?"),
        ("optim=zzz", "unknown optim option 'zzz' (known: adagrad, adam, adamw, rmsprop, sgd)"),
        ("experiment=nope", "unknown experiment option 'nope' (known: quickstart)"),
    ],
)
def test_typos_in_keys_and_group_options_suggest_the_valid_ones(override, message):
    with pytest.raises(ConfigError) as info:
        compose([override])
    assert str(info.value) == message


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_bad_value_prints_one_line_and_fails(tmp_path):
    proc = _cli("optim.lr=-1", f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "error: optim.lr must be > 0, got -1.0"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["optim.lrr=1e-3"], "error: unknown config key optim.lrr; did you mean optim.lr?"),
        (["optim=adamww"], "error: unknown optim option 'adamww'; did you mean adamw, adam?"),
        (["optim.lr=-1"], "error: optim.lr must be > 0, got -1.0"),
        (["-m", "optim.lr=abc,1e-3"], "error: optim.lr='abc' has the wrong type (expected float)"),
        (  # fails in the stage, after Hydra made its output folder
            ["stage=evaluate", f"run_id={'0' * 32}"],
            f"error: run_id={'0' * 32} not found in sqlite:///mlruns/mlflow.db (pass "
            "tracking.uri=... where it was logged, or checkpoint=<path>)",
        ),
    ],
)
def test_cli_config_error_is_one_line_and_leaves_nothing_behind(tmp_path, args, line):
    worktree = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(worktree), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *args, "train.threads=2"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [line]
    assert not (tmp_path / "outputs").exists()
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_a_stage_failing_after_fetching_its_trained_run_leaves_no_folder(tmp_path, monkeypatch):
    # e.g. eval.tta=flip refused once the run's config.yaml says it trained without flips:
    # the downloaded copy of the trained run is no output of this command.
    from pipeline.__main__ import _remove_if_unused
    from pipeline.commands.runtime import HydraRuntime

    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "outputs" / "2026-11-30" / "06-00-00"
    (out_dir / ".hydra").mkdir(parents=True)
    (out_dir / "__main__.log").write_text("")
    (out_dir / "source_run").mkdir()
    (out_dir / "source_run" / "best.pt").write_bytes(b"weights")
    _remove_if_unused(HydraRuntime(output_dir=out_dir))
    assert not (tmp_path / "outputs").exists()


@pytest.mark.timeout(60)  # the name is checked before any weights or data are touched
def test_cli_unknown_backbone_suggests_close_names(tmp_path):
    proc = _cli("backbone.name=resnet5O", f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unknown backbone 'resnet5O'") and "resnet50" in last


def test_a_group_set_to_null_on_the_command_line_is_one_line_naming_the_tilde_form():
    with pytest.raises(ConfigError, match=r"use ~<group>$"):
        compose(["experiment=null"])
