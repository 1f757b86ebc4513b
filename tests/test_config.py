import subprocess
import sys
import time

import pytest
from hydra.errors import ConfigCompositionException

from pipeline.config import compose, run_config_from_dict
from pipeline.errors import ConfigError


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


def test_folder_data_drops_digits_input_settings():
    cfg = compose(["data=folder", "data.root=/tmp/x"])
    assert cfg.backbone.img_size is None and cfg.augment.hflip == 0.5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("optim.lr=abc", "optim.lr='abc' has the wrong type"),
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
    with pytest.raises(ConfigCompositionException):
        compose(["optim.lrr=1"])  # Hydra: key not in struct
    with pytest.raises(ConfigError, match=r"unknown config key optim\.lrr"):
        run_config_from_dict({"optim": {"lrr": 1}})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_bad_value_prints_one_line_and_fails():
    proc = _cli("optim.lr=-1", "hydra.run.dir=/tmp/pipeline-test-out")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "error: optim.lr must be > 0, got -1.0"
    assert "Traceback" not in proc.stderr


def test_cli_unknown_group_option_is_hydra_error_without_traceback():
    proc = _cli("optim=nope")
    assert proc.returncode == 1
    assert "Could not find 'optim/nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unknown_backbone_suggests_close_names():
    start = time.perf_counter()
    proc = _cli("backbone.name=resnet5O", "hydra.run.dir=/tmp/pipeline-test-out")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: unknown backbone 'resnet5O'") and "resnet50" in last
    assert time.perf_counter() - start < 60
