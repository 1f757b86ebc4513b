"""stage=ablate: run every (variant, seed) of an ablation as nested MLflow runs, then compare.

One parent run per ablation name; each child is a full `run_train` whose run carries the
tags `ablation`, `variant`, `seed`, `overrides_sha` and an explicit `mlflow.parentRunId`, so
children started by other processes (a Hydra multirun narrowed with ablation.only_variant /
ablation.only_seed) land under the same parent. Rerunning the same ablation reuses the parent
and skips children that already FINISHED with the same overrides; failed or killed ones rerun.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from pipeline.commands.parent_summary import log_comparison
from pipeline.commands.runtime import NO_HYDRA, HydraRuntime
from pipeline.compose import compose
from pipeline.config import MODES, RunConfig
from pipeline.data.splits import run_splits
from pipeline.errors import PipelineError, TrainingError
from pipeline.experiments.ablation import (
    BASELINE,
    Child,
    build_variants,
    passthrough_overrides,
    plan_children,
)
from pipeline.experiments.compare import (
    METRICS,
    MIN_MEANINGFUL_PAIRS,
    format_table,
    summarize_variants,
    table_legend,
)
from pipeline.experiments.depth import depth_study, format_depth_report, plot_depth, study_depths
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.parents import ParentRun, child_tracking, find_or_create_parent
from pipeline.tracking.runs import Run, flatten, start_run
from pipeline.tracking.store import mlflow_client

log = logging.getLogger(__name__)

PARENT_TAG = "ablation"  # value: the ablation's name, on the parent and every child


# --- peak memory ----------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of the block in MiB: CUDA allocator peak on GPU, else the process's peak
    RSS (Linux lets us reset the high-water mark per child; elsewhere it is since start)."""

    def __init__(self, cuda: str | None):
        self.cuda = cuda  # the CUDA device the block trains on ("cuda", "cuda:1"), or None
        self.kind = "cuda_max_allocated" if cuda else "max_rss"
        self.mb = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.cuda)
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            self.kind = "max_rss_since_start"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            import torch

            self.mb = torch.cuda.max_memory_allocated(self.cuda) / 2**20
        elif self.kind == "max_rss":
            status = Path("/proc/self/status").read_text().splitlines()
            hwm = next(line for line in status if line.startswith("VmHWM:"))
            self.mb = int(hwm.split()[1]) / 1024
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024


# --- MLflow bookkeeping ---------------------------------------------------------------------


def latest_finished(runs: list[Any]) -> dict[tuple[str, int, str], Any]:
    """(variant, seed, overrides_sha) -> the most recent FINISHED child run."""
    done: dict[tuple[str, int, str], Any] = {}
    for run in sorted(runs, key=lambda r: r.info.end_time or 0):
        tags = run.data.tags
        if run.info.status == "FINISHED" and "variant" in tags and "seed" in tags:
            done[(tags["variant"], int(tags["seed"]), tags.get("overrides_sha", ""))] = run
    return done


# --- the stage ------------------------------------------------------------------------------


def _child_tags(child: Child, name: str) -> dict[str, str]:
    tags = {"variant": child.variant, "seed": str(child.seed), "overrides_sha": child.sha}
    return {PARENT_TAG: name, **tags}


def _child_config(composed: RunConfig, child: Child, cfg: RunConfig, parent: Run) -> RunConfig:
    """The child's composed config, tracked (as the ablation is) as a child of `parent`."""
    name = cfg.ablation.name or "ablation"
    run_name = f"{name}/{child.variant}/seed{child.seed}"
    tracking = child_tracking(cfg.tracking, parent, run_name, _child_tags(child, name))
    # The child logs which ablation it belongs to among its params, not empty defaults.
    return dataclasses.replace(composed, tracking=tracking, ablation=cfg.ablation)


