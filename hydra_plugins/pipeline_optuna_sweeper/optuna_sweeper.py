"""A Hydra sweeper that drives Optuna >= 4 by ask-and-tell: hparams_search=<name>.

It replaces hydra-optuna-sweeper, which pins optuna<3: that Optuna cannot open a storage with
the SQLAlchemy 2 that MLflow 3 brings, so `hydra.sweeper.storage=sqlite:///...` crashed. The
config surface is the same (conf/hydra/sweeper/optuna.yaml): `params` in Hydra's sweep syntax,
`n_trials`, `n_jobs`, `direction`, `study_name`, `storage` and `sampler`.

Every trial runs as the Hydra job numbered like the Optuna trial, so a study continued from
its storage numbers its output folders (and stage=search its MLflow runs) where it left off.
Hydra imports every plugin module at startup, so optuna is imported only when a sweep runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError, PipelineError, first_line

log = logging.getLogger(__name__)


def distribution(override: Override) -> Any:
    """The Optuna distribution for one sweep: choice(...) is categorical, interval(a, b) a
    float in [a, b], range(a, b, step) the ints (or floats) Hydra would list; tag(log, ...)
    samples interval/range on a log scale."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    sweep = override.value()
    log_scale = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, IntervalSweep):
        if sweep.start is None or sweep.end is None:  # Hydra's parser always sets both
            raise ValueError("interval(...) needs a start and an end")
        return FloatDistribution(sweep.start, sweep.end, log=log_scale)
    # Hydra types the values as any element, but Transformer.encode keeps str, int, float and
    # bool and writes anything else (a list, a dict) as its override string.
    values = cast(
        "list[str | int | float]", list(override.sweep_iterator(transformer=Transformer.encode))
    )
    if isinstance(sweep, RangeSweep) and not sweep.shuffle:
        step = abs(sweep.step)
        ints = [v for v in values if isinstance(v, int)]
        if len(ints) == len(values) and isinstance(step, int):  # Hydra lists ints or floats
            return IntDistribution(min(ints), max(ints), step=step, log=log_scale)
        floats = [v for v in values if isinstance(v, int | float)]
        return FloatDistribution(min(floats), max(floats), step=step, log=log_scale)
    if log_scale:
        raise ValueError("tag(log, ...) applies to interval(...) or range(...)")
    return CategoricalDistribution(values)


