"""Errors that end a run with one clear line instead of a traceback."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: torch and MLflow errors run to a dozen lines of
    advice, and the first says what went wrong."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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
