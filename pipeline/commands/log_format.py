"""The console's log format, which Hydra's logging config names
(conf/hydra/job_logging/pipeline.yaml): a module of its own, since Hydra imports it before
every command, and one that fails early (a bad ablation component, stage=compare's
unknown parent) should not pay for console.py's torch imports first."""

from __future__ import annotations

import logging


class ConsoleFormatter(logging.Formatter):
    """The console's log lines: the bare message, so a line fits the terminal; warnings and
    errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text
