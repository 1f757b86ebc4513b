"""Invalid config values fail before any work, with one line that names the key."""

import pytest

from pipeline.commands.train import run_train
from pipeline.compose import compose
from pipeline.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-0.1", "optim.lr must be > 0, got -0.1"),
        ("optim.momentum=1.5", "optim.momentum must be in [0, 1)"),
        ("optim.betas=[0.9,1.2]", "optim.betas must be two values in [0, 1)"),
        ("augment.scale=[0.5,0.7,1.0]", "augment.scale must be [low, high] with 0 < low"),
        ("augment.scale=[0.9,0.5]", "augment.scale must be [low, high] with 0 < low"),
        ("train.early_stopping.patience=-1", "patience and min_delta must be >= 0, got -1"),
        ("train.early_stopping.monitor=val/f2", "monitor='val/f2' is not one of: val/loss"),
        ("data.val_fraction=0.8", "must leave images to train on"),  # + test 0.2: no train
        ("data.test_fraction=1.0", "must be in [0, 1)"),
        ("data.eval_batch_size=0", "data.eval_batch_size must be >= 1"),
        ("data.num_workers=-1", "data.num_workers must be >= 0"),
        ("sched.min_lr_ratio=2", "sched.min_lr_ratio must be in [0, 1]"),
        ("sched.plateau_factor=1.5", "sched.plateau_factor must be in (0, 1)"),
        ("train.nan_policy=ignore", "train.nan_policy must be stop or skip"),
        ("train.log_every=0", "train.log_every must be >= 1"),
        ("train.grad_clip=0", "train.grad_clip must be > 0"),
        ("train.device=gpu", "train.device must be auto, cpu, cuda or cuda:N"),
        ("seed=-1", "seed must be in [0, 2**32)"),
        ("optim.lr=nan", "optim.lr must be a finite number, got nan"),
        ("optim.weight_decay=inf", "optim.weight_decay must be a finite number, got inf"),
    ],
)
def test_bad_value_fails_in_the_config_with_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        compose([override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_linear_then_full_that_never_unfreezes_fails_in_the_config():
    never = ["finetune=linear_then_full", "finetune.head_epochs=2", "train.epochs=2"]
    with pytest.raises(ConfigError) as info:
        compose(never)
    assert str(info.value) == (
        "finetune.head_epochs=2 >= train.epochs=2: linear_then_full would train the head only, "
        "as finetune=frozen does; raise train.epochs or lower finetune.head_epochs"
    )
    assert compose([*never, "train.epochs=3"]).finetune.head_epochs == 2  # one full epoch
    # A trained run's config read back by a later stage is not refused after the fact.
    assert compose([*never, "stage=evaluate"]).train.epochs == 2


def test_unknown_backbone_fails_before_reading_data_and_suggests_names(
    tiny_cfg, tmp_path, monkeypatch
):
    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the backbone name was checked")

    monkeypatch.setattr("pipeline.commands.train.run_splits", no_data)
    with pytest.raises(ConfigError) as info:
        run_train(tiny_cfg("backbone.name=resnet5O"), tmp_path / "out")
    message = str(info.value)
    assert message.startswith("unknown backbone 'resnet5O'; did you mean ")
    assert "resnet50" in message and "\n" not in message
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_resume_from_nothing_fails_before_any_work(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.commands.train.run_splits", lambda *a, **k: 1 / 0)
    with pytest.raises(ConfigError, match=r"train.resume=/no/such/last.pt: no such checkpoint"):
        run_train(tiny_cfg("train.resume=/no/such/last.pt"), tmp_path / "out")
    with pytest.raises(ConfigError, match=r"train.resume=0{32}: no such run in sqlite"):
        run_train(tiny_cfg(f"train.resume={'0' * 32}"), tmp_path / "out")


def test_resume_from_a_file_that_is_not_last_pt_says_so(tiny_cfg, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr("pipeline.commands.train.run_splits", lambda *a, **k: 1 / 0)
    junk, best = tmp_path / "junk.pt", tmp_path / "best.pt"
    junk.write_text("not a checkpoint")
    torch.save({"model": {}, "epoch": 0}, best)
    for path, message in (
        (junk, r"junk.pt is not a readable training checkpoint \(last.pt\): "),
        (best, r"not a last.pt training checkpoint \(best.pt holds weights only"),
    ):
        with pytest.raises(ConfigError, match=message) as info:
            run_train(tiny_cfg(f"train.resume={path}"), tmp_path / "out")
        assert "\n" not in str(info.value)


def test_resume_with_another_model_fails_before_touching_the_finished_run(
    tiny_cfg, mlflow_uri, tmp_path
):
    from mlflow.tracking import MlflowClient

    from tests.conftest import write_image_folder

    root = write_image_folder(tmp_path / "imgs", per_class=6)
    done = run_train(tiny_cfg("data=folder", f"data.root={root}"), tmp_path / "done")
    other = tiny_cfg(
        "data=folder", f"data.root={root}", "head=mlp", "train.epochs=2",
        f"train.resume={done.run_id}",
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"the checkpoint's model does not fit this config"):
        run_train(other, tmp_path / "again")
    assert MlflowClient(mlflow_uri).get_run(done.run_id).info.status == "FINISHED"


def test_batch_of_one_with_batchnorm_fails_before_an_mlflow_run_exists(
    tiny_cfg, image_folder, tmp_path
):
    store = tmp_path / "store" / "mlflow.db"
    cfg = tiny_cfg(
        "data=folder", f"data.root={image_folder}", "data.batch_size=1",
        f"tracking.uri=sqlite:///{store}",
    )  # fmt: skip
    with pytest.raises(
        ConfigError,
        match=r"BatchNorm needs 2 or more images per batch, got data\.batch_size=1: raise it",
    ):
        run_train(cfg, tmp_path / "out")
    assert not store.exists()  # failed on the config: no run, not even a store


def test_batch_of_one_without_training_batchnorm_trains(tiny_cfg, image_folder, tmp_path):
    # finetune=frozen keeps the backbone's BatchNorm in eval mode; the linear head has none.
    cfg = tiny_cfg(
        "data=folder", f"data.root={image_folder}", "data.batch_size=1", "finetune=frozen",
        "tracking.enabled=false",
    )  # fmt: skip
    assert len(run_train(cfg, tmp_path / "out").fit.history) == 1
