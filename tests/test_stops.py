"""Stops that must be clean, with nothing lost: a signal during a checkpoint write, a full
disk, a group-wide SIGTERM with loader workers, and a SIGKILLed run taken over by id."""

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.commands.train import run_train
from pipeline.errors import ConfigError, StorageError
from pipeline.signals import Interrupted
from pipeline.tracking.runs import Run
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.resume import OWNER_HOST_TAG, OWNER_PID_TAG, check_takeover
from tests.conftest import tiny_overrides

FOLDER = ("data=folder", "data.batch_size=4", "head.dropout=0.3", "train.epochs=2")


@pytest.fixture
def folder_cfg(tiny_cfg, image_folder):
    """24 tiny images, 4 per batch: 3 steps an epoch, 2 epochs."""
    return lambda *extra: tiny_cfg(*FOLDER, f"data.root={image_folder}", *extra)


def _run_named(client, name):
    experiment = client.get_experiment_by_name("tests").experiment_id
    return client.search_runs([experiment], filter_string=f"tags.mlflow.runName = '{name}'")[0]


def _steps(client, run_id, key="val/loss"):
    return [m.step for m in client.get_metric_history(run_id, key)]


def _torn(folder):
    return sorted(p.name for p in folder.glob("*.tmp"))


class _File:
    """A file object for torch.save whose third write runs `on_write`: inside torch's C++
    writer, which calls back into Python for each chunk and turns an exception raised there
    into `RuntimeError: [enforce fail at inline_container.cc:...]`."""

    def __init__(self, f, on_write):
        self.f, self.on_write, self.writes = f, on_write, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 3:
            self.on_write()
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def _patch_save(monkeypatch, epoch: int, on_write) -> list:
    """Saving last.pt (the payload with an optimizer) of `epoch` (0-based) runs `on_write`
    during a write. Returns the files it wrapped."""
    real, wrapped = torch.save, []

    def save(obj, f, *args, **kwargs):
        if "optimizer" in obj and obj["epoch"] == epoch and not wrapped:
            f = _File(f, on_write)
            wrapped.append(f)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return wrapped


# --- a signal during the checkpoint write ---------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_signal_during_checkpoint_write_finishes_the_write_then_stops_killed(
    folder_cfg, mlflow_uri, tmp_path, monkeypatch, signum
):
    # Before: the KeyboardInterrupt raised inside torch's writer came out as
    # "RuntimeError: [enforce fail at inline_container.cc:...]" and the run ended FAILED.
    wrapped = _patch_save(monkeypatch, 0, lambda: os.kill(os.getpid(), signum))
    name = f"write-{signum.name}"
    with pytest.raises(Interrupted) as info:
        run_train(folder_cfg(f"tracking.run_name={name}"), tmp_path / "out")
    monkeypatch.undo()
    assert wrapped[0].writes > 3  # the signal came during the write, and the write went on
    client = MlflowClient(mlflow_uri)
    run = _run_named(client, name)
    assert run.info.status == "KILLED" and "error" not in run.data.tags
    assert str(info.value).endswith(f"continue with train.resume={run.info.run_id}")
    checkpoints = tmp_path / "out" / "checkpoints"
    assert load_checkpoint(checkpoints / "last.pt")["epoch"] == 0  # whole, and the newest
    assert _torn(checkpoints) == []
    uploaded = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert "checkpoints/last.pt" in uploaded


# --- a full disk ------------------------------------------------------------------------------


def _disk_full():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_during_checkpoint_write_is_one_line_and_keeps_the_last_good_one(
    folder_cfg, mlflow_uri, tmp_path, monkeypatch
):
    _patch_save(monkeypatch, 1, _disk_full)
    with pytest.raises(StorageError) as info:
        run_train(folder_cfg("tracking.run_name=disk-full"), tmp_path / "out")
    monkeypatch.undo()
    client = MlflowClient(mlflow_uri)
    run = _run_named(client, "disk-full")
    last = tmp_path / "out" / "checkpoints" / "last.pt"
    assert str(info.value) == (
        f"disk full: cannot write {last} (No space left on device); free space there, then "
        f"continue with train.resume={run.info.run_id}"
    )
    assert run.info.status == "FAILED" and "disk full" in run.data.tags["error"]
    assert load_checkpoint(last)["epoch"] == 0 and _torn(last.parent) == []
    assert _steps(client, run.info.run_id) == [0, 1]  # both epochs' metrics kept


