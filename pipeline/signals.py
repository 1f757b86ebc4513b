"""SIGTERM handled like Ctrl-C, so a cluster's kill ends a run the same clean way.

Schedulers (SLURM, Kubernetes, torchrun) stop jobs with SIGTERM, which by default kills
Python on the spot: no checkpoint upload, no MLflow status, a run left RUNNING forever.
Turning it into a KeyboardInterrupt in the main thread reuses the Ctrl-C path instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM; the message says what was kept and how to resume."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Interrupted`; the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
