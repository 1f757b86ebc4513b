"""stage=search: one trial of a hyperparameter search (run by hydra_plugins' Optuna sweeper).

Trains once as a nested child of the study's parent run (found by its `study` tag, created by
the first trial; tracking.parents, as for ablations), returns the objective for the sweeper,
and keeps the best trial so far on the parent: its metric, run id and overrides (as tags and
`best_trial.yaml`).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import yaml

from pipeline.commands import train as train_command  # run_train looked up per call
from pipeline.commands.runtime import NO_HYDRA, HydraRuntime
from pipeline.config import RunConfig
from pipeline.experiments.search import objective
from pipeline.tracking.credentials import redact
from pipeline.tracking.parents import child_tracking, find_or_create_parent
from pipeline.tracking.runs import start_run

log = logging.getLogger(__name__)


def run_search(cfg: RunConfig, out_dir: Path, runtime: HydraRuntime = NO_HYDRA) -> float:
    """One trial: `runtime` is the sweep job (its number is the trial's, its overrides the
    trial's values, `swept` the searched keys)."""
    search, tracking = cfg.search, cfg.tracking
    trial = runtime.job_num
    overrides = [redact(o) for o in runtime.overrides]  # tracking.uri's user:password@ stays out
    sweep = str(runtime.sweep_dir.resolve()) if runtime.sweep_dir else None
    parent = find_or_create_parent(
        tracking, {"study": search.study, "stage": "search"}, f"search/{search.study}", {}, sweep
    )
    child_tracking_cfg = child_tracking(
        tracking,
        parent,
        f"{search.study}/trial{trial if trial is not None else ''}",
        {"study": search.study, "trial": str(trial)},
    )
    result = train_command.run_train(
        dataclasses.replace(cfg, stage="train", tracking=child_tracking_cfg),
        Path(out_dir),
        runtime=runtime,  # the trial's run gets its overrides and sweep tags
    )
    value = objective(result.fit.history, result.fit.best_epoch, search.metric)
    print(f"trial {trial}: {search.metric} {value:.4f}")
    if not parent.active:
        return value

    with start_run(dataclasses.replace(tracking, run_name=None), run_id=parent.run_id) as opened:
        key = f"best/{search.metric}"
        best = parent.client.get_run(parent.run_id).data.metrics.get(key)
        opened.log_metrics({"trials": (trial or 0) + 1}, step=trial or 0)
        if search.better(value, best):
            opened.log_metrics({key: value, "best/test/acc": result.test_metrics["test/acc"]})
            opened.set_tags({"best_run_id": result.run_id, "best_trial": trial})
            chosen = dict(o.split("=", 1) for o in overrides if "=" in o)
            opened.set_tags({f"best.{k}": v for k, v in chosen.items() if k in runtime.swept})
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
            opened.log_artifact(best_path)
    return value
