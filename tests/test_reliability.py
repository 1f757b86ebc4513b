"""Interruptions and bad states: each failure is provoked, and the message, the MLflow status
and the surviving checkpoint are checked."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.commands.train import run_train
from pipeline.compose import compose
from pipeline.errors import TrainingError
from pipeline.signals import Interrupted, sigterm_as_interrupt
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.guards import LossGuard
from tests.conftest import tiny_overrides, write_image_folder

EPOCH_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "lr")


def _folder_cfg(mlflow_uri, tmp_path, image_folder):
    """24 tiny images, 4 per batch: 3 steps an epoch, augmentation and dropout on, so every
    random state (loader shuffle, albumentations, torch) matters for an exact resume."""

    def make(*extra):
        return compose(
            [
                *tiny_overrides(mlflow_uri, tmp_path),
                "data=folder",
                f"data.root={image_folder}",
                "data.batch_size=4",
                "data.num_workers=0",
                "head.dropout=0.3",
                "train.epochs=2",
                "train.early_stopping.patience=10",
                *extra,
            ]
        )

    return make


@pytest.fixture
def folder_cfg(mlflow_uri, tmp_path, image_folder):
    return _folder_cfg(mlflow_uri, tmp_path, image_folder)


@pytest.fixture(scope="module")
def uninterrupted(mlflow_uri, tmp_path_factory):
    """One uninterrupted run of `folder_cfg()`: what the resume tests that keep its settings
    compare with, and the run whose tags are checked (each trained this same run before)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    cfg = _folder_cfg(mlflow_uri, root, write_image_folder(root / "images"))()
    return SimpleNamespace(result=run_train(cfg, root / "out"), out=root / "out")


def _interrupt_on_call(monkeypatch, call: int, action):
    """Run `action` instead of the `call`-th epoch of training (1-based)."""
    import pipeline.training.loop

    real = pipeline.training.loop.train_one_epoch
    calls = {"n": 0}

    def patched(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline.training.loop, "train_one_epoch", patched)


def _raise(exc):
    def action():
        raise exc

    return action


def _cut_at_epoch_then_resume(folder_cfg, tmp_path, monkeypatch, epoch: int, extra):
    """(uninterrupted run, run interrupted at `epoch` (1-based) then resumed, the last epoch
    its checkpoint held when interrupted (0-based))."""
    full = run_train(folder_cfg(*extra), tmp_path / "full")
    _interrupt_on_call(monkeypatch, epoch, _raise(KeyboardInterrupt()))
    with pytest.raises(Interrupted):
        run_train(folder_cfg(*extra), tmp_path / "cut")
    monkeypatch.undo()
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    saved_epoch = load_checkpoint(last)["epoch"]
    resumed = run_train(folder_cfg(*extra, f"train.resume={last}"), tmp_path / "resumed")
    return full, resumed, saved_epoch


def _losses(result) -> list[float]:
    return [epoch["train/loss"] for epoch in result.fit.history]


def _history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


@pytest.mark.slow  # two short trainings, and the shared uninterrupted one
def test_resume_after_interrupt_equals_an_uninterrupted_run(
    folder_cfg, uninterrupted, mlflow_uri, tmp_path, monkeypatch
):
    client = MlflowClient(mlflow_uri)
    full = uninterrupted.result

    _interrupt_on_call(monkeypatch, 2, _raise(KeyboardInterrupt()))
    with pytest.raises(Interrupted) as info:
        run_train(folder_cfg("tracking.run_name=interrupted"), tmp_path / "cut")
    monkeypatch.undo()
    run_id = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id],
        filter_string="tags.mlflow.runName = 'interrupted'",
    )[0].info.run_id
    assert client.get_run(run_id).info.status == "KILLED"
    message = str(info.value)
    assert f"train.resume={run_id}" in message and "\n" not in message
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 0  # epoch 1 was kept, epoch 2 was cut short
    assert set(load_checkpoint(last)) >= {
        "model", "optimizer", "schedule", "scaler", "ema", "early_stopping", "rng", "epoch"
    }  # fmt: skip

    resumed = run_train(folder_cfg(f"train.resume={run_id}"), tmp_path / "resumed")
    assert resumed.run_id == run_id  # the same MLflow run, continued
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_after_epoch"] == "1"
    assert resumed.test_metrics == full.test_metrics  # exact on CPU
    for key in EPOCH_KEYS:  # metrics continue at the next step, equal to the uninterrupted run
        assert _history(client, run_id, key) == _history(client, full.run_id, key), key
    expected = load_checkpoint(uninterrupted.out / "checkpoints" / "last.pt")["model"]
    got = load_checkpoint(last)["model"]  # the resumed run kept writing the same folder
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name


