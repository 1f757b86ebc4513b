"""The MLflow store behind tracking.uri: server probe, SQLite store creation, client.

`import mlflow` costs seconds, so it happens only when a store is actually used.
"""

from __future__ import annotations

import logging
import os
import secrets
from contextlib import closing
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, PipelineError, first_line
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.credentials import bare_uri
from pipeline.tracking.mlflow_internals import create_sqlalchemy_store

log = logging.getLogger(__name__)


SERVER_PROBE_TIMEOUT_S = 5.0


STORE_LOCK_TIMEOUT_S = 300.0  # creating a SQLite store takes seconds; a held lock, far less


def _check_server(uri: str) -> None:
    """An unreachable tracking server makes MLflow retry for minutes: ask it once, briefly.
    Any answer (an HTTP error such as 401 or 404, or a TLS handshake this probe cannot
    verify: MLflow has its own CA settings) means a server is there."""
    import ssl
    import urllib.error
    import urllib.request

    shown = bare_uri(uri)
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


def store_error(uri: str, exc: Exception) -> Exception:
    """The one-line error for a store that cannot be opened or written (password left out)."""
    return ConfigError(
        f"tracking.uri={bare_uri(uri)}: cannot open the MLflow store: {first_line(exc)}"
    )


def sqlite_path(uri: str) -> Path | None:
    """The database file of a local `sqlite:///` store; None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).expanduser()


def store_missing(uri: str) -> bool:
    """A local SQLite store that does not exist holds no runs: a look-up must not create it
    (a command that fails on a run id would leave an empty mlruns/mlflow.db behind)."""
    db = sqlite_path(uri)
    return db is not None and not db.is_file()


def _sqlite_store_state(db: Path) -> str:
    """'missing'; 'ready' (MLflow finished making it: its Default experiment exists);
    'half-made' (MLflow's tables but no experiment and no run: a creation that died midway,
    e.g. on a full disk); or 'other' (not an MLflow store, or one with runs but no
    experiment: MLflow's own error says more)."""
    import sqlite3

    if not db.is_file():
        return "missing"
    try:
        # absolute(): the default sqlite:///mlruns/mlflow.db is relative, and as_uri() needs it
        with closing(sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True)) as con:
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
    tmp = db.with_name(f".{db.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # As MlflowClient would (tables, Default experiment), closed before the rename.
        create_sqlalchemy_store(f"sqlite:///{tmp}")
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
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    try:
        db = sqlite_path(uri)
        if db is not None:
            _prepare_sqlite_store(db)
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=uri)
    except PipelineError:
        raise
    except Exception as exc:  # an unknown scheme, an unwritable folder, a full disk
        raise store_error(uri, exc) from exc


def _check_creatable(db: Path, uri: str) -> None:
    """The nearest existing folder above a missing store must be a writable folder."""
    folder = db.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"tracking.uri={bare_uri(uri)}: cannot create the MLflow store: {folder} is not "
            "a writable folder"
        )


def check_store(cfg: TrackingConfig) -> None:
    """Open the store and look up the experiment, before any data or model work: a bad URI,
    a server that refuses, fail in seconds, not after the build. A local store that does not
    exist yet is only checked to be creatable."""
    if not cfg.enabled:
        return
    db = sqlite_path(cfg.uri)
    if db is not None and not db.is_file():  # made by the run: a command that fails leaves none
        _check_creatable(db, cfg.uri)
        return
    client = mlflow_client(cfg.uri)
    try:
        client.get_experiment_by_name(cfg.experiment)
    except Exception as exc:
        raise store_error(cfg.uri, exc) from exc
