"""MLflow run lifecycle: start, log, and always end with the right status.

`import mlflow` costs seconds, so it happens only when a run actually starts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import RunConfig

log = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
SERVER_PROBE_TIMEOUT_S = 5.0
STORE_LOCK_TIMEOUT_S = 300.0  # creating a SQLite store takes seconds; a held lock, far less
NAME_SUFFIX_TRIES = 5
# `scheme://user:password@` (or `user@`) in any text: what redact() removes.
_USERINFO = re.compile(r"(?<=://)[^/?#@\s'\"]*@")


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


def run_name_for(cfg: RunConfig, stage: str) -> str:
    """A readable name from what distinguishes a run, e.g. `resnet50-full-digits-s42`;
    other stages prefix theirs (`lr_find/...`). start_run adds a suffix when it is taken."""
    data = cfg.data.name
    if cfg.data.kfold:
        data += f"-fold{cfg.data.fold}" if cfg.data.fold is not None else f"-kfold{cfg.data.kfold}"
    name = f"{cfg.backbone.name}-{cfg.finetune.strategy}-{data}-s{cfg.seed}"
    return name if stage == "train" else f"{stage}/{name}"


def redact(text: str) -> str:
    """`text` with every URI's `user:password@` taken out."""
    return _USERINFO.sub("", text)


def redact_files(paths: Iterable[Path]) -> None:
    """Take URI credentials out of files others wrote (Hydra's record of the command line).
    Replaced atomically: parallel jobs of a sweep may redact the same multirun.yaml."""
    for path in paths:
        text = path.read_text()
        if redact(text) != text:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(redact(text))
            os.replace(tmp, path)


def take_credentials(cfg: TrackingConfig) -> TrackingConfig:
    """A tracking.uri holding user:password@ hands them to MLflow the documented way
    (MLFLOW_TRACKING_USERNAME/PASSWORD, for this process) and keeps the bare URI: the
    password then reaches no param, config.yaml, checkpoint or printed link."""
    from urllib.parse import unquote, urlsplit

    from pipeline.errors import ConfigError

    parts = urlsplit(cfg.uri)
    if parts.username is None and parts.password is None:
        return cfg
    bare = _redacted(cfg.uri)
    if parts.scheme not in ("http", "https"):
        if parts.password is None:  # a database user name alone is no secret
            return cfg
        raise ConfigError(
            f"tracking.uri={bare}: a database password in the URI would be logged with every "
            "run; keep it in the driver's own place (PostgreSQL: PGPASSWORD or ~/.pgpass), or "
            "run an MLflow server on the database and point tracking.uri at it"
        )
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    if parts.password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    return dataclasses.replace(cfg, uri=bare)


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


def _sqlite_store_state(db: Path) -> str:
    """'missing'; 'ready' (MLflow finished making it: its Default experiment exists);
    'half-made' (MLflow's tables but no experiment and no run: a creation that died midway,
    e.g. on a full disk); or 'other' (not an MLflow store, or one with runs but no
    experiment: MLflow's own error says more)."""
    import sqlite3

    if not db.is_file():
        return "missing"
    try:
        with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
            if _has_rows(con, tables, "experiments"):
                return "ready"
            if _has_rows(con, tables, "runs"):
                return "other"
            # Empty, or begun by MLflow; another program's database is none of ours to replace.
            begun = not tables or {"experiments", "alembic_version"} & tables
            return "half-made" if begun else "other"
    except sqlite3.DatabaseError:
        return "other"


def _has_rows(con: Any, tables: set[str], table: str) -> bool:
    return table in tables and con.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None


def _create_sqlite_store(db: Path) -> None:
    """Make the whole store in a temp file beside `db`, then rename it into place: a
    failure midway leaves no store, never half of one."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _get_sqlalchemy_store

    tmp = db.with_name(f".{db.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp_uri = f"sqlite:///{tmp}"
    try:
        store = _get_sqlalchemy_store(tmp_uri, None)  # as MlflowClient would: tables, Default
        store.engine.dispose()  # closed before the rename; the temp URI is never used again
        getattr(SqlAlchemyStore, "_engine_map", {}).pop(tmp_uri, None)
        os.replace(tmp, db)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


def _prepare_sqlite_store(db: Path) -> None:
    """MLflow creates a new store's tables in place: two first runs at once collide
    (`duplicate column name`), and a full disk midway leaves a store that never opens
    again (`table ... already exists`). So a missing store is made here, under a file lock,
    atomically; a half-made one (no experiment, no run: nothing to lose) is made anew."""
    if _sqlite_store_state(db) == "ready":  # every run but a store's first: no lock
        return
    from filelock import FileLock, Timeout

    from pipeline.errors import ConfigError

    db.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{db}.lock", timeout=STORE_LOCK_TIMEOUT_S)
    try:
        with lock:
            state = _sqlite_store_state(db)  # another process may have made it meanwhile
            if state == "half-made":
                log.warning("%s: rebuilding a half-made MLflow store (no runs in it)", db)
            if state in ("missing", "half-made"):
                _create_sqlite_store(db)
    except Timeout:
        raise ConfigError(
            f"tracking.uri=sqlite:///{db}: another process has held {lock.lock_file} for "
            f"{STORE_LOCK_TIMEOUT_S:.0f} s while creating the store; is one stuck?"
        ) from None


def mlflow_client(uri: str) -> Any:
    """An MlflowClient for `uri`, after checks that fail in seconds with one line."""
    from pipeline.errors import PipelineError

    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    try:
        if uri.startswith("sqlite:///"):
            _prepare_sqlite_store(Path(uri.removeprefix("sqlite:///")).expanduser())
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=uri)
    except PipelineError:
        raise
    except Exception as exc:  # an unknown scheme, an unwritable folder, a full disk
        raise _store_error(uri, exc) from exc


def _check_creatable(db: Path, uri: str) -> None:
    """The nearest existing folder above a missing store must be a writable folder."""
    from pipeline.errors import ConfigError

    folder = db.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"tracking.uri={_redacted(uri)}: cannot create the MLflow store: {folder} is not "
            "a writable folder"
        )


def check_store(cfg: TrackingConfig) -> None:
    """Open the store and look up the experiment, before any data or model work: a bad URI,
    a server that refuses, fail in seconds, not after the build. A local store that does not
    exist yet is only checked to be creatable."""
    if not cfg.enabled:
        return
    if store_missing(cfg.uri):  # made by the run itself: a command that fails leaves none
        _check_creatable(Path(cfg.uri.removeprefix("sqlite:///")).expanduser(), cfg.uri)
        return
    client = mlflow_client(cfg.uri)
    try:
        client.get_experiment_by_name(cfg.experiment)
    except Exception as exc:
        raise _store_error(cfg.uri, exc) from exc


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
            wanted = cfg.run_name or name or run_tags.get("stage", "run")
            created = client.create_run(experiment_id, tags=run_tags, run_name=wanted)
            run_id = created.info.run_id
            run = Run(client, run_id, _unique_name(client, experiment_id, run_id, wanted))
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
