"""Settings of MLflow tracking (conf/tracking): `TrackingConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///mlruns/mlflow.db"
    # For experiments a local store creates; None: artifacts/ beside a SQLite store's file.
    artifact_root: str | None = None
    experiment: str = "default"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # Nest this run under another (ablation and search children); set as `mlflow.parentRunId`
    # explicitly so it works from any process, not only inside an active parent.
    parent_run_id: str | None = None
    # A training run logs its model as an MLflow model (pyfunc: labels and probabilities),
    # loadable with mlflow.pyfunc.load_model and servable with `mlflow models serve`.
    log_model: bool = True
    # MLflow's system metrics (CPU, memory, disk, network; GPU via nvml) on a training run.
    system_metrics: bool = True
