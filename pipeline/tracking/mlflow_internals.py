"""Every use of a private MLflow name, in one place (tests/test_tracking.py keeps it so).

MLflow's public API lacks a few things this project needs; each function below says which
private name it leans on, why, and what breaks if a new MLflow removes or changes it. On an
MLflow upgrade, read this module first.

`import mlflow` costs seconds, so it happens inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def create_sqlalchemy_store(uri: str) -> Any:
    """Create the database store at `uri` exactly as MlflowClient would on first use (its
    tables, migrations and the Default experiment), and close its connections.

    Private: `mlflow.tracking._tracking_service.utils._get_sqlalchemy_store` (the public
    MlflowClient creates a store only lazily, at its first request, and keeps the engine).
    tracking.store builds a new SQLite store with it in a temp file, then renames it into
    place; if this name goes, that fails with an ImportError, which store.mlflow_client
    reports in one line ("cannot open the MLflow store"): every first run on a new SQLite
    store would fail (tests/test_tracking.py shows it at once).
    """
    from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store

    store = _get_sqlalchemy_store(uri, None)
    store.engine.dispose()  # closed: the caller renames the file
    _forget_engine(uri)
    return store


def _forget_engine(uri: str) -> None:
    """Drop MLflow's cached engine for `uri`: the temp file it points at is renamed away.

    Private: `SqlAlchemyStore._engine_map` (a per-URI engine cache). Read with getattr: if a
    new MLflow drops the cache there is nothing to forget; if it renames it, a stale engine
    for a temp URI that is never used again stays in memory (harmless)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)


@contextmanager
def tracking_uri_set(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (mlflow.start_run, mlflow.<flavor>.log_model) at `uri` for
    the block, then put the global URI back exactly as it was.

    Private: `mlflow.tracking._tracking_service.utils._use_tracking_uri`. The public
    `mlflow.set_tracking_uri` cannot restore an unset URI (unset means MLFLOW_TRACKING_URI
    or the default), so a process that exports twice, or a test, would keep ours. If this
    name goes, stage=export fails with an ImportError after exporting the file, before
    logging the MLflow model."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield


def untyped_python_model() -> Any:
    """`mlflow.pyfunc.PythonModel`, for a `predict` without type hints (an image array in, a
    DataFrame out: no hint MLflow validates describes them), made without MLflow's warning.

    Private: `PythonModel._skip_type_hint_validation`, which stops __init_subclass__ from
    asking for hints (with a warning that `warnings.catch_warnings` cannot silence: MLflow
    sets its own filter). If it goes, each training run prints that yellow warning when it
    logs its model; nothing else changes."""
    from mlflow.pyfunc import PythonModel

    class UntypedPythonModel(PythonModel):
        _skip_type_hint_validation = True

    return UntypedPythonModel


def dataset_entity(dataset: Any) -> Any:
    """The `mlflow.entities.Dataset` of an `mlflow.data` dataset, for
    `MlflowClient.log_inputs` (the public `mlflow.log_input` needs a fluent active run, and
    ending that would mark a training run FINISHED while it trains).

    Private: `Dataset._to_mlflow_entity`. If it goes, a training run fails at its start with
    an AttributeError (tests/test_run_logging.py shows it at once)."""
    return dataset._to_mlflow_entity()


@contextmanager
def system_metrics_monitor(run_id: str, tracking_uri: str, interval_s: float) -> Iterator[None]:
    """MLflow's system metrics monitor on a run this project created with the client (MLflow
    starts one only for fluent runs), sampling every `interval_s`; stopped however the block
    ends, and one last sample logged then, so a run shorter than the interval gets a point.

    Semi-private: `mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`, the
    class `mlflow.start_run(log_system_metrics=True)` uses, not in MLflow's API docs. If it
    goes or changes, an ImportError/TypeError fails every training run at its start with
    tracking.system_metrics=true (tests/test_run_logging.py shows it); set it false meanwhile."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as exc:  # psutil missing: train on, without system metrics
        logging.getLogger(__name__).warning(
            "no system metrics: %s (pip install psutil, or set tracking.system_metrics=false)",
            exc,
        )
        yield
        return
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval_s, resume_logging=True, tracking_uri=tracking_uri
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()  # joins the sampling thread and flushes what it collected
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception:  # a store gone at the end must not hide how the run ended
            pass
