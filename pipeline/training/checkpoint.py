"""Checkpoints written atomically: a crash mid-write never leaves a torn file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import (
    ConfigError,
    StorageError,
    disk_full_error,
    disk_full_message,
    first_line,
    load_failure,
)
from pipeline.signals import stop_signals_deferred

TORN_WRITES = ".*.pt.*.tmp"  # save_atomic's temp files: left behind only by a SIGKILL


def save_atomic(payload: Any, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`.

    Ctrl-C and SIGTERM wait until the rename is done (then stop the run as usual); a full
    disk or an unwritable folder ends in one StorageError line naming `path`."""
    path = Path(path)
    try:
        with stop_signals_deferred():
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_and_rename(payload, path)
    except (OSError, RuntimeError) as exc:
        error = _storage_error(exc, path)
        if error is None:  # not a failed write: a bug, shown as one
            raise
        raise error from exc
    return path


def _write_and_rename(payload: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _storage_error(exc: OSError | RuntimeError, path: Path) -> StorageError | None:
    """torch's writer turns the OSError of a failed write into a RuntimeError whose context
    is that OSError: name the cause, not `[enforce fail at inline_container.cc:...]`."""
    full = disk_full_error(exc)
    if full is not None:
        return StorageError(disk_full_message(full, path))
    cause = exc if isinstance(exc, OSError) else exc.__context__
    if not isinstance(cause, OSError):
        return None
    return StorageError(f"cannot write {path}: {first_line(cause)}")


def remove_torn_writes(folder: Path) -> list[Path]:
    """Delete the temp files of writes a SIGKILL cut short; the checkpoints they were to
    replace are intact (the rename never happened)."""
    torn = sorted(Path(folder).glob(TORN_WRITES))
    for tmp in torn:
        tmp.unlink(missing_ok=True)
    return torn


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """A dict saved by torch.save; anything else ends in one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, not a torch file at all
        raise ConfigError(load_failure(path, exc, f"{path} is not a readable {what}")) from exc
    if not isinstance(state, dict):
        raise ConfigError(f"{path} is not a {what}: it holds a {type(state).__name__}")
    return state
