"""Checkpoints written atomically: a crash mid-write never leaves a torn file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import ConfigError, first_line


def save_atomic(payload: Any, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    return path


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict:
    """A dict saved by torch.save; anything else ends in one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, not a torch file at all
        raise ConfigError(f"{path} is not a readable {what}: {first_line(exc)}") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"{path} is not a {what}: it holds a {type(state).__name__}")
    return state
