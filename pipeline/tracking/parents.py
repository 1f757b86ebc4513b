"""Parent runs that group children: an ablation's (variant, seed) runs, a search's trials.

A parent is found by its tags, never held in memory, so every process that asks for the same
one (the parallel jobs of a Hydra multirun, a rerun days later) gets the same run, and its
children link to it by `mlflow.parentRunId` from any process.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from pipeline.errors import ConfigError
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.runs import Run, client_and_experiment

log = logging.getLogger(__name__)

MAX_CHILDREN = 50000  # one search request; far above any ablation or study


class ParentRun(Run):
    """A parent run (or a no-op one when tracking is disabled) and the experiment it is in
    (`experiment_id`, which Run holds)."""

    def children(self) -> list[Any]:
        """Every run linked to this one (any status), as MLflow Run objects."""
        if not self.active:
            return []
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'",
            max_results=MAX_CHILDREN,
        )


CREATED_BY_SWEEP_TAG = "created_by_sweep"  # on a parent: the multirun whose job created it


def find_or_create_parent(
    tracking: TrackingConfig,
    tags: Mapping[str, str],
    name: str,
    params: Mapping[str, Any],
    sweep: str | None = None,
) -> ParentRun:
    """The parent run carrying `tags` in tracking.experiment: the oldest one there, else a
    new one named `name` with `params` logged. Two processes that ask at once get one parent
    (see _create_parent). A no-op ParentRun when tracking is disabled.

    `sweep` names the multirun this job belongs to: a parent an earlier job of the same sweep
    created is joined, not resumed (only the wording differs)."""
    if not tracking.enabled:
        return ParentRun()
    client, experiment_id = client_and_experiment(tracking)
    run_id = find_parent(client, experiment_id, tags)
    if run_id is None:
        created = {**tags, CREATED_BY_SWEEP_TAG: sweep} if sweep else tags
        run_id = _create_parent(client, experiment_id, created, name, params, tags)
    elif sweep and client.get_run(run_id).data.tags.get(CREATED_BY_SWEEP_TAG) == sweep:
        log.info("joining %s: parent run %s (this sweep's)", name, run_id)
    else:
        log.info("resuming %s: parent run %s", name, run_id)
    return ParentRun(client, run_id, name, experiment_id)


def child_tracking(
    tracking: TrackingConfig, parent: Run, run_name: str, tags: Mapping[str, str]
) -> TrackingConfig:
    """Tracking settings for a child of `parent`: its name, its tags added to the config's,
    and `mlflow.parentRunId` set explicitly (start_run), which links it from any process."""
    return dataclasses.replace(
        tracking,
        parent_run_id=parent.run_id,
        run_name=run_name,
        tags={**tracking.tags, **tags},
    )


def find_parent(client: Any, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The oldest active run carrying `tags` (start time, then run id: the one every
    process agrees on)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=_tag_filter(tags),
        order_by=["attributes.start_time ASC"],
    )
    runs = sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))
    return runs[0].info.run_id if runs else None


def _create_parent(
    client: Any,
    experiment_id: str,
    tags: Mapping[str, str],
    name: str,
    params: Mapping[str, Any],
    found_by: Mapping[str, str] | None = None,
) -> str:
    """Create the parent, then defer to an older one if a parallel job won the race.

    Both racers create a run and then look: each sees both and picks the same oldest; the
    other deletes its own (deleted runs are out of every later search); they look by
    `found_by` (default: `tags`), the tags every racer sets alike. Left open: a job
    that looked before the other created, in the same millisecond, when the other's run id
    sorts first; each then keeps its own (two parents; their children stay linked)."""
    run_id = client.create_run(experiment_id, tags=dict(tags), run_name=name).info.run_id
    oldest = find_parent(client, experiment_id, found_by or tags)
    if oldest is not None and oldest != run_id:
        client.delete_run(run_id)
        log.info("%s: a parallel job created parent run %s first; using it", name, oldest)
        return oldest
    Run(client, run_id).log_params(params)
    return run_id


def _tag_filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{key}` = {_quoted(key, value)}" for key, value in tags.items())


def _quoted(key: str, value: str) -> str:
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ConfigError(
        f"{key}={value!r}: a name with both ' and \" cannot be searched for in MLflow"
    )