def run_ablate(cfg: RunConfig, out_dir: Path, runtime: HydraRuntime = NO_HYDRA):
    """Run the ablation `cfg.ablation` (resuming its parent run), summarise, print the table.

    Every child gets the command line's overrides (`runtime.overrides`, minus
    stage/ablation/tracking ones), so `python -m pipeline stage=ablate ... train.threads=2`
    reaches every child."""
    ablation = cfg.ablation
    name = ablation.name or "ablation"
    passthrough = passthrough_overrides(list(runtime.overrides))
    variants = [v.name for v in build_variants(ablation)]
    children = plan_children(ablation, passthrough)
    tracking = cfg.tracking
    # Compose every child before any run starts: a typo in a component fails now, in one line.
    composed = {child: compose(list(child.overrides)) for child in children}
    params = {
        **flatten({"ablation": dataclasses.asdict(ablation)}),
        "ablation.passthrough": passthrough,
    }
    parent = find_or_create_parent(
        tracking, {PARENT_TAG: name, "stage": "ablate"}, f"ablation/{name}", params
    )
    parent_id = parent.run_id
    done = latest_finished(parent.children())

    todo = [c for c in children if (c.variant, c.seed, c.sha) not in done]
    configs = [_child_config(composed[c], c, cfg, parent) for c in todo]
    narrowed = f" (this job: {len(children)} of them)" if ablation.narrowed else ""
    print(
        f"ablation {name!r} ({ablation.mode}): {len(variants)} variants x "
        f"{len(ablation.seed_list)} seeds{narrowed}; {len(children) - len(todo)} of "
        f"{len(children)} runs already finished, {len(todo)} to run; "
        f"parent run {parent_id or '(tracking off)'}"
    )
    if len(ablation.seed_list) < MIN_MEANINGFUL_PAIRS:
        print(
            f"warning: ablation.seeds={ablation.seeds}: with fewer than {MIN_MEANINGFUL_PAIRS} "
            "seeds per variant neither the CI nor p of the comparison means much"
        )
    if ablation.dry_run:
        for child in todo:
            print(f"  would run {child.variant} seed {child.seed}: {' '.join(child.overrides)}")
        if done:  # the table so far, from what already finished (nothing is logged)
            rows = _finished_rows(parent, children)
            print("\n" + "\n".join(_summarize(ablation, name, variants, rows)[1:]))
        return None
    if ablation.narrowed or not tracking.enabled:
        # Parallel narrowed jobs share the parent: only the summarising run opens and ends it.
        parent_ctx: AbstractContextManager[Run] = nullcontext(Run())
    else:
        parent_ctx = start_run(tracking, run_id=parent_id)  # Ctrl-C marks the parent KILLED
    with parent_ctx as opened:
        rows, failures = _run_children(todo, configs, tracking, out_dir, runtime)
        if ablation.narrowed:
            print(
                "narrowed run done; rerun without ablation.only_variant/only_seed to summarise "
                "(finished children are skipped)"
            )
            _raise_if_failed(failures)
            return None
        if tracking.enabled:
            rows = _finished_rows(parent, children)
        summaries, header, table = _summarize(ablation, name, variants, rows)
        log_comparison(
            opened, summaries, out_dir, "ablation", ablation.metric, f"ablation {name}", header
        )
        opened.set_tags({"failed_children": len(failures)})
        print(f"\n{header}\n{table}\n", flush=True)
        _depth_report(cfg, composed[children[0]], summaries, rows, out_dir, opened)
        _raise_if_failed(failures)  # inside: the parent ends FAILED, with the table logged
    return summaries


def _depth_report(
    cfg: RunConfig, first: RunConfig, summaries, rows: list[dict], out_dir: Path, parent: Run
) -> None:
    """For a depth study (ablation=depth): depth.md and depth.png beside the ablation's."""
    ablation = cfg.ablation
    depths = study_depths(ablation.baseline, ablation.components, MODES[ablation.mode])
    if depths is None or not rows:
        return
    # The size the rule of thumb speaks of: the first child's training split, per class.
    per_class = run_splits(first.data, first.seed).train.class_counts()
    study = depth_study(depths, summaries, rows, per_class, ablation.metric)
    name = ablation.name or "ablation"
    report = format_depth_report(study, name)
    (out_dir / "depth.md").write_text(report)
    plot_depth(study, out_dir / "depth.png", f"depth study {name} ({first.backbone.name})")
    for artifact in ("depth.md", "depth.png"):
        parent.log_artifact(out_dir / artifact)
    parent.set_tags({"depth.best": study.best.label})
    print(report, flush=True)