@pytest.mark.slow  # a CLI subprocess
def test_cli_full_disk_prints_one_error_line_without_a_torch_traceback(
    image_folder, mlflow_uri, tmp_path
):
    script = textwrap.dedent(
        f"""
        import errno, os, sys, torch
        real = torch.save
        class Full:
            def __init__(self, f): self.f = f
            def write(self, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            def flush(self): pass
        torch.save = lambda obj, f, *a, **k: real(obj, Full(f), *a, **k)
        sys.argv = ["pipeline", *{_cli_overrides(image_folder, mlflow_uri, tmp_path)!r}]
        from pipeline.__main__ import main
        main()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr
    best = tmp_path / "out" / "checkpoints" / "best.pt"
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: disk full: cannot write {best} (No space left on device)")
    assert "Traceback" not in proc.stderr and "enforce fail" not in proc.stderr


def test_failed_uploads_after_the_test_keep_the_metrics_and_name_the_files(
    folder_cfg, mlflow_uri, tmp_path, monkeypatch, caplog
):
    # Before: the first failed upload raised, the run ended FAILED without its test metrics.
    real = Run.log_artifact

    def log_artifact(self, path, subdir=None):
        if path.name in ("best.pt", "confusion_matrix.png"):
            _disk_full()
        return real(self, path, subdir)

    monkeypatch.setattr(Run, "log_artifact", log_artifact)
    result = run_train(folder_cfg("train.epochs=1"), tmp_path / "out")
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/acc"] == result.test_metrics["test/acc"]
    warning = run.data.tags["warning"]
    assert warning.startswith("not saved: checkpoints/best.pt (not uploaded: [Errno 28] No space")
    assert "; confusion_matrix.png (not uploaded: " in warning
    assert "checkpoints/best.pt" in caplog.text and "confusion_matrix.png" in caplog.text
    uploaded = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"report.md", "learning_curves.png"} <= uploaded  # the others still went up


# --- SIGKILL: the run id up front, and a takeover by id -------------------------------------


def _cli_overrides(image_folder, mlflow_uri, tmp_path, *extra):
    return [
        *tiny_overrides(mlflow_uri, tmp_path),
        *FOLDER,
        f"data.root={image_folder}",
        f"hydra.run.dir={tmp_path / 'out'}",
        *extra,
    ]


def _start_cli(script_head: str, overrides: list[str], **popen) -> subprocess.Popen:
    """`python -m pipeline <overrides>`, after `script_head` patched it."""
    script = textwrap.dedent(script_head) + textwrap.dedent(
        f"""
        sys.argv = ["pipeline", *{overrides!r}]
        from pipeline.__main__ import main
        main()
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


@pytest.mark.slow  # a CLI subprocess and a resumed training
def test_sigkilled_run_prints_its_resume_command_first_and_is_taken_over_by_id(
    image_folder, folder_cfg, mlflow_uri, tmp_path
):
    proc = _start_cli(
        """
        import os, signal, sys
        import pipeline.training.loop
        real, calls = pipeline.training.loop.train_one_epoch, []
        def patched(*a, **k):
            calls.append(1)
            if len(calls) == 2:  # epoch 1's checkpoint is written
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        pipeline.training.loop.train_one_epoch = patched
        """,
        _cli_overrides(image_folder, mlflow_uri, tmp_path, "tracking.run_name=sigkill"),
    )
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, stderr
    client = MlflowClient(mlflow_uri)
    run = _run_named(client, "sigkill")
    run_id = run.info.run_id
    lines = stdout.splitlines()
    # The command line as typed, then the resume (Hydra's own hydra.* overrides aside).
    typed = _cli_overrides(image_folder, mlflow_uri, tmp_path, "tracking.run_name=sigkill")
    typed = " ".join(o for o in typed if not o.startswith("hydra."))
    start = lines.index(f"resume   python -m pipeline {typed} train.resume={run_id}")
    assert start < min(i for i, line in enumerate(lines) if "epoch 1/2" in line)
    assert run.info.status == "RUNNING"  # nothing could mark it
    tags = run.data.tags
    assert tags[OWNER_HOST_TAG] == socket.gethostname()
    assert tags[OWNER_PID_TAG] == str(proc.pid)  # gone now
    checkpoints = tmp_path / "out" / "checkpoints"
    (checkpoints / ".last.pt.x1y2.tmp").write_bytes(b"torn")  # as a SIGKILL mid-write leaves

    # Alive on this host: refused. On another host: refused unless forced.
    client.set_tag(run_id, OWNER_PID_TAG, str(os.getpid()))
    with pytest.raises(ConfigError, match=rf"run {run_id} is still running \(pid {os.getpid()} "):
        run_train(folder_cfg(f"train.resume={run_id}"), tmp_path / "refused")
    client.set_tag(run_id, OWNER_HOST_TAG, "elsewhere")
    with pytest.raises(ConfigError, match=r"on another host .*add train\.resume_force=true"):
        run_train(folder_cfg(f"train.resume={run_id}"), tmp_path / "refused")
    client.set_tag(run_id, OWNER_HOST_TAG, socket.gethostname())
    client.set_tag(run_id, OWNER_PID_TAG, tags[OWNER_PID_TAG])  # the dead process: taken over

    resumed = run_train(folder_cfg(f"train.resume={run_id}"), tmp_path / "resumed")
    assert resumed.run_id == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_after_epoch"] == "1"
    assert run.data.tags[OWNER_PID_TAG] == str(os.getpid())  # the new owner
    assert _steps(client, run_id) == [0, 1]
    assert _torn(checkpoints) == []  # the torn write was cleared on the next start


def _reaped_pid() -> int:
    """The pid of a process that has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_takeover_of_a_running_run_refuses_live_and_unknown_owners_unless_forced():
    here = socket.gethostname()
    check_takeover("r", "r", {OWNER_HOST_TAG: here, OWNER_PID_TAG: str(_reaped_pid())}, False)
    alive = {OWNER_HOST_TAG: here, OWNER_PID_TAG: str(os.getpid())}
    with pytest.raises(ConfigError, match=rf"still running \(pid {os.getpid()} on {here}\)"):
        check_takeover("r", "r", alive, force=False)
    with pytest.raises(
        ConfigError, match=r"RUNNING with no owner recorded, .*train\.resume_force=true"
    ):
        check_takeover("r", "r", {}, force=False)
    for tags in ({OWNER_HOST_TAG: "elsewhere", OWNER_PID_TAG: "12"}, {}, alive):
        check_takeover("r", "r", tags, force=True)  # train.resume_force=true: the user knows


def test_resuming_a_dead_run_that_never_wrote_a_checkpoint_says_what_to_do(
    tiny_cfg, mlflow_uri, tmp_path
):
    # Killed before its first last.pt: nothing to resume, and it must not stay RUNNING.
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("tests")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("tests")
    (tmp_path / "checkpoints").mkdir()
    tags = {
        OWNER_HOST_TAG: socket.gethostname(),
        OWNER_PID_TAG: str(_reaped_pid()),
        "checkpoint.dir": str(tmp_path / "checkpoints"),
    }
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    with pytest.raises(ConfigError) as info:
        run_train(tiny_cfg(f"train.resume={run_id}"), tmp_path / "out")
    assert str(info.value) == (
        f"train.resume={run_id}: the run stopped before its first epoch's checkpoint was "
        "written (marked KILLED now: its process is gone), so there is nothing to resume: "
        "run the same command without train.resume to start over"
    )
    assert client.get_run(run_id).info.status == "KILLED"


# --- a group-wide SIGTERM with loader workers ------------------------------------------------


@pytest.mark.slow  # a CLI subprocess with loader workers
def test_group_sigterm_with_loader_workers_uploads_last_pt_and_ends_killed(
    image_folder, mlflow_uri, tmp_path
):
    # What a scheduler does: SIGTERM to the whole process group, the loader workers included,
    # from another process (torch's workers exit quietly on a SIGTERM from their parent).
    # Before: "DataLoader worker (pid ...) is killed by signal: Terminated", a traceback.
    ready = tmp_path / "ready"
    proc = _start_cli(
        f"""
        import sys, time
        from pipeline.models.classifier import Classifier
        real, steps = Classifier.forward, []
        def forward(self, x):
            if self.training:
                steps.append(1)
                if len(steps) == 5:  # epoch 2, its workers busy: wait for the kill
                    open({str(ready)!r}, "w").close()
                    time.sleep(120)
            return real(self, x)
        Classifier.forward = forward
        """,
        _cli_overrides(
            image_folder, mlflow_uri, tmp_path, "data.num_workers=2", "tracking.run_name=group"
        ),
        start_new_session=True,  # its own process group, as a scheduler's job has
    )
    try:
        while not ready.exists() and proc.poll() is None:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    client = MlflowClient(mlflow_uri)
    run = _run_named(client, "group")
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: SIGTERM: MLflow run {run.info.run_id} marked KILLED; checkpoint "
        f"{tmp_path / 'out' / 'checkpoints' / 'last.pt'}; continue with "
        f"train.resume={run.info.run_id}"
    )
    assert "DataLoader worker" not in stderr and "could not upload" not in stderr
    assert run.info.status == "KILLED"
    uploaded = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert "checkpoints/last.pt" in uploaded