@pytest.mark.parametrize("strategy", ["gradual", "linear_then_full"])
def test_resume_after_a_strategy_unfroze_layers_equals_an_uninterrupted_run(
    folder_cfg, tmp_path, monkeypatch, strategy
):
    # The saved optimizer covers the layers trainable at the saved epoch, not at epoch 0.
    extra = (
        "backbone.name=test_resnet",
        f"finetune={strategy}",
        "finetune.unfreeze_every=1",
        "finetune.head_epochs=1",
        "train.epochs=3",
        "tracking.enabled=false",
    )
    full, resumed, saved = _cut_at_epoch_then_resume(folder_cfg, tmp_path, monkeypatch, 3, extra)
    assert saved == 1  # resumed after the first unfreeze
    assert resumed.test_metrics == full.test_metrics
    assert _losses(resumed) == _losses(full)


@pytest.mark.slow  # three short trainings
def test_resume_with_average_last_averages_the_same_epochs(folder_cfg, tmp_path, monkeypatch):
    # The epochs kept for train.average_last travel in last.pt: the window survives the cut.
    extra = ("train.epochs=3", "train.average_last=2", "tracking.enabled=false")
    full, resumed, saved = _cut_at_epoch_then_resume(folder_cfg, tmp_path, monkeypatch, 3, extra)
    assert saved == 1 and resumed.fit.averaged_epochs == 2
    assert resumed.test_metrics == full.test_metrics


@pytest.mark.parametrize(
    "extra",
    [
        ("augment.mixup_alpha=0.4", "augment.cutmix_alpha=1.0"),  # the mixing generator
        ("finetune=frozen", "augment=none", "train.cache_features=true"),  # feature shuffling
        ("data.num_workers=2",),  # new workers after the restart: order and augmentations
    ],
    ids=["mixup", "cached_features", "loader_workers"],
)
def test_resume_repeats_the_random_draws_of_mixing_features_and_workers(
    folder_cfg, tmp_path, monkeypatch, extra
):
    extra = (*extra, "train.epochs=3", "tracking.enabled=false")
    full, resumed, _ = _cut_at_epoch_then_resume(folder_cfg, tmp_path, monkeypatch, 2, extra)
    assert _losses(resumed) == _losses(full)
    assert resumed.test_metrics == full.test_metrics


def test_loader_workers_do_not_change_the_result(folder_cfg, uninterrupted, tmp_path):
    # Augmentations are seeded per batch from (seed, epoch, position), not per worker.
    runs = [
        uninterrupted.result,  # data.num_workers=0
        run_train(folder_cfg("data.num_workers=2", "tracking.enabled=false"), tmp_path / "2"),
    ]
    assert _losses(runs[0]) == _losses(runs[1])
    assert runs[0].test_metrics == runs[1].test_metrics


