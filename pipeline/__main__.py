"""`python -m pipeline [overrides]`: compose the Hydra config and run one stage.

Kept thin on purpose: it converts the DictConfig to a typed RunConfig and calls a stage
function; every error the user can fix ends as one `error: ...` line and a non-zero exit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline.commands.runtime import HydraRuntime
from pipeline.compose import compose, register_configs, run_config_from_hydra
from pipeline.config import CONF_DIR, RunConfig
from pipeline.errors import (
    ConfigError,
    PipelineError,
    disk_full_error,
    disk_full_message,
    first_line,
)
from pipeline.signals import sigterm_as_interrupt
from pipeline.tracking.credentials import redact_files


def _hydra_runtime(hydra_cfg: DictConfig) -> HydraRuntime:
    """Hydra's runtime config (`HydraConfig.get()`), read once, as the value stages take."""
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    num = hydra_cfg.job.get("num")
    swept = frozenset(hydra_cfg.sweeper.get("params") or {})
    if multirun:  # a job sees its own values only; the sweep's command line is in multirun.yaml
        swept |= _swept_keys(_sweep_command_line(Path(hydra_cfg.sweep.dir)))
    return HydraRuntime(
        overrides=tuple(hydra_cfg.overrides.task),
        job_num=int(num) if num is not None else None,
        swept=swept,
        output_dir=Path(hydra_cfg.runtime.output_dir),
        multirun=multirun,
        sweep_dir=Path(hydra_cfg.sweep.dir) if multirun else None,
    )


def _swept_keys(overrides: list[str]) -> frozenset[str]:
    """The keys a multirun's command line sweeps (`optim.lr=1e-3,1e-2`, `seed=range(3)`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return frozenset()
    return frozenset(o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override())


def _sweep_command_line(sweep_dir: Path) -> list[str]:
    """The overrides the multirun was launched with, as its multirun.yaml records them; none
    if it cannot be read (another job rewriting it: the job then names its run without them)."""
    from omegaconf import OmegaConf

    try:
        return list(OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides.task)
    except Exception:
        return []


class SweepCallback(Callback):
    """Registered in conf/config.yaml (hydra.callbacks); Hydra calls it in the launching
    process for every launcher. A sweep of stage=train gets its parent run before the jobs
    start (they find it by tag) and its comparison after they end (commands/sweep.py)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = self._train_sweep(config)
        if sweep is not None:
            from pipeline.commands.sweep import sweep_parent

            run_cfg, sweep_dir, swept = sweep
            self._quietly(lambda: sweep_parent(run_cfg.tracking, sweep_dir, swept))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = self._train_sweep(config)
        if sweep is not None:
            from pipeline.commands.sweep import summarize_sweep

            run_cfg, sweep_dir, _ = sweep
            self._quietly(lambda: summarize_sweep(run_cfg, sweep_dir))

    @staticmethod
    def _train_sweep(config: DictConfig) -> tuple[RunConfig, Path, frozenset[str]] | None:
        if config.get("stage") != "train":  # ablate/search sweeps have parents of their own
            return None
        hydra_cfg = config.hydra
        try:
            run_cfg = run_config_from_hydra(OmegaConf.masked_copy(config, _task_keys(config)))
        except PipelineError as exc:  # the jobs fail with the same line; say it once here
            print(f"sweep: no parent run ({exc})", file=sys.stderr)
            return None
        swept = _swept_keys(list(hydra_cfg.overrides.task))
        swept |= frozenset(hydra_cfg.sweeper.get("params") or {})
        return run_cfg, Path(hydra_cfg.sweep.dir), swept

    @staticmethod
    def _quietly(step: Callable[[], Any]) -> None:
        """A store that cannot be reached costs the sweep its parent, not its jobs."""
        try:
            step()
        except PipelineError as exc:
            print(f"sweep: {exc}", file=sys.stderr)


def _task_keys(config: DictConfig) -> list[str]:
    return [str(key) for key in config if key != "hydra"]


def _redact_hydra_records(hydra_cfg: DictConfig) -> None:
    """Hydra saved the command line (.hydra/*.yaml, a sweep's multirun.yaml) before this
    task began: a tracking.uri's user:password@ comes out of those files first thing."""
    files = []
    if hydra_cfg.output_subdir is not None:
        files += (Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir).glob("*.yaml")
    if hydra_cfg.mode == RunMode.MULTIRUN:
        files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    redact_files(path for path in files if path.is_file())


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _run(cfg: DictConfig) -> float | None:
    from pipeline.commands import run_stage

    # Typed as its schema (HydraConf), but it is the DictConfig built from that schema.
    hydra_cfg = cast(DictConfig, HydraConfig.get())
    runtime = _hydra_runtime(hydra_cfg)
    try:
        _redact_hydra_records(hydra_cfg)
        run_cfg = run_config_from_hydra(cfg)
        out_dir = Path(hydra_cfg.runtime.output_dir)  # = runtime.output_dir, there Optional
        with sigterm_as_interrupt():  # every stage: a scheduler's kill ends its run KILLED
            result = run_stage(run_cfg, out_dir, runtime)
        # A sweeper (hparams_search=...) optimises what the task returns: stage=search's objective.
        return result if isinstance(result, float) else None
    except PipelineError as exc:
        _remove_if_unused(runtime)
        # SystemExit passes through Hydra's error reporting untouched: one line, exit 1.
        raise SystemExit(f"error: {exc}") from None
    except Exception as exc:  # a full disk under any write the stages do not map themselves
        full = disk_full_error(exc)
        if full is None:
            raise
        raise SystemExit(f"error: {disk_full_message(full)}") from None
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM; the message says how to resume
        # An open MLflow run was marked KILLED on the way out (tracking.start_run).
        raise SystemExit(f"interrupted: {str(exc) or 'Ctrl-C'}") from None
    finally:
        # Leave a torchrun process group cleanly; a stage that never imported torch has none.
        if "pipeline.training.distributed" in sys.modules:
            from pipeline.training import distributed

            distributed.cleanup()


