"""The commands behind `stage=...`: each takes a RunConfig and an output folder, and is callable
from tests. `trained_run` rebuilds a trained model for the commands after training.

Top of the layering: commands may import every package; nothing in pipeline/ imports them
(except `__main__`). Stage names live in one place, `pipeline.config.STAGES` (validated there);
stage `x` runs `run_x` of `commands/x.py`, imported only when that stage runs: a config error
or `--help` then costs no torch import. The stages that need Hydra's view of the job (the
command line, the sweep) also take a `runtime.HydraRuntime`, which `__main__` reads once.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import STAGES

if TYPE_CHECKING:
    from pipeline.commands.runtime import HydraRuntime
    from pipeline.config import RunConfig

RUNTIME_STAGES = {"ablate", "search", "train"}  # the others take (cfg, out_dir) alone


def stage_function(stage: str) -> Callable[..., Any]:
    """`run_<stage>` of `commands/<stage>.py` (signatures differ: see RUNTIME_STAGES)."""
    if stage not in STAGES:
        raise KeyError(stage)
    return getattr(importlib.import_module(f"pipeline.commands.{stage}"), f"run_{stage}")


def stage_summary(stage: str) -> str:
    """The first line of the stage module's docstring, read without importing it (`--help`)."""
    source = (Path(__file__).parent / f"{stage}.py").read_text()
    return (ast.get_docstring(ast.parse(source)) or "").strip().splitlines()[0]


def run_stage(cfg: RunConfig, out_dir: Path, runtime: HydraRuntime) -> Any:
    """Run `cfg.stage`, handing `runtime` to the stages that use it."""
    if cfg.stage == "train" and runtime.multirun:  # a -m sweep: one parent, jobs its children
        from pipeline.commands.sweep import run_sweep_job

        return run_sweep_job(cfg, out_dir, runtime)
    command = stage_function(cfg.stage)
    if cfg.stage in RUNTIME_STAGES:
        return command(cfg, out_dir, runtime=runtime)
    return command(cfg, out_dir)
