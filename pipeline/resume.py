"""`train.resume=<run id | path>`: find the checkpoint an interrupted run left behind.

A run id is looked up in MLflow: the run's `checkpoint.dir` tag names the folder its
last.pt was written to; when that folder is gone (another machine, a wiped scratch disk),
the copies uploaded to the run's artifacts when it was interrupted or failed are used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.checkpoint import load_checkpoint
from pipeline.errors import ConfigError
from pipeline.tracking import TrackingConfig, mlflow_client, store_missing

CHECKPOINT_DIR_TAG = "checkpoint.dir"
RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class ResumePoint:
    state: dict  # the last.pt payload (see pipeline.train.TrainingParts)
    checkpoint_dir: Path  # where last.pt and best.pt live, and keep being written
    run_id: str | None  # the MLflow run to continue; None: the old run was not tracked
    status: str | None = None  # that run's MLflow status, when looked up by run id

    @property
    def epochs_done(self) -> int:
        return int(self.state["epoch"]) + 1


def _load(path: Path, run_id: str | None, status: str | None = None) -> ResumePoint:
    """`path`: a last.pt (by any name); the run goes on writing checkpoints beside it."""
    state = load_checkpoint(path, "training checkpoint (last.pt)")
    if not {"model", "optimizer", "epoch", "history"} <= state.keys():
        hint = " (best.pt holds weights only: resume from last.pt)" if "model" in state else ""
        raise ConfigError(f"train.resume={path}: not a last.pt training checkpoint{hint}")
    return ResumePoint(state, path.parent, run_id or state.get("run_id"), status)


def _run_status(run_id: str, tracking: TrackingConfig) -> str | None:
    from mlflow.exceptions import MlflowException

    if store_missing(tracking.uri):
        return None
    try:
        return mlflow_client(tracking.uri).get_run(run_id).info.status
    except MlflowException:  # the run lives in another store: nothing to check against
        return None


def find_resume_point(spec: str, tracking: TrackingConfig, scratch_dir: Path) -> ResumePoint:
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "last.pt"
    if path.is_file():
        point = _load(path.resolve(), None)
        if point.run_id and tracking.enabled:  # a file from a tracked run: is that run done?
            point.status = _run_status(point.run_id, tracking)
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
    local = run.data.tags.get(CHECKPOINT_DIR_TAG)
    if local and (Path(local) / "last.pt").is_file():
        return _load(Path(local) / "last.pt", spec, run.info.status)
    try:
        downloaded = Path(client.download_artifacts(spec, "checkpoints", str(scratch_dir)))
    except (MlflowException, OSError):
        downloaded = scratch_dir / "checkpoints"
    if not (downloaded / "last.pt").is_file():
        raise ConfigError(
            f"train.resume={spec}: no checkpoint found (not in {local or 'an unrecorded folder'}, "
            "nor in the run's artifacts under checkpoints/); did the run finish an epoch?"
        )
    return _load(downloaded / "last.pt", spec, run.info.status)
