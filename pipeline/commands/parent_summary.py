"""What a parent run (an ablation, a sweep) shows: its children compared, from MLflow alone.

Rows come from the children's tags (`variant`, `seed`) and test metrics; the statistics are
experiments/compare.py's. The parent gets the table (Markdown, CSV, and a `log_table` JSON
the MLflow UI shows as a table), the bar chart, and a few summary metrics: per-variant
numbers stay on the children, where MLflow's charts line them up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.experiments.compare import (
    METRICS,
    VariantSummary,
    best_variant,
    format_table,
    parent_metrics,
    plot_summary,
    summarize_variants,
    table_columns,
    write_csv,
)
from pipeline.tracking.runs import Run


def child_rows(children: list[Any], metric: str = "test/acc") -> list[dict]:
    """One row per (variant, seed): the latest FINISHED child's metrics. A child without a
    `variant` tag (a search trial) is its own variant, by run name."""
    latest: dict[tuple[str, int], dict] = {}
    for run in sorted(children, key=lambda r: (r.info.start_time or 0, r.info.run_id)):
        if run.info.status != "FINISHED":
            continue
        tags, metrics = run.data.tags, run.data.metrics
        variant = tags.get("variant") or run.info.run_name or run.info.run_id
        seed = int(tags.get("seed") or run.data.params.get("seed") or 0)
        latest[(variant, seed)] = {
            "variant": variant,
            "seed": seed,
            "run_id": run.info.run_id,
            **{k: metrics[k] for k in dict.fromkeys([*METRICS, metric]) if k in metrics},
        }
    return list(latest.values())


def variant_order(rows: list[dict], baseline: str | None) -> list[str]:
    """Variants in the order their first child started, the baseline first."""
    names = list(dict.fromkeys(row["variant"] for row in rows))
    if baseline in names:
        names.remove(baseline)
        names.insert(0, baseline)
    return names


def summarize_rows(
    rows: list[dict], metric: str, baseline: str | None, bootstrap: int = 10000
) -> list[VariantSummary]:
    return summarize_variants(
        rows, variant_order(rows, baseline), metric, baseline or "", bootstrap
    )


def log_comparison(
    run: Run,
    summaries: list[VariantSummary],
    out_dir: Path,
    stem: str,
    metric: str,
    title: str,
    header: str,
) -> str:
    """Write `<stem>.md/.csv/.png/_table.json` to out_dir, log them and the summary metrics
    to `run`; returns the Markdown table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = format_table(summaries, metric)
    (out_dir / f"{stem}.md").write_text(f"{header}\n{table}\n")
    write_csv(summaries, out_dir / f"{stem}.csv", metric)
    plot_summary(summaries, out_dir / f"{stem}.png", metric, title)
    for suffix in (".md", ".csv", ".png"):
        run.log_artifact(out_dir / f"{stem}{suffix}")
    _log_table(run, table_columns(summaries, metric), f"{stem}_table.json", out_dir)
    run.log_metrics(parent_metrics(summaries, metric))
    best = best_variant(summaries, metric)
    if best is not None:
        run.set_tags({"best_variant": best.variant})
    return table


def _log_table(run: Run, columns: dict[str, list], name: str, out_dir: Path) -> None:
    """MLflow's `log_table` (its artifact view shows a sortable table), which appends to a
    table already logged: a summary logged again (a resumed ablation, stage=compare)
    overwrites it instead, in the same JSON layout."""
    if not run.active:
        return
    logged = {a.path for a in run.client.list_artifacts(run.run_id)}
    if name not in logged:
        run.client.log_table(run.run_id, data=columns, artifact_file=name)
        return
    path = out_dir / name
    rows = [list(row) for row in zip(*columns.values(), strict=True)]
    path.write_text(json.dumps({"columns": list(columns), "data": rows}))  # log_table's layout
    run.log_artifact(path)
