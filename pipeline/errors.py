"""Errors that end a run with one clear line instead of a traceback."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from pathlib import Path

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left; over the disk quota


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: torch and MLflow errors run to a dozen lines of
    advice, and the first says what went wrong."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def find_cause(
    exc: BaseException | None, matches: Callable[[BaseException], bool]
) -> BaseException | None:
    """`exc` or the first error in its chain (cause, else context) that `matches`: what a
    wrapper re-raised (torch's writer, torch.compile) still names the real problem."""
    while exc is not None:
        if matches(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_error(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT OSError behind `exc`, also when torch's writer re-raised it as
    `RuntimeError: [enforce fail at inline_container.cc:...]` (the OSError is its context)."""
    full = find_cause(exc, lambda e: isinstance(e, OSError) and e.errno in DISK_FULL)
    return full if isinstance(full, OSError) else None


def disk_full_message(full: OSError, path: str | Path | None = None) -> str:
    """One line for a full disk, naming the file that could not be written where known."""
    target = path if path is not None else full.filename
    where = f"cannot write {target}" if target else "a write failed"
    return f"disk full: {where} ({full.strerror}); free space there"


class PipelineError(Exception):
    """A problem the user can fix: bad input, bad config, missing weights.

    The CLI prints `error: <message>` and exits non-zero; the message must say what to do.
    """


class ConfigError(PipelineError):
    """An invalid config value, caught before any work starts."""


class DataError(PipelineError):
    """Missing, empty or unreadable data."""


class WeightsUnavailableError(PipelineError):
    """Pretrained weights were asked for but none can be had (offline, no local file)."""


class TrainingError(PipelineError):
    """Training cannot go on (NaN loss, out of memory)."""


class ExportError(PipelineError):
    """An exported model does not reproduce the PyTorch model's outputs."""


class StorageError(PipelineError):
    """A file could not be written: a full disk, a read-only folder."""


# torch's two wordings for a pickled global that weights_only refuses.
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+?)(?: was not an allowed global| whose module)")


def load_failure(path: str | Path, exc: Exception, unreadable: str) -> str:
    """One line for a failed torch.load(weights_only=True); `unreadable` starts the generic one.

    torch's own message (ANSI bold included) explains how to load the file anyway; a file
    from elsewhere that pickles code (a class, a function) is refused instead, by name."""
    text = str(exc)
    refused = _REFUSED_GLOBAL.search(text)
    if refused:
        return (
            f"{path} holds pickled code objects (global {refused.group(1)}) and is refused: "
            "only tensors and plain containers are loaded"
        )
    if "Weights only load failed" in text:  # keep the reason, drop the advice
        _, found, reason = text.partition("WeightsUnpickler error:")
        lines = [line.strip() for line in reason.splitlines() if line.strip()]
        return f"{unreadable}: {lines[0] if found and lines else 'not a torch.save file'}"
    return f"{unreadable}: {first_line(exc)}"
