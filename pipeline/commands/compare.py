"""stage=compare: summarise any parent run (a sweep, an ablation, a search) from MLflow alone.

`python -m pipeline stage=compare compare.parent=<run id or name>` reads the parent's
children, compares their variants (mean ± std over seeds, paired statistics against a named
baseline), logs the table, chart and summary metrics to the parent again, and prints the
table. A sweep parent left RUNNING (its end hook never ran: a job failed) ends FINISHED.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.commands.sweep import PARENT_STAGE, compare_children
from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.experiments.ablation import BASELINE
from pipeline.tracking.parents import ParentRun
from pipeline.tracking.runs import Run, client_and_experiment

log = logging.getLogger(__name__)


def find_run(client: Any, experiment_id: str, spec: str) -> Any:
    """The run whose id is `spec`, else the latest run of the experiment named `spec`."""
    from mlflow.exceptions import MlflowException

    if not spec:
        raise ConfigError("stage=compare needs compare.parent=<the parent run's id or name>")
    try:
        return client.get_run(spec)
    except MlflowException:
        pass
    quote = "'" if "'" not in spec else '"'
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.run_name = {quote}{spec}{quote}",
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise ConfigError(
            f"compare.parent={spec!r}: no run with that id, nor with that name in this "
            "experiment (set tracking.experiment=...)"
        )
    return runs[0]


def run_compare(cfg: RunConfig, out_dir: Path) -> list:
    if not cfg.tracking.enabled:
        raise ConfigError("stage=compare reads MLflow: it needs tracking.enabled=true")
    client, experiment_id = client_and_experiment(cfg.tracking)
    found = find_run(client, experiment_id, cfg.compare.parent)
    run_id, tags = found.info.run_id, found.data.tags
    parent = ParentRun(client, run_id, found.info.run_name, found.info.experiment_id)
    children = parent.children()
    if not children:
        raise ConfigError(f"compare.parent={cfg.compare.parent!r}: run {run_id} has no children")
    ablation = tags.get("stage") == "ablate"
    metric = cfg.compare.metric or found.data.params.get("ablation.metric", "test/acc")
    baseline = cfg.compare.baseline or (BASELINE if ablation else "")
    out_dir = Path(out_dir)
    summaries, table = compare_children(
        Run(client, run_id, found.info.run_name),
        children,
        out_dir,
        metric,
        baseline,
        found.info.run_name or run_id,
        stem="ablation" if ablation else "comparison",
    )
    running = any(child.info.status == "RUNNING" for child in children)
    if tags.get("stage") == PARENT_STAGE and found.info.status == "RUNNING" and not running:
        client.set_terminated(run_id, status="FINISHED")
    print(f"parent run {run_id} ({found.info.run_name}): {len(children)} children\n\n{table}\n")
    return summaries
