"""Errors that end a run with one clear line instead of a traceback."""

import errno

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left; over the disk quota


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: torch and MLflow errors run to a dozen lines of
    advice, and the first says what went wrong."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def disk_full_error(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT OSError behind `exc`, also when torch's writer re-raised it as
    `RuntimeError: [enforce fail at inline_container.cc:...]` (the OSError is its context)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


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
