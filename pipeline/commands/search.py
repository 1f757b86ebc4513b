"""stage=search: one trial of a hyperparameter search (run by hydra_plugins' Optuna sweeper).

Trains once as a nested child of the study's parent run (found by its `study` tag, created by
the first trial), returns the objective for the sweeper, and keeps the best trial so far on
the parent: its metric, run id and overrides (as tags and `best_trial.yaml`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import yaml

from pipeline.commands import train as train_command  # run_train looked up per call
from pipeline.config import RunConfig
from pipeline.experiments.search import objective
from pipeline.tracking.credentials import redact
from pipeline.tracking.runs import client_and_experiment, start_run

log = logging.getLogger(__name__)


def _trial_overrides() -> tuple[int | None, list[str], set[str]]:
    """(Hydra job number, this trial's overrides, the swept keys) under a sweep."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None, [], set()
    hydra_cfg = HydraConfig.get()
    num = hydra_cfg.job.get("num")
    swept = set(hydra_cfg.sweeper.get("params") or {})
    return (int(num) if num is not None else None), list(hydra_cfg.overrides.task), swept


def find_study_parent(client: Any, experiment_id: str, study: str) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.study = '{study}' and tags.stage = 'search'",
        order_by=["attributes.start_time ASC"],
    )
    return runs[0].info.run_id if runs else None


def run_search(cfg: RunConfig, out_dir: Path) -> float:
    search, tracking = cfg.search, cfg.tracking
    trial, overrides, swept = _trial_overrides()
    overrides = [redact(o) for o in overrides]  # tracking.uri's user:password@ stays out
    parent_id = None
    if tracking.enabled:
        client, experiment_id = client_and_experiment(tracking)
        parent_id = find_study_parent(client, experiment_id, search.study)
        if parent_id is None:
            parent_id = client.create_run(
                experiment_id,
                tags={"study": search.study, "stage": "search"},
                run_name=f"search/{search.study}",
            ).info.run_id
    child_tracking = dataclasses.replace(
        tracking,
        parent_run_id=parent_id,
        run_name=f"{search.study}/trial{trial if trial is not None else ''}",
        tags={**tracking.tags, "study": search.study, "trial": str(trial)},
    )
    result = train_command.run_train(
        dataclasses.replace(cfg, stage="train", tracking=child_tracking), Path(out_dir)
    )
    value = objective(result.fit.history, result.fit.best_epoch, search.metric)
    print(f"trial {trial}: {search.metric} {value:.4f}")
    if parent_id is None:
        return value

    with start_run(dataclasses.replace(tracking, run_name=None), run_id=parent_id) as parent:
        key = f"best/{search.metric}"
        best = client.get_run(parent_id).data.metrics.get(key)
        parent.log_metrics({"trials": (trial or 0) + 1}, step=trial or 0)
        if search.better(value, best):
            parent.log_metrics({key: value, "best/test/acc": result.test_metrics["test/acc"]})
            parent.set_tags({"best_run_id": result.run_id, "best_trial": trial})
            chosen = dict(o.split("=", 1) for o in overrides if "=" in o)
            parent.set_tags({f"best.{k}": v for k, v in chosen.items() if k in swept})
            best_path = Path(out_dir) / "best_trial.yaml"
            best_path.write_text(
                yaml.safe_dump(
                    {
                        "trial": trial,
                        "run_id": result.run_id,
                        search.metric: value,
                        "overrides": overrides,
                    },
                    sort_keys=False,
                )
            )
            parent.log_artifact(best_path)
    return value