@pytest.mark.slow  # two short trainings
def test_sigterm_marks_killed_keeps_checkpoint_and_resumes_from_artifacts(
    folder_cfg, mlflow_uri, tmp_path, monkeypatch
):
    client = MlflowClient(mlflow_uri)
    handler_before = signal.getsignal(signal.SIGTERM)
    _interrupt_on_call(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(Interrupted, match=r"^SIGTERM: MLflow run \w+ marked KILLED") as info:
        run_train(folder_cfg("tracking.run_name=sigterm"), tmp_path / "a")
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) is handler_before  # handler restored
    run_id = str(info.value).split()[3]
    assert client.get_run(run_id).info.status == "KILLED"
    uploaded = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert {"checkpoints/last.pt", "checkpoints/best.pt"} <= uploaded

    # The local folder is gone (another machine): resume from the run's artifacts.
    for name in ("last.pt", "best.pt"):
        (tmp_path / "a" / "checkpoints" / name).unlink()
    resumed = run_train(folder_cfg(f"train.resume={run_id}"), tmp_path / "b")
    assert resumed.run_id == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [s for s, _ in _history(client, run_id, "val/loss")] == [0, 1]


def test_sigterm_handler_raises_in_block_and_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs at the next bytecode; never gets here
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_cli_sigterm_exits_nonzero_with_one_line(image_folder, mlflow_uri, tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        import pipeline.training.loop
        real, calls = pipeline.training.loop.train_one_epoch, []
        def patched(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return real(*a, **k)
        pipeline.training.loop.train_one_epoch = patched
        sys.argv = ["pipeline", "data=folder", "data.root={image_folder}", "data.batch_size=4",
            "data.num_workers=0", "backbone.name=test_efficientnet", "backbone.pretrained=false",
            "backbone.img_size=32", "train.epochs=2", "tracking.uri={mlflow_uri}",
            "tracking.artifact_root={tmp_path / "artifacts"}", "tracking.experiment=tests",
            "tracking.run_name=cli-sigterm", "hydra.run.dir={tmp_path / "out"}"]
        from pipeline.__main__ import main
        main()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: SIGTERM: MLflow run ") and "train.resume=" in last
    assert "Traceback" not in proc.stderr
    client = MlflowClient(mlflow_uri)
    run = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id],
        filter_string="tags.mlflow.runName = 'cli-sigterm'",
    )[0]
    assert run.info.status == "KILLED"


def _poison_forward(monkeypatch, at_step: int, make_output):
    """Classifier.forward returns `make_output(logits)` on the `at_step`-th training batch."""
    from pipeline.models.classifier import Classifier

    real = Classifier.forward
    steps = {"n": 0}

    def forward(self, x):
        logits = real(self, x)
        if self.training:
            steps["n"] += 1
            if steps["n"] == at_step:
                return make_output(logits)
        return logits

    monkeypatch.setattr(Classifier, "forward", forward)


def _run_named(client, name):
    experiment = client.get_experiment_by_name("tests").experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.runName = '{name}'")[0]


def test_nan_loss_stops_with_step_number_and_keeps_last_good_checkpoint(
    folder_cfg, mlflow_uri, tmp_path, monkeypatch
):
    _poison_forward(monkeypatch, 5, lambda logits: logits * float("nan"))  # epoch 2, batch 2
    with pytest.raises(TrainingError, match=r"non-finite training loss at step 5 ") as info:
        run_train(folder_cfg("tracking.run_name=nan-stop"), tmp_path / "out")
    assert "train.nan_policy=skip" in str(info.value)
    client = MlflowClient(mlflow_uri)
    run = _run_named(client, "nan-stop")
    assert run.info.status == "FAILED" and "at step 5" in run.data.tags["error"]
    state = load_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert "checkpoints/last.pt" in {
        a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")
    }


def test_nan_policy_skip_drops_the_step_and_finishes(folder_cfg, mlflow_uri, tmp_path, monkeypatch):
    _poison_forward(monkeypatch, 2, lambda logits: logits * float("inf"))
    result = run_train(
        folder_cfg("train.nan_policy=skip", "train.epochs=1", "tracking.run_name=nan-skip"),
        tmp_path / "out",
    )
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert _history(client, result.run_id, "train/skipped_steps") == [(0, 1.0)]
    assert torch.isfinite(torch.tensor(result.test_metrics["test/loss"]))


