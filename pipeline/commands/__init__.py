"""The commands behind `stage=...`: each takes a RunConfig and an output folder, and is callable
from tests. `trained_run` rebuilds a trained model for the commands after training.

Top of the layering: commands may import every package; nothing in pipeline/ imports them
(except `__main__`). Stage names live in one place, `pipeline.config.STAGES` (validated there);
stage `x` runs `run_x`. The stages that need Hydra's view of the job (the command line, the
sweep) also take a `runtime.HydraRuntime`, which `__main__` reads once.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.commands.ablate import run_ablate
from pipeline.commands.baseline import run_baseline
from pipeline.commands.compare import run_compare
from pipeline.commands.download import run_download
from pipeline.commands.evaluate import run_evaluate
from pipeline.commands.export import run_export
from pipeline.commands.inspect import run_inspect
from pipeline.commands.lr_find import run_lr_find
from pipeline.commands.predict import run_predict
from pipeline.commands.runtime import HydraRuntime
from pipeline.commands.screen import run_screen
from pipeline.commands.search import run_search
from pipeline.commands.sweep import run_sweep_job
from pipeline.commands.train import run_train
from pipeline.commands.visualize import run_visualize
from pipeline.config import STAGES, RunConfig

_COMMANDS: dict[str, Callable[..., Any]] = {  # signatures differ: see RUNTIME_STAGES
    command.__name__: command
    for command in (
        run_ablate,
        run_baseline,
        run_compare,
        run_download,
        run_evaluate,
        run_export,
        run_inspect,
        run_lr_find,
        run_predict,
        run_screen,
        run_search,
        run_train,
        run_visualize,
    )
}
STAGE_FUNCTIONS = {stage: _COMMANDS[f"run_{stage}"] for stage in STAGES}
RUNTIME_STAGES = {"ablate", "search", "train"}  # the others take (cfg, out_dir) alone


def run_stage(cfg: RunConfig, out_dir: Path, runtime: HydraRuntime) -> Any:
    """Run `cfg.stage`, handing `runtime` to the stages that use it."""
    command = STAGE_FUNCTIONS[cfg.stage]
    if cfg.stage == "train" and runtime.multirun:  # a -m sweep: one parent, jobs its children
        return run_sweep_job(cfg, out_dir, runtime)
    if cfg.stage in RUNTIME_STAGES:
        return command(cfg, out_dir, runtime=runtime)
    return command(cfg, out_dir)