# What Hydra writes into every run's output folder before the task starts, and the copy of
# a trained run that evaluate/predict/export/visualize download first (no output of theirs).
_NOT_OUTPUTS = (".hydra", "__main__.log", "source_run")


def _remove_if_unused(runtime: HydraRuntime) -> None:
    """A command that failed before writing anything leaves no outputs/<date>/<time>/ behind.

    Only Hydra's own files, a downloaded trained run and empty folders go; anything a stage
    wrote (a checkpoint to resume from) keeps the folder. Then the date folder and outputs/ go
    too, if now empty."""
    out_dir = runtime.output_dir
    if runtime.multirun or out_dir is None or not out_dir.is_dir():
        return  # a multirun's job folders belong to its sweep
    written = [
        p
        for p in out_dir.rglob("*")
        if p.is_file() and p.relative_to(out_dir).parts[0] not in _NOT_OUTPUTS
    ]
    if written:
        return
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in out_dir.resolve().parents:
        if parent == cwd or cwd not in parent.parents:
            break
        try:
            parent.rmdir()  # only when empty: another run's folder stays
        except OSError:
            break


def _check_command_line(argv: list[str]) -> None:
    """Compose the config as Hydra will, before Hydra makes an output folder: a typo'd key or
    group option or a bad value then ends in one line (config.composition_error) and leaves
    no folder behind. Hydra's own commands (--help, --cfg ...) and configs from elsewhere
    (--config-dir ...) are left to Hydra. A multirun's list and range sweeps are checked one
    value at a time (Hydra's schemas reject optim.lr=abc while composing a job, in many
    lines); combinations are checked per job."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException

    args = get_args_parser().parse_args(argv)
    hydra_commands = (args.help, args.hydra_help, args.cfg, args.info, args.shell_completion)
    elsewhere = (args.config_path, args.config_name, args.config_dir, args.experimental_rerun)
    if any(hydra_commands) or any(elsewhere):
        return
    overrides = args.overrides
    if args.multirun:
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
        except HydraException as exc:
            raise ConfigError(first_line(exc)) from exc
        overrides = [o.input_line for o in parsed if not o.is_sweep_override()]
        for sweep in parsed:  # as Hydra's basic sweeper spells each job's override
            if sweep.is_discrete_sweep() and sweep.value_type != ValueType.GLOB_CHOICE_SWEEP:
                for value in sweep.sweep_string_iterator():
                    compose([*overrides, f"{sweep.get_key_element()}={value}"])
    compose(overrides)


def _register_optuna_sweeper() -> None:
    """Hydra finds plugins by listing the hydra_plugins/ folders on sys.path, which a default
    (PEP 660) editable install does not show; register this project's sweeper by hand."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # scan first: it re-executes the modules it finds
    from hydra_plugins.pipeline_optuna_sweeper.optuna_sweeper import OptunaSweeper

    plugins.register(OptunaSweeper)


def _help_section(name: str) -> str:
    """A generated part of `--help` (conf/hydra/help/pipeline.yaml): the stages, each with the
    first line of its module's docstring, or the config groups with their options in conf/."""
    if name == "stages":
        from pipeline.commands import stage_summary
        from pipeline.config import STAGES

        lines = []
        for stage in STAGES:
            doc = stage_summary(stage)
            lines.append(f"  {stage:<10} {doc.removeprefix(f'stage={stage}').lstrip(': ')}")
    else:
        lines = [f"  {group:<15} {', '.join(options)}" for group, options in _groups().items()]
    return "\n".join(lines).replace("$", "$$")  # the template is a string.Template


def _groups() -> dict[str, list[str]]:
    """conf/<group>/*.yaml, the default (from conf/config.yaml) first and starred."""
    import yaml

    defaults: dict[str, str | None] = {}
    for entry in yaml.safe_load((CONF_DIR / "config.yaml").read_text())["defaults"]:
        if isinstance(entry, dict):
            ((key, value),) = entry.items()
            defaults[key] = value
    groups = {}
    for folder in sorted(p for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        chosen = defaults.get(folder.name)
        if chosen in options:
            options = [f"{chosen}*", *(o for o in options if o != chosen)]
        groups[folder.name] = options
    return groups


def main() -> None:
    register_configs()  # the dataclass schemas every conf/ option file starts from
    OmegaConf.register_new_resolver("pipeline_help", _help_section, replace=True)
    _register_optuna_sweeper()  # before the check: hparams_search=... composes its sweeper
    try:
        _check_command_line(sys.argv[1:])
    except PipelineError as exc:
        raise SystemExit(f"error: {exc}") from None
    _run()


if __name__ == "__main__":
    main()