def _poison_every_forward(monkeypatch, training: bool):
    """Classifier.forward returns NaN logits in training (or in eval) mode, every call."""
    from pipeline.models.classifier import Classifier

    real = Classifier.forward

    def forward(self, x):
        logits = real(self, x)
        return logits * float("nan") if self.training == training else logits

    monkeypatch.setattr(Classifier, "forward", forward)


@pytest.mark.parametrize(
    ("training", "message"),
    [
        (
            True,
            r"epoch 1/2: train.nan_policy=skip skipped all \d+ steps \(every loss was NaN/inf\)",
        ),
        (False, r"val/loss is nan after epoch 1: the weights diverged"),
    ],
)
def test_nan_policy_skip_fails_a_diverged_run(
    folder_cfg, mlflow_uri, tmp_path, monkeypatch, training, message
):
    _poison_every_forward(monkeypatch, training)
    name = f"nan-diverged-{training}"
    with pytest.raises(TrainingError, match=message):
        run_train(folder_cfg("train.nan_policy=skip", f"tracking.run_name={name}"), tmp_path)
    run = _run_named(MlflowClient(mlflow_uri), name)
    assert run.info.status == "FAILED" and re.search(message, run.data.tags["error"])
    assert not (tmp_path / "checkpoints" / "best.pt").exists()


def test_loss_guard_checks_only_every_n_steps():
    guard = LossGuard("stop", check_every=4, first_step=8, device=torch.device("cpu"))
    losses = [1.0, float("nan"), 1.0]  # global steps 8, 9, 10 (0-based)
    assert not any(guard.bad_step(torch.tensor(v)) for v in losses)  # no sync, no raise yet
    with pytest.raises(TrainingError, match="at step 10 "):  # checked at step 11; 9 was bad
        guard.bad_step(torch.tensor(1.0))
    # A clean window passes; the epoch end checks a partly filled one.
    guard = LossGuard("stop", check_every=4, first_step=0, device=torch.device("cpu"))
    for value in [1.0, 2.0, 3.0, 4.0, 5.0, float("inf")]:
        guard.bad_step(torch.tensor(value))
    with pytest.raises(TrainingError, match="at step 6 "):
        guard.check()


class CompilerFailed(RuntimeError):
    """Stands in for torch._dynamo's BackendCompilerFailed, which wraps the real error."""


def _oom(logits):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _wrapped_oom(logits):
    try:
        _oom(logits)
    except torch.cuda.OutOfMemoryError as exc:
        raise CompilerFailed("backend='inductor' raised: OutOfMemoryError") from exc


@pytest.mark.parametrize("oom", [_oom, _wrapped_oom], ids=["plain", "wrapped"])
def test_cuda_out_of_memory_gives_a_hint_and_fails_the_run(
    folder_cfg, mlflow_uri, tmp_path, monkeypatch, oom
):
    _poison_forward(monkeypatch, 4, oom)  # first batch of epoch 2
    with pytest.raises(TrainingError) as info:
        run_train(folder_cfg(f"tracking.run_name=oom{oom.__name__}"), tmp_path / "out")
    message = str(info.value)
    assert message.startswith("CUDA out of memory at data.batch_size=4: lower data.batch_size")
    assert "gradient accumulation" in message and "\n" not in message
    client = MlflowClient(mlflow_uri)
    run = _run_named(client, f"oom{oom.__name__}")
    assert run.info.status == "FAILED" and "CUDA out of memory" in run.data.tags["error"]
    # Epoch 1 is not lost: its metrics are logged and its checkpoint kept and uploaded.
    assert [s for s, _ in _history(client, run.info.run_id, "val/loss")] == [0]
    assert load_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")["epoch"] == 0
    uploaded = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert "checkpoints/last.pt" in uploaded