def search_space(overrides: Sequence[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(distributions, fixed values) from `key=value` overrides: a later override of a key
    replaces an earlier one, so a fixed value on the command line takes its key out of the
    search."""
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if not override.is_sweep_override():
            fixed[key] = override.get_value_element_as_str()
            continue
        try:
            space[key] = distribution(override)
        except ValueError as exc:
            raise ConfigError(f"hydra.sweeper.params {key}: {first_line(exc)}") from None
    return space, fixed


def trial_outcome(job: JobReturn) -> float | BaseException:
    """What a finished job tells the study: its objective, or why it has none."""
    try:
        value = job.return_value  # re-raises the job's own exception
    except Exception as exc:
        return exc
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ConfigError(
            f"a trial returned {value!r}, not an objective: Optuna sweeps need stage=search"
        )
    return float(value)


def study_direction(direction: str) -> Literal["maximize", "minimize"]:
    """The direction as the literal optuna.create_study takes, or a ConfigError."""
    if direction == "maximize":
        return "maximize"
    if direction == "minimize":
        return "minimize"
    raise ConfigError(f"hydra.sweeper.direction must be maximize or minimize, got {direction!r}")


def sqlite_parent_made(storage: str | None) -> None:
    """sqlite:///mlruns/optuna.db cannot be opened before mlruns/ exists."""
    prefix = "sqlite:///"
    if storage and storage.startswith(prefix) and storage != prefix + ":memory:":
        Path(storage[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


class OptunaSweeper(Sweeper):
    config: DictConfig  # Sweeper declares these Optional: setup() sets them before any sweep
    launcher: Launcher

    def __init__(
        self,
        sampler: DictConfig,
        direction: str,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        params: DictConfig | None,
    ) -> None:
        self.sampler = sampler  # a config: built once the study's trials are known
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params: Mapping[str, Any] = params or {}

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._sweep(arguments)
        except PipelineError as exc:  # one line and exit 1, like `python -m pipeline`
            raise SystemExit(f"error: {exc}") from None

    def _sweep(self, arguments: list[str]) -> None:
        direction = study_direction(self.direction)
        if self.n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_jobs must be at least 1, got {self.n_jobs}")
        params = [f"{key}={value}" for key, value in self.params.items()]
        space, fixed = search_space([*params, *arguments])
        study = self._open_study(direction)
        to_run = self.n_trials
        while to_run > 0:
            trials = [study.ask(space) for _ in range(min(to_run, self.n_jobs))]
            self._run_batch(study, trials, fixed)
            to_run -= len(trials)
        self._save_results(study)

    def _open_study(self, direction: Literal["maximize", "minimize"]) -> Any:
        import optuna

        sqlite_parent_made(self.storage)
        try:
            study = optuna.create_study(
                study_name=self.study_name,
                storage=self.storage,
                direction=direction,
                load_if_exists=True,
            )
        except Exception as exc:  # SQLAlchemy's URL and driver errors: many types, one cause
            raise ConfigError(f"hydra.sweeper.storage={self.storage}: {first_line(exc)}") from None
        stored = study.direction.name.lower()
        if stored != self.direction:  # Optuna keeps the stored direction without a word
            raise ConfigError(
                f"study {study.study_name!r} in {self.storage} was run to {stored}, not "
                f"{self.direction}: name a new study (search.study=...) to change direction"
            )
        done = len(study.trials)
        study.sampler = self._sampler(seed_offset=done)
        log.info(
            f"Optuna study {study.study_name!r} ({self.storage or 'in memory'}): "
            f"{done} trials so far, {self.n_trials} to run, {self.direction}"
        )
        return study

    def _sampler(self, seed_offset: int) -> Any:
        """A seeded sampler starts its random stream afresh in every process: offset the seed
        by the study's trials, or a continued study re-proposes the trials it already ran."""
        # A DictConfig with string keys gives a dict of them (to_container's type is any node's).
        sampler = cast("dict[str, Any]", OmegaConf.to_container(self.sampler, resolve=True))
        if sampler.get("seed") is not None:
            sampler["seed"] += seed_offset
        try:
            return instantiate(sampler)
        except Exception as exc:  # a bad _target_ or argument: Hydra wraps it in its own type
            raise ConfigError(f"hydra.sweeper.sampler: {first_line(exc)}") from None

    def _run_batch(self, study: Any, trials: list[Any], fixed: dict[str, str]) -> None:
        from optuna.trial import TrialState

        overrides = [
            [
                *(f"{k}={v}" for k, v in trial.params.items()),
                *(f"{k}={v}" for k, v in fixed.items()),
            ]
            for trial in trials
        ]
        try:
            jobs = self._launch(trials, overrides)
        except BaseException:  # a trial's `error: ...` exit or Ctrl-C: leave none RUNNING
            for trial in trials:
                study.tell(trial, state=TrialState.FAIL)
            raise
        outcomes = [trial_outcome(job) for job in jobs]
        for trial, outcome in zip(trials, outcomes, strict=True):
            if isinstance(outcome, float):
                study.tell(trial, outcome)
            else:
                study.tell(trial, state=TrialState.FAIL)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _launch(self, trials: list[Any], overrides: list[list[str]]) -> list[JobReturn]:
        """Launch each run of consecutive trial numbers as jobs numbered like the trials (a
        study another process adds to at the same time can leave gaps)."""
        jobs: list[JobReturn] = []
        start = 0
        for end in range(1, len(trials) + 1):
            if end == len(trials) or trials[end].number != trials[end - 1].number + 1:
                jobs += self.launcher.launch(
                    overrides[start:end], initial_job_idx=trials[start].number
                )
                start = end
        return jobs

    def _save_results(self, study: Any) -> None:
        from optuna.trial import TrialState

        if not study.get_trials(states=(TrialState.COMPLETE,)):
            return
        best = study.best_trial
        log.info(f"Best trial {best.number}: {best.value} with {best.params}")
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        results = {
            "name": "optuna",
            "study": study.study_name,
            "n_trials": len(study.trials),
            "best_trial": best.number,
            "best_value": best.value,
            "best_params": best.params,
        }
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
