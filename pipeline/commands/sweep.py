"""A Hydra multirun of stage=train (`python -m pipeline -m optim.lr=1e-3,1e-2`) as one parent
run with the jobs as its children, compared when the sweep ends.

The parent is found by its tags (`sweep=<date>/<time>`, `stage=sweep`; tracking.parents), so
the jobs of any launcher (basic, joblib, submitit) link to the same one from their own
processes. `__main__`'s Hydra callback creates it before the jobs start and summarises it
after they end; each job also finds-or-creates it, so a sweep without the callback still
nests. A child is named and tagged (`variant`) by what it changes: its values of the swept
keys, e.g. `lite0-full-digits-s42/optim.lr=1e-3`; `seed` is tagged apart, so seeds repeating a
variant give mean ± std.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from pathlib import Path

from pipeline.commands import train as train_command  # run_train looked up per call
from pipeline.commands.parent_summary import child_rows, log_comparison, summarize_rows
from pipeline.commands.runtime import HydraRuntime
from pipeline.config import RunConfig, override_key
from pipeline.experiments.compare import VariantSummary, table_legend
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.parents import ParentRun, child_tracking, find_or_create_parent
from pipeline.tracking.runs import run_name_for, start_run, sweep_id

log = logging.getLogger(__name__)

PARENT_STAGE = "sweep"  # the parent's `stage` tag; its children are stage=train
NO_VARIANT = "default"  # a job that sets none of the swept keys (or only the seed)


def parent_tags(sweep: str) -> dict[str, str]:
    return {"sweep": sweep, "stage": PARENT_STAGE}


def parent_name(sweep: str, swept: Iterable[str]) -> str:
    """`sweep/optim.lr,sched 07-02-33`: the swept keys, and the sweep's time to tell two
    sweeps of the same keys apart."""
    keys = ",".join(sorted(swept)) or "jobs"
    return f"sweep/{keys} {sweep.rsplit('/', 1)[-1]}"


def variant_label(overrides: Iterable[str], swept: Iterable[str]) -> str:
    """The job's overrides of the swept keys, less the seed: `optim.lr=1e-3 sched=step`."""
    keys = set(swept) - {"seed"}
    return " ".join(o for o in overrides if override_key(o) in keys) or NO_VARIANT


def sweep_parent(tracking: TrackingConfig, sweep_dir: Path, swept: Iterable[str]) -> ParentRun:
    """The sweep's parent run, found by its tags, else created (race-safe across jobs)."""
    sweep, keys = sweep_id(sweep_dir), sorted(swept)
    params = {"sweep.keys": ",".join(keys), "sweep.dir": str(sweep_dir)}
    return find_or_create_parent(
        tracking, parent_tags(sweep), parent_name(sweep, keys), params, sweep=sweep
    )


def run_sweep_job(cfg: RunConfig, out_dir: Path, runtime: HydraRuntime):
    """One job of a multirun: train as a child of the sweep's parent run."""
    if runtime.sweep_dir is None or not cfg.tracking.enabled:
        return train_command.run_train(cfg, out_dir, runtime=runtime)
    parent = sweep_parent(cfg.tracking, runtime.sweep_dir, runtime.swept)
    label = variant_label(runtime.overrides, runtime.swept)
    name = cfg.tracking.run_name or run_name_for(cfg, "train")
    if label != NO_VARIANT:
        name = f"{name}/{label}"
    tags = {"sweep": sweep_id(runtime.sweep_dir), "variant": label, "seed": str(cfg.seed)}
    tracking = child_tracking(cfg.tracking, parent, name, tags)
    # The runtime gives the job its overrides tag and an exact resume command.
    return train_command.run_train(
        dataclasses.replace(cfg, tracking=tracking), out_dir, runtime=runtime
    )


def summarize_sweep(cfg: RunConfig, sweep_dir: Path) -> list[VariantSummary] | None:
    """At the sweep's end: compare its children, log the comparison to the parent (which
    ends FINISHED), print the table. None when tracking is off or no job reached MLflow."""
    if not cfg.tracking.enabled:
        return None
    from pipeline.tracking.parents import find_parent
    from pipeline.tracking.runs import client_and_experiment

    client, experiment_id = client_and_experiment(cfg.tracking)
    sweep = sweep_id(sweep_dir)
    parent_id = find_parent(client, experiment_id, parent_tags(sweep))
    if parent_id is None:
        return None
    parent = ParentRun(client, parent_id, None, experiment_id)
    tracking = dataclasses.replace(cfg.tracking, run_name=None, parent_run_id=None)
    with start_run(tracking, run_id=parent_id) as opened:
        summaries, table = compare_children(
            opened,
            parent.children(),
            sweep_dir,
            cfg.compare.metric,
            cfg.compare.baseline,
            f"sweep {sweep}",
        )
    print(f"\nsweep {sweep}: parent run {parent_id}\n{table}\n", flush=True)
    return summaries


def compare_children(
    run, children, out_dir: Path, metric: str, baseline: str, title: str, stem: str = "comparison"
):
    """Summaries and the Markdown table of `children`, logged to `run` as `<stem>.*`."""
    metric = metric or "test/acc"
    rows = child_rows(children, metric)
    summaries = summarize_rows(rows, metric, baseline or None)
    failed = sum(r.info.status in ("FAILED", "KILLED") for r in children)
    legend = (
        table_legend(summaries, metric, baseline)
        if baseline
        else (
            "± is the standard deviation over seeds (a variant repeated with seed=...); name a "
            "baseline (compare.baseline=<variant>) for Δ, CI and p, paired by seed."
        )
    )
    header = f"# {title}\n\n{len(rows)} finished runs, {failed} failed. {legend}\n"
    table = log_comparison(run, summaries, out_dir, stem, metric, title, header)
    run.set_tags({"failed_children": failed})
    return summaries, table