def test_crash_marks_failed_with_error_tag_and_keeps_checkpoints(
    folder_cfg, mlflow_uri, tmp_path, monkeypatch
):
    def crash(logits):
        raise RuntimeError("disk on fire")

    _poison_forward(monkeypatch, 4, crash)  # first batch of epoch 2
    with pytest.raises(RuntimeError, match="disk on fire"):
        run_train(folder_cfg("tracking.run_name=crash"), tmp_path / "out")
    client = MlflowClient(mlflow_uri)
    run = _run_named(client, "crash")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: disk on fire"
    assert load_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")["epoch"] == 0
    uploaded = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert {"checkpoints/last.pt", "checkpoints/best.pt"} <= uploaded
    assert [s for s, _ in _history(client, run.info.run_id, "val/loss")] == [0]


def test_run_is_tagged_with_code_packages_and_hardware(uninterrupted, mlflow_uri):
    result = uninterrupted.result
    tags = MlflowClient(mlflow_uri).get_run(result.run_id).data.tags
    assert tags["version.torch"] == torch.__version__
    for key in ("version.timm", "version.albumentations", "version.mlflow", "version.hydra-core"):
        assert tags[key][0].isdigit(), key
    assert len(tags["git.commit"].removesuffix("-dirty")) in (40, len("unknown"))
    assert tags["hw.cpu"] and int(tags["hw.cpu_count"]) >= 1
    assert int(tags["hw.gpu_count"]) == torch.cuda.device_count()
    assert tags["checkpoint.dir"].endswith("checkpoints")


@pytest.mark.slow  # two short trainings
def test_resume_by_path_from_an_untracked_run_starts_a_run_with_the_history(
    folder_cfg, mlflow_uri, tmp_path, monkeypatch
):
    _interrupt_on_call(monkeypatch, 2, _raise(KeyboardInterrupt()))
    with pytest.raises(Interrupted) as info:
        run_train(folder_cfg("tracking.enabled=false"), tmp_path / "a")
    monkeypatch.undo()
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    assert str(info.value) == f"Ctrl-C: checkpoint {last}; continue with train.resume={last}"
    resumed = run_train(folder_cfg(f"train.resume={last}"), tmp_path / "b")
    client = MlflowClient(mlflow_uri)
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    assert [s for s, _ in _history(client, resumed.run_id, "val/loss")] == [0, 1]
    assert client.get_run(resumed.run_id).data.params["backbone.name"] == "test_efficientnet"


def test_interrupt_during_the_test_resumes_to_a_test_only_finish(
    folder_cfg, uninterrupted, mlflow_uri, tmp_path, monkeypatch
):
    import pipeline.commands.train as train_stage

    full = uninterrupted.result
    real_predict = train_stage.predict

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_stage, "predict", interrupted)
    with pytest.raises(Interrupted, match=r"continue with train.resume=(\w+)") as info:
        run_train(folder_cfg(), tmp_path / "cut")
    run_id = info.value.args[0].rsplit("train.resume=", 1)[1]
    monkeypatch.setattr(train_stage, "predict", real_predict)
    best = tmp_path / "cut" / "checkpoints" / "best.pt"
    best.rename(best.with_suffix(".away"))  # the best weights must not silently go missing
    with pytest.raises(TrainingError, match=r"best.pt \(epoch \d, the best\) is gone"):
        run_train(folder_cfg(f"train.resume={run_id}"), tmp_path / "resumed")
    best.with_suffix(".away").rename(best)
    resumed = run_train(folder_cfg(f"train.resume={run_id}"), tmp_path / "resumed")
    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and _losses(resumed) == _losses(full)
    assert run.data.metrics["test/acc"] == full.test_metrics["test/acc"]
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    for spec in (run_id, last):  # by run id, and by path (the run id inside last.pt)
        with pytest.raises(
            TrainingError, match=r"already finished after 2 epoch.*raise train\.epochs"
        ):
            run_train(folder_cfg(f"train.resume={spec}"), tmp_path / "again")
