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

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM; the message says what was kept and how to resume."""


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Interrupted`; the previous handlers are restored after.

    A group-wide SIGTERM (`kill -TERM -<pgid>`, a scheduler stopping the job) kills the
    DataLoader workers too, and torch's SIGCHLD handler would then raise "DataLoader worker
    ... is killed by signal" in the middle of the clean stop (the checkpoint upload, say).
    Their death is expected from then on: SIGCHLD is left at its default until the block ends.
    """
    if not _in_main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    quieted: list = []  # the SIGCHLD handler set aside by the handler below

    def handler(signum: int, frame: object) -> None:
        if not quieted:
            quieted.append(signal.signal(signal.SIGCHLD, signal.SIG_DFL))
        raise Interrupted(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if quieted and quieted[0] is not None:
            signal.signal(signal.SIGCHLD, quieted[0])


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGCHLD within the block are held back until it ends, then
    delivered to whatever handled them before: a write that must not be torn (a checkpoint)
    finishes first.

    Without this, a KeyboardInterrupt raised inside torch.save's C++ writer comes out as
    `RuntimeError: [enforce fail at inline_container.cc:...]`, which ends the run FAILED.
    SIGCHLD is held too, since a group-wide SIGTERM also kills the loader workers: delivered
    after the stop signal, their death is expected by then (see sigterm_as_interrupt)."""
    if not _in_main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if signum not in held:
            held.append(signum)

    # getsignal is None for a handler installed outside Python: leave that signal alone.
    previous = {s: signal.getsignal(s) for s in (*STOP_SIGNALS, signal.SIGCHLD)}
    previous = {s: handler for s, handler in previous.items() if handler is not None}
    for signum in previous:
        signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # raise_signal runs the Python handler before it returns: a stop signal's exception
        # ends this loop, so a worker's death it caused is not reported on top of it.
        for held_signum in sorted(held, key=lambda s: s == signal.SIGCHLD):
            signal.raise_signal(held_signum)