def _finished_rows(parent: ParentRun, children: list[Child]):
    """Metrics of the latest FINISHED child per (variant, seed) that ran today's overrides."""
    current = {(c.variant, c.seed, c.sha) for c in children}
    finished = latest_finished(parent.children())
    return [_row(run) for key, run in finished.items() if key in current]


def _summarize(ablation, name: str, variants: list[str], rows: list[dict]):
    summaries = summarize_variants(rows, variants, ablation.metric, BASELINE, ablation.bootstrap)
    header = (
        f"# Ablation `{name}` ({ablation.mode})\n\n"
        f"Seeds {ablation.seed_list}. {table_legend(summaries, ablation.metric, BASELINE)}\n"
    )
    return summaries, header, format_table(summaries, ablation.metric)


def _run_children(
    todo: list[Child],
    configs: list[RunConfig],
    tracking: TrackingConfig,
    out_dir: Path,
    runtime: HydraRuntime = NO_HYDRA,
) -> tuple[list[dict], list[str]]:
    """Train each child in this process; a failure is recorded and the rest still run.

    Each child runs as if typed on its own: its overrides (plus the command line's tracking
    ones, which pick the store) are its `overrides` tag and its printed resume command."""
    import torch  # here, not at the top: a dry run or a bad component fails without torch

    from pipeline.commands import train as train_command  # run_train looked up per call

    store = tuple(o for o in runtime.overrides if o.lstrip("+~").startswith("tracking."))
    rows, failures = [], []
    for i, (child, child_cfg) in enumerate(zip(todo, configs, strict=True), 1):
        print(f"[{i}/{len(todo)}] {child.variant} seed {child.seed}", flush=True)
        child_dir = out_dir / child.variant / f"seed{child.seed}"
        child_runtime = HydraRuntime(overrides=(*child.overrides, *store), output_dir=child_dir)
        try:
            with PeakMemory(cuda=_cuda_device(child_cfg, torch)) as peak:
                result = train_command.run_train(child_cfg, child_dir, runtime=child_runtime)
        except (PipelineError, RuntimeError, ValueError) as exc:
            # Its run is already marked FAILED; rerunning the ablation retries just this one.
            failures.append(f"{child.variant} seed {child.seed}: {exc}")
            log.error("child %s seed %d failed: %s", child.variant, child.seed, exc)
            continue
        child_run = Run(_client(tracking), result.run_id) if result.run_id else Run()
        child_run.log_metrics({"peak_memory_mb": peak.mb})
        child_run.set_tags({"peak_memory_kind": peak.kind})
        rows.append(
            {
                "variant": child.variant,
                "seed": child.seed,
                **result.test_metrics,
                "best_epoch": result.fit.best_epoch + 1,
                "train_seconds": result.fit.train_seconds,
                "peak_memory_mb": peak.mb,
            }
        )
    return rows, failures


def _client(tracking: TrackingConfig) -> Any:
    return mlflow_client(tracking.uri)


def _cuda_device(cfg: RunConfig, torch: Any) -> str | None:
    device = cfg.train.device
    if device.startswith("cuda"):
        return device
    return "cuda" if device == "auto" and torch.cuda.is_available() else None


def _row(run: Any) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    return {
        "variant": tags["variant"],
        "seed": int(tags["seed"]),
        "sha": tags.get("overrides_sha", ""),
        "run_id": run.info.run_id,
        **{k: metrics[k] for k in METRICS if k in metrics},
        "trainable_params": float(run.data.params.get("params.trainable", "nan")),
    }


def _raise_if_failed(failures: list[str]) -> None:
    if failures:
        raise TrainingError(
            f"{len(failures)} ablation run(s) failed (first: {failures[0]}); rerun the same "
            "command to retry only those"
        )
