"""`train.resume=<run id | path>`: find the checkpoint an interrupted run left behind.

A run id is looked up in MLflow: the run's `checkpoint.dir` tag names the folder its
last.pt was written to; when that folder is gone (another machine, a wiped scratch disk),
the copies uploaded to the run's artifacts when it was interrupted or failed are used.

A run still RUNNING (its process SIGKILLed, out of memory, the node lost) is taken over
when the process its `owner.host`/`owner.pid` tags name is gone; one whose process is
alive is refused, and one from another host needs `train.resume_force=true`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.store import mlflow_client, store_missing
from pipeline.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_DIR_TAG = "checkpoint.dir"
OWNER_HOST_TAG, OWNER_PID_TAG = "owner.host", "owner.pid"
RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class ResumePoint:
    state: dict  # the last.pt payload (see pipeline.training.state.TrainingParts)
    checkpoint_dir: Path  # where last.pt and best.pt live, and keep being written
    run_id: str | None  # the MLflow run to continue; None: the old run was not tracked
    status: str | None = None  # that run's MLflow status, when looked up by run id

    @property
    def epochs_done(self) -> int:
        return int(self.state["epoch"]) + 1


def owner_tags() -> dict[str, str]:
    """This process, as the owner of the run it starts or takes over."""
    return {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(os.getpid())}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only checked
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_takeover(spec: str, run_id: str, tags: dict[str, str], force: bool) -> None:
    """A RUNNING run is resumed only when the process running it is gone."""
    host, pid = tags.get(OWNER_HOST_TAG), tags.get(OWNER_PID_TAG, "")
    owner = f"pid {pid} on {host}"
    if host == socket.gethostname() and pid.isdigit():
        if not _process_alive(int(pid)):
            log.info(
                "run %s is RUNNING but its process (%s) is gone: taking it over", run_id, owner
            )
            return
        if not force:
            raise ConfigError(
                f"train.resume={spec}: run {run_id} is still running ({owner}): stop it "
                f"first (kill {pid}); if pid {pid} is another program, add train.resume_force=true"
            )
    elif not force:
        where = f"on another host ({owner})" if host and pid else "with no owner recorded"
        raise ConfigError(
            f"train.resume={spec}: run {run_id} is RUNNING {where}, which this machine cannot "
            "check: if that process is gone, add train.resume_force=true"
        )
    log.warning("train.resume_force=true: taking over RUNNING run %s (%s)", run_id, owner)


def _load(path: Path, run_id: str | None, status: str | None = None) -> ResumePoint:
    """`path`: a last.pt (by any name); the run goes on writing checkpoints beside it."""
    state = load_checkpoint(path, "training checkpoint (last.pt)")
    if not {"model", "optimizer", "epoch", "history"} <= state.keys():
        hint = " (best.pt holds weights only: resume from last.pt)" if "model" in state else ""
        raise ConfigError(f"train.resume={path}: not a last.pt training checkpoint{hint}")
    return ResumePoint(state, path.parent, run_id or state.get("run_id"), status)


def _run_status(
    spec: str, run_id: str, tracking: TrackingConfig, force: bool, check_owner: bool
) -> str | None:
    from mlflow.exceptions import MlflowException

    if store_missing(tracking.uri):
        return None
    try:
        run = mlflow_client(tracking.uri).get_run(run_id)
    except MlflowException:  # the run lives in another store: nothing to check against
        return None
    if run.info.status == "RUNNING" and check_owner:
        check_takeover(spec, run_id, run.data.tags, force)
    return run.info.status


def find_resume_point(
    spec: str,
    tracking: TrackingConfig,
    scratch_dir: Path,
    force: bool = False,
    check_owner: bool = True,
) -> ResumePoint:
    """`force`: take over a RUNNING run whose process this machine cannot see to be gone;
    `check_owner=False`: another process (torchrun's rank 0) decides on a takeover."""
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if path.is_file():
        point = _load(path.resolve(), None)
        if point.run_id and tracking.enabled:  # a file from a tracked run: is that run done?
            point.status = _run_status(spec, point.run_id, tracking, force, check_owner)
        return point
    if not RUN_ID.fullmatch(spec):
        raise ConfigError(f"train.resume={spec}: no such checkpoint file, and not an MLflow run id")
    if not tracking.enabled:
        raise ConfigError(
            "train.resume=<run id> needs tracking.enabled=true; or pass the path to last.pt"
        )
    from mlflow.exceptions import MlflowException

    not_found = ConfigError(f"train.resume={spec}: no such run in {tracking.uri}")
    if store_missing(tracking.uri):
        raise not_found
    client = mlflow_client(tracking.uri)
    try:
        run = client.get_run(spec)
    except MlflowException as exc:
        raise not_found from exc
    if run.info.status == "RUNNING" and check_owner:
        check_takeover(spec, spec, run.data.tags, force)
    local = run.data.tags.get(CHECKPOINT_DIR_TAG)
    if local and (Path(local) / "last.pt").is_file():
        return _load(Path(local) / "last.pt", spec, run.info.status)
    try:
        downloaded = Path(client.download_artifacts(spec, "checkpoints", str(scratch_dir)))
    except (MlflowException, OSError):
        downloaded = scratch_dir / "checkpoints"
    if not (downloaded / "last.pt").is_file():
        raise _nothing_to_resume(client, spec, run, local, check_owner)
    return _load(downloaded / "last.pt", spec, run.info.status)


def _nothing_to_resume(
    client: Any, spec: str, run: Any, local: str | None, check_owner: bool
) -> ConfigError:
    """No last.pt beside the run nor in its artifacts; a RUNNING run's process is gone by now
    (check_takeover), so it is marked KILLED rather than left RUNNING forever."""
    running = run.info.status == "RUNNING" and check_owner
    if running:
        client.set_terminated(spec, status="KILLED")
    marked = " (marked KILLED now: its process is gone)" if running else ""
    # No epoch logged (fit logs val/loss each epoch), or its folder is here without one:
    # the run never wrote a last.pt.
    if "val/loss" not in run.data.metrics or (local and Path(local).is_dir()):
        return ConfigError(
            f"train.resume={spec}: the run stopped before its first epoch's checkpoint was "
            f"written{marked}, so there is nothing to resume: run the same command without "
            "train.resume to start over"
        )
    return ConfigError(
        f"train.resume={spec}: no last.pt in {local or 'an unrecorded folder'} nor in the "
        f"run's artifacts{marked}: copy the run's last.pt back there, or pass "
        "train.resume=<path to last.pt>"
    )
