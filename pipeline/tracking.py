"""MLflow run lifecycle: start, log, and always end with the right status.

`import mlflow` costs seconds, so it happens only when a run actually starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
SERVER_PROBE_TIMEOUT_S = 5.0


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"  # for experiments this store creates
    experiment: str = "default"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # Nest this run under another (ablation and search children); set as `mlflow.parentRunId`
    # explicitly so it works from any process, not only inside an active parent.
    parent_run_id: str | None = None


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


class Run:
    """A live MLflow run (or a no-op one when tracking is disabled)."""

    def __init__(self, client: Any = None, run_id: str | None = None):
        self.client = client
        self.run_id = run_id

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
        location = Path(cfg.artifact_root).expanduser().resolve().as_uri()
    return client.create_experiment(cfg.experiment, artifact_location=location)


def _redacted(uri: str) -> str:
    """The URI without user:password@, for probes and messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _check_server(uri: str) -> None:
    """An unreachable tracking server makes MLflow retry for minutes: ask it once, briefly.
    Any answer (an HTTP error such as 401 or 404, or a TLS handshake this probe cannot
    verify: MLflow has its own CA settings) means a server is there."""
    import ssl
    import urllib.error
    import urllib.request

    from pipeline.errors import ConfigError

    shown = _redacted(uri)
    try:
        with urllib.request.urlopen(f"{shown.rstrip('/')}/health", timeout=SERVER_PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(exc, ssl.SSLError) or isinstance(reason, ssl.SSLError | ssl.CertificateError):
            return
        raise ConfigError(
            f"tracking.uri={shown}: no MLflow server answers ({reason}); start one, or use "
            "the local store (tracking.uri=sqlite:///mlruns/mlflow.db), or tracking.enabled=false"
        ) from exc


def _store_error(uri: str, exc: Exception) -> Exception:
    from pipeline.errors import ConfigError, first_line

    return ConfigError(
        f"tracking.uri={_redacted(uri)}: cannot open the MLflow store: {first_line(exc)}"
    )


def store_missing(uri: str) -> bool:
    """A local SQLite store that does not exist holds no runs: a look-up must not create it
    (a command that fails on a run id would leave an empty mlruns/mlflow.db behind)."""
    if not uri.startswith("sqlite:///"):
        return False
    return not Path(uri.removeprefix("sqlite:///")).expanduser().is_file()


def mlflow_client(uri: str) -> Any:
    """An MlflowClient for `uri`, after checks that fail in seconds with one line."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    try:
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///")).expanduser()
            db.parent.mkdir(parents=True, exist_ok=True)
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=uri)
    except Exception as exc:  # an unknown scheme, an unwritable folder
        raise _store_error(uri, exc) from exc


def _reopen_run(client: Any, run_id: str, tags: Mapping[str, str]) -> Run:
    """Set an ended (KILLED/FAILED) run RUNNING again, so a resumed job logs into it."""
    from mlflow.exceptions import MlflowException

    from pipeline.errors import ConfigError

    try:
        previous = client.get_run(run_id)
    except MlflowException as exc:
        raise ConfigError(f"cannot resume MLflow run {run_id}: not found in the store") from exc
    client.update_run(run_id, status="RUNNING")
    if "error" in previous.data.tags:  # the failure being recovered from; a new one re-tags
        client.delete_tag(run_id, "error")
    run = Run(client, run_id)
    run.set_tags(tags)
    return run


@contextmanager
def start_run(
    cfg: TrackingConfig, tags: Mapping[str, str] | None = None, run_id: str | None = None
) -> Iterator[Run]:
    """Yields a Run; ends it FINISHED, FAILED (error tagged) or KILLED (Ctrl-C / SIGTERM).

    With `run_id`, reopens that run instead of creating one: how a resumed job (or a resumed
    ablation's parent) keeps logging to the same run."""
    if not cfg.enabled:
        yield Run()
        return
    from pipeline.errors import PipelineError

    client = mlflow_client(cfg.uri)
    run_tags = {**cfg.tags, **(tags or {})}
    if cfg.parent_run_id:
        run_tags["mlflow.parentRunId"] = cfg.parent_run_id
    try:
        if run_id:
            run = _reopen_run(client, run_id, run_tags)
        else:
            experiment_id = _experiment_id(client, cfg)
            if cfg.run_name:
                run_tags["mlflow.runName"] = cfg.run_name
            mlflow_run = client.create_run(experiment_id, tags=run_tags, run_name=cfg.run_name)
            run = Run(client, mlflow_run.info.run_id)
    except PipelineError:
        raise
    except Exception as exc:  # a store that cannot be created or written, a refused request
        raise _store_error(cfg.uri, exc) from exc
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
