"""MLflow run lifecycle: start, log, and always end with the right status.

`import mlflow` costs seconds, so it happens only when a run actually starts.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import RunConfig

from pipeline.errors import ConfigError, PipelineError
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.mlflow_internals import tracking_uri_set
from pipeline.tracking.store import mlflow_client, sqlite_path, store_error

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
NAME_SUFFIX_TRIES = 5


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_name_for(cfg: RunConfig, stage: str) -> str:
    """A readable name from what distinguishes a run, e.g. `resnet50-full-digits-s42`;
    other stages prefix theirs (`lr_find/...`). start_run adds a suffix when it is taken."""
    data = cfg.data.name
    if cfg.data.kfold:
        data += f"-fold{cfg.data.fold}" if cfg.data.fold is not None else f"-kfold{cfg.data.kfold}"
    name = f"{cfg.backbone.name}-{cfg.finetune.strategy}-{data}-s{cfg.seed}"
    return name if stage == "train" else f"{stage}/{name}"


def sweep_id(sweep_dir: Path) -> str:
    """A multirun's id, the same in every job and in the launching process: its folder's
    last two parts, `<date>/<time>` for Hydra's default outputs/multirun/<date>/<time>."""
    return "/".join(Path(sweep_dir).parts[-2:])


class Run:
    """A live MLflow run (or a no-op one when tracking is disabled)."""

    def __init__(self, client: Any = None, run_id: str | None = None, name: str | None = None):
        self.client = client
        self.run_id = run_id
        self.name = name  # the name MLflow shows (None when tracking is off)

    @property
    def active(self) -> bool:
        return self.client is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in tags.items()]
        for i in range(0, len(items), 100):  # one request per 100 tags, not one per tag
            self.client.log_batch(self.run_id, tags=items[i : i + 100])

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        if self.active:
            self.client.log_artifact(self.run_id, str(path), subdir)


def _experiment_id(client: Any, cfg: TrackingConfig) -> str:
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if "://" not in cfg.uri or cfg.uri.startswith(("sqlite:", "file:")):
        # A local store keeps artifacts under an absolute file URI beside it, so
        # `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` finds them.
        location = _local_artifact_root(cfg).expanduser().resolve().as_uri()
    return client.create_experiment(cfg.experiment, artifact_location=location)


def _local_artifact_root(cfg: TrackingConfig) -> Path:
    """tracking.artifact_root, else artifacts/ beside the SQLite file: a store moved or
    deleted takes its runs' files with it (mlruns/artifacts for the default store)."""
    if cfg.artifact_root:
        return Path(cfg.artifact_root)
    db = sqlite_path(cfg.uri)
    return db.parent / "artifacts" if db is not None else Path("mlruns/artifacts")


def client_and_experiment(cfg: TrackingConfig) -> tuple[Any, str]:
    """The MLflow client of tracking.uri and the id of tracking.experiment (made if missing)."""
    client = mlflow_client(cfg.uri)
    return client, _experiment_id(client, cfg)


def _reopen_run(client: Any, run_id: str, tags: Mapping[str, str]) -> Run:
    """Set an ended (KILLED/FAILED) run RUNNING again, so a resumed job logs into it."""
    from mlflow.exceptions import MlflowException

    try:
        previous = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"cannot resume MLflow run {run_id}: not found in the store") from exc
    client.update_run(run_id, status="RUNNING")
    if "error" in previous.data.tags:  # the failure being recovered from; a new one re-tags
        client.delete_tag(run_id, "error")
    run = Run(client, run_id, previous.info.run_name)
    run.set_tags(tags)
    return run


