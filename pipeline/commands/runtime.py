"""What Hydra knows about the running job, as a plain value: `__main__` reads Hydra's runtime
config once and hands this to the stages that need it, so no stage reads Hydra's globals (and
tests build one by hand). The default is a call from Python: no command line, no sweep."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HydraRuntime:
    overrides: tuple[str, ...] = ()  # the command line's overrides (a sweep job: its own)
    job_num: int | None = None  # the job's number in a multirun (= an Optuna trial's number)
    swept: frozenset[str] = frozenset()  # the keys a sweeper's `params` vary
    output_dir: Path | None = None  # the job's folder (outputs/<date>/<time>/, a sweep's <n>/)
    multirun: bool = False
    sweep_dir: Path | None = None  # a multirun's folder (multirun.yaml, one folder per job)


NO_HYDRA = HydraRuntime()  # a stage called from Python (tests, notebooks): no CLI, no sweep
