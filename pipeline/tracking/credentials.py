"""Credentials in a tracking URI: handed to MLflow the documented way, kept out of every text."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.tracking.config import TrackingConfig

# `scheme://user:password@` (or `user@`) in any text: what redact() removes. Up to the last
# '@' before the host, as urlsplit reads it: a password may hold an unescaped '@'.
_USERINFO = re.compile(r"(?<=://)[^/?#\s'\"]*@")


def redact(text: str) -> str:
    """`text` with every URI's `user:password@` taken out."""
    return _USERINFO.sub("", text)


def redact_files(paths: Iterable[Path]) -> None:
    """Take URI credentials out of files others wrote (Hydra's record of the command line).
    Replaced atomically: parallel jobs of a sweep may redact the same multirun.yaml."""
    for path in paths:
        text = path.read_text()
        clean = redact(text)
        if clean != text:
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(clean)
            os.replace(tmp, path)


def take_credentials(cfg: TrackingConfig) -> TrackingConfig:
    """A tracking.uri holding user:password@ hands them to MLflow the documented way
    (MLFLOW_TRACKING_USERNAME/PASSWORD, for this process) and keeps the bare URI: the
    password then reaches no param, config.yaml, checkpoint or printed link."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(cfg.uri)
    if parts.username is None and parts.password is None:
        return cfg
    bare = bare_uri(cfg.uri)
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


def bare_uri(uri: str) -> str:
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
