"""MLflow run lifecycle: start, log, and always end with the right status.

`import mlflow` costs seconds, so it happens only when a run actually starts.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import RunConfig

from pipeline.errors import ConfigError, PipelineError
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.credentials import redact
from pipeline.tracking.mlflow_internals import (
    dataset_entity,
    system_metrics_monitor,
    tracking_uri_set,
)
from pipeline.tracking.params import flatten as flatten  # where the stages import it from
from pipeline.tracking.params import param_text
from pipeline.tracking.store import mlflow_client, sqlite_path, store_error

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
NAME_SUFFIX_TRIES = 5
DATASET_INSERT_TRIES = 3
# MLflow 3's UI opens an experiment of this kind on its model-training view, not the GenAI one
# (the values: the UI's ExperimentKind enum in mlflow/server/js).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A runs-table view with the key test metrics as columns, saved as the experiment tag MLflow
# 3's "Share" button writes; the UI shows it at `?viewStateShareKey=pipeline` (ui_path).
# The UI keeps a user's own column choice in the browser only, so a link is the one way in.
KEY_METRICS_VIEW = "pipeline"
KEY_METRICS = ("test/acc", "test/f1_macro", "test/loss", "best_epoch", "train_seconds")
SYSTEM_METRICS_INTERVAL_S = 5.0  # a one-minute run gets a dozen points (MLflow's default: 10)


def run_name_for(cfg: RunConfig, stage: str) -> str:
    """A readable name from what distinguishes a run, e.g. `resnet50-full-digits-s42`;
    other stages prefix theirs (`lr_find/...`). start_run adds a suffix when it is taken."""
    data = cfg.data.name
    if cfg.data.kfold:
        data += f"-fold{cfg.data.fold}" if cfg.data.fold is not None else f"-kfold{cfg.data.kfold}"
    name = f"{cfg.backbone.name}-{cfg.finetune.strategy}-{data}-s{cfg.seed}"
    return name if stage == "train" else f"{stage}/{name}"


def sweep_id(sweep_dir: str | Path) -> str:
    """What the `sweep` tag of every job of one multirun holds: the last two parts of Hydra's
    sweep folder, `<date>/<time>` under the default `outputs/multirun/<date>/<time>`."""
    return "/".join(Path(sweep_dir).parts[-2:])


def grouping_tags(
    stage: str, seed: int, overrides: Sequence[str] = (), sweep_dir: str | Path | None = None
) -> dict[str, str]:
    """The tags the runs table groups and filters by: `stage`, `seed`, the command line's
    overrides as one line (credentials redacted) and, for a multirun's job, `sweep`."""
    tags = {"stage": stage, "seed": str(seed)}
    if overrides:
        tags["overrides"] = param_text(redact(" ".join(overrides)))
    if sweep_dir is not None:
        tags["sweep"] = sweep_id(sweep_dir)
    return tags


class Run:
    """A live MLflow run (or a no-op one when tracking is disabled)."""

    def __init__(
        self,
        client: Any = None,
        run_id: str | None = None,
        name: str | None = None,
        experiment_id: str | None = None,
    ):
        self.client = client
        self.run_id = run_id
        self.name = name  # the name MLflow shows (None when tracking is off)
        self.experiment_id = experiment_id

    @property
    def active(self) -> bool:
        return self.client is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        from mlflow.entities import Param

        # One line each: a multi-line value makes a tall, unreadable runs-table cell.
        items = [Param(k, param_text(str(v))[:MAX_PARAM_LENGTH]) for k, v in params.items()]
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

    def log_inputs(self, datasets: Mapping[str, Any]) -> None:
        """`{context: mlflow.data Dataset}`: the runs table's Dataset column, e.g.
        {'train': ..., 'val': ..., 'test': ...}."""
        if not self.active:
            return
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        inputs = [
            DatasetInput(dataset_entity(dataset), [InputTag("mlflow.data.context", context)])
            for context, dataset in datasets.items()
        ]
        for attempt in range(DATASET_INSERT_TRIES):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                return
            except MlflowException as exc:
                # Parallel jobs of a sweep insert the same new dataset at once; SQLite refuses
                # the later insert, and a retry then finds the dataset and only links it.
                if "UNIQUE constraint" not in str(exc) or attempt + 1 == DATASET_INSERT_TRIES:
                    raise


@contextmanager
def quiet_logger(name: str, level: int) -> Iterator[None]:
    """Raise logger `name` to `level` for the block: MLflow's INFO chatter is not a training
    run's news. Put back as it was afterwards."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextmanager
def system_metrics_logged(run: Run, cfg: TrackingConfig) -> Iterator[None]:
    """MLflow's system metrics (`system/cpu_utilization_percentage`, memory, disk, network;
    GPU through nvml where present) on `run` while the block runs, when
    tracking.system_metrics is on. Stopped however the block ends (error, Ctrl-C)."""
    if not (run.active and cfg.system_metrics):
        yield
        return
    # Its start, stop and "no GPU" INFO lines stay out of the console.
    with (
        quiet_logger("mlflow.system_metrics", logging.WARNING),
        system_metrics_monitor(str(run.run_id), cfg.uri, SYSTEM_METRICS_INTERVAL_S),
    ):
        yield


def experiment_tags() -> dict[str, str]:
    """What the project sets on an experiment it logs to: MLflow 3's UI then opens it on the
    model-training view (not GenAI), and the key-metrics view link (ui_path) works."""
    import json

    view = {
        "selectedColumns": [f"metrics.`{name}`" for name in KEY_METRICS],
        "orderByKey": "metrics.`test/acc`",
        "orderByAsc": False,
    }
    return {
        EXPERIMENT_KIND_TAG: EXPERIMENT_KIND,
        f"mlflow.sharedViewState.{KEY_METRICS_VIEW}": json.dumps(view),
    }


def ui_path(experiment_id: str) -> str:
    """The experiment's runs table in MLflow's UI, in model-training mode (the UI's default
    is GenAI) with the key test metrics as columns: append it to the UI's address."""
    query = f"workflowType=machine_learning&viewStateShareKey={KEY_METRICS_VIEW}"
    return f"/#/experiments/{experiment_id}/runs?{query}"


def _experiment_id(client: Any, cfg: TrackingConfig) -> str:
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        missing = {k: v for k, v in experiment_tags().items() if k not in experiment.tags}
        if missing:  # one made before, or by others
            _tag_experiment(client, experiment.experiment_id, missing)
        return experiment.experiment_id
    location = None
    if "://" not in cfg.uri or cfg.uri.startswith(("sqlite:", "file:")):
        # A local store keeps artifacts under an absolute file URI beside it, so
        # `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` finds them.
        location = _local_artifact_root(cfg).expanduser().resolve().as_uri()
    return client.create_experiment(
        cfg.experiment, artifact_location=location, tags=experiment_tags()
    )


def _tag_experiment(client: Any, experiment_id: str, tags: Mapping[str, str]) -> None:
    """Best effort: parallel jobs may tag it at once, and a SQLite store then refuses the
    second insert (UNIQUE constraint); the tag is there either way."""
    from mlflow.exceptions import MlflowException

    for key, value in tags.items():
        try:
            client.set_experiment_tag(experiment_id, key, value)
        except MlflowException as exc:
            log.debug("experiment %s not tagged %s: %s", experiment_id, key, exc)


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
    run = Run(client, run_id, previous.info.run_name, previous.info.experiment_id)
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
            unique = _unique_name(client, experiment_id, run_id, wanted)
            run = Run(client, run_id, unique, experiment_id)
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