def _name_taken(client: Any, experiment_id: str, name: str, run_id: str) -> bool:
    """Whether a run other than `run_id` that started earlier (ties: the smaller id) holds
    `name`, deleted runs included."""
    from mlflow.entities import ViewType

    quote = "'" if "'" not in name else '"'
    if quote in name:
        return True  # a name the filter cannot quote: take a suffix rather than risk a twin
    holders = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.run_name = {quote}{name}{quote}",
        run_view_type=ViewType.ALL,
    )
    started = {run.info.run_id: (run.info.start_time, run.info.run_id) for run in holders}
    mine = started.get(run_id, (float("inf"), run_id))
    return any(key < mine for other, key in started.items() if other != run_id)


def _unique_name(client: Any, experiment_id: str, run_id: str, name: str) -> str:
    """`name`, or `name-<4 hex>` when another run of the experiment holds it. Checked after
    the run exists, so two runs started at once see each other and the later one yields.
    The suffix is drawn from `secrets`: the seeded `random` would draw the same one."""
    chosen = name
    for _ in range(NAME_SUFFIX_TRIES):
        if not _name_taken(client, experiment_id, chosen, run_id):
            break
        chosen = f"{name}-{secrets.token_hex(2)}"
    if chosen != name:
        client.update_run(run_id, name=chosen)
    return chosen


@contextmanager
def start_run(
    cfg: TrackingConfig,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
    name: str | None = None,
) -> Iterator[Run]:
    """Yields a Run; ends it FINISHED, FAILED (error tagged) or KILLED (Ctrl-C / SIGTERM).

    A new run is named `cfg.run_name`, else `name` (run_name_for builds one from the config),
    with a short suffix when its experiment already holds that name: MLflow's own names come
    from `random`, which the run's seed fixes, so every run with one seed got the same.
    With `run_id`, reopens that run instead of creating one: how a resumed job (or a resumed
    ablation's parent) keeps logging to the same run."""
    if not cfg.enabled:
        yield Run()
        return

    client = mlflow_client(cfg.uri)
    run_tags = {**cfg.tags, **(tags or {})}
    if cfg.parent_run_id:
        run_tags["mlflow.parentRunId"] = cfg.parent_run_id
    try:
        if run_id:
            run = _reopen_run(client, run_id, run_tags)
        else:
            experiment_id = _experiment_id(client, cfg)
            wanted = cfg.run_name or name or run_tags.get("stage", "run")
            created = client.create_run(experiment_id, tags=run_tags, run_name=wanted)
            run_id = created.info.run_id
            run = Run(client, run_id, _unique_name(client, experiment_id, run_id, wanted))
    except PipelineError:
        raise
    except Exception as exc:  # a store that cannot be created or written, a refused request
        raise store_error(cfg.uri, exc) from exc
    try:
        yield run
    except KeyboardInterrupt:
        client.set_terminated(run.run_id, status="KILLED")
        raise
    except BaseException as exc:
        client.set_tag(run.run_id, "error", f"{type(exc).__name__}: {exc}"[:MAX_PARAM_LENGTH])
        client.set_terminated(run.run_id, status="FAILED")
        raise
    else:
        client.set_terminated(run.run_id, status="FINISHED")


def fetch_history(tracking_uri: str, run_id: str) -> list[dict[str, float]]:
    """The per-epoch train/val curves a training run logged, as `fit` returned them."""
    client = mlflow_client(tracking_uri)
    by_step: dict[int, dict[str, float]] = {}
    for name in ("train/loss", "train/acc", "val/loss", "val/acc"):
        for metric in client.get_metric_history(run_id, name):
            by_step.setdefault(metric.step, {})[name] = metric.value
    return [by_step[step] for step in sorted(by_step) if len(by_step[step]) == 4]


@contextmanager
def fluent_run(tracking_uri: str, run_id: str) -> Iterator[Any]:
    """Resume run `run_id` of `tracking_uri` as MLflow's fluent active run and yield the
    `mlflow` module: `mlflow.<flavor>.log_model` logs only to the active run. The global
    tracking URI is put back as it was afterwards (unset stays unset)."""
    import mlflow

    with tracking_uri_set(tracking_uri), mlflow.start_run(run_id=run_id):
        yield mlflow
