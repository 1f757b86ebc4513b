"""stage=inspect: the data's health on the split a training run would use.

Exact duplicates (leakage across splits), near-duplicates and label-issue candidates from the
frozen backbone's features, class balance and odd images; logged to its own MLflow run
(tag stage=inspect; under another run with tracking.parent_run_id=<id>) with data_health.md
as the run's description, CSVs of every finding and PNG grids of the top suspects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.commands.frozen_features import frozen_features
from pipeline.config import RunConfig
from pipeline.data.config import SPLITS
from pipeline.data.health.duplicates import (
    DuplicatePair,
    duplicate_counts,
    exact_duplicates,
    split_refs,
)
from pipeline.data.health.hashing import content_hashes
from pipeline.data.health.image_stats import flags_of, most_common, stats_of
from pipeline.data.report import class_counts
from pipeline.data.splits import Splits, run_splits
from pipeline.errors import ConfigError
from pipeline.evaluation.health.findings import Findings
from pipeline.evaluation.health.grids import duplicate_grid, label_issue_grid
from pipeline.evaluation.health.label_issues import LabelIssues, find_label_issues
from pipeline.evaluation.health.near_duplicates import near_duplicate_pairs
from pipeline.evaluation.health.report import markdown, write_csvs
from pipeline.models.backbone import check_model_name, create_backbone
from pipeline.repro import seed_everything
from pipeline.tracking.runs import flatten, run_name_for, start_run
from pipeline.tracking.store import check_store
from pipeline.training.feature_cache import CachedFeatures
from pipeline.training.precision import resolve_device

log = logging.getLogger(__name__)


def _timed(seconds: dict[str, float], part: str, work: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = work()
    seconds[part] = time.perf_counter() - start
    return result


def _backbone_features(cfg: RunConfig, splits: Splits) -> CachedFeatures:
    """The frozen backbone's pooled features of every image, train then val then test
    (those in data.feature_cache read from it)."""
    device = resolve_device(cfg.train.device)
    backbone, spec, _ = create_backbone(cfg.backbone, global_pool=cfg.head.pool)
    everything = splits.train.concat(splits.val).concat(splits.test)
    return frozen_features(cfg, backbone, spec, everything, device)


def _label_check(
    cfg: RunConfig, features: torch.Tensor, labels: np.ndarray, num_classes: int
) -> tuple[LabelIssues | None, str]:
    try:
        issues = find_label_issues(
            features.numpy(), labels, num_classes, cfg.inspect.label_folds, cfg.seed
        )
    except ConfigError as exc:  # too few images of a class: the rest of the report stands
        return None, f"not checked: {exc}"
    note = (
        f"cleanlab's find_label_issues on out-of-fold probabilities of a {issues.folds}-fold "
        f"logistic-regression probe on {cfg.backbone.name} features, least likely given "
        "label first"
    )
    return issues, note


def inspect_splits(cfg: RunConfig, splits: Splits) -> Findings:
    """Every check of stage=inspect on `splits`, timed per part."""
    seconds: dict[str, float] = {}
    refs, items = split_refs(splits)
    hashes = _timed(seconds, "hashing", lambda: content_hashes(items))
    exact = exact_duplicates(refs, hashes)
    stats = _timed(seconds, "image_stats", lambda: stats_of(items))
    common = most_common(stats)
    c = cfg.inspect
    flags = [flags_of(s, common, c.min_side, c.dark_brightness, c.blur_threshold) for s in stats]
    embedded = _timed(seconds, "embedding", lambda: _backbone_features(cfg, splits))
    features = embedded.features
    pairs, closest = _timed(
        seconds,
        "near_dup_search",
        lambda: near_duplicate_pairs(features, c.near_dup_threshold, c.block_size),
    )
    near = [DuplicatePair(refs[i], refs[j], sim) for i, j, sim in pairs if hashes[i] != hashes[j]]
    near.sort(key=lambda p: (not p.cross_split, -p.similarity))  # leakage first
    labels = np.concatenate([getattr(splits, name).labels for name in SPLITS])
    issues, note = _timed(
        seconds,
        "label_probe",
        lambda: _label_check(cfg, features, labels, len(splits.class_names)),
    )
    where = f" ({Path(cfg.data.root).name})" if cfg.data.root else ""
    return Findings(
        title=f"{cfg.data.name}{where}, seed {cfg.seed}",
        class_names=splits.class_names,
        class_counts=class_counts(splits),
        refs=refs,
        items=items,
        exact=exact,
        exact_counts=duplicate_counts(refs, hashes),
        near=near,
        threshold=c.near_dup_threshold,
        closest=closest,
        labels=issues,
        label_note=note,
        stats=stats,
        flags=flags,
        seconds=seconds,
        features_cached=embedded.from_cache,
    )


def write_files(findings: Findings, out_dir: Path, max_items: int) -> tuple[str, list[Path]]:
    """data_health.md (returned as text too), the CSVs and the PNG grids."""
    report = markdown(findings)
    md = out_dir / "data_health.md"
    md.write_text(report, encoding="utf-8")
    files = [md, *write_csvs(findings, out_dir)]
    exact = duplicate_grid(
        findings, findings.exact[:max_items], out_dir / "exact_duplicates.png", "Exact duplicates"
    )
    near = duplicate_grid(
        findings,
        findings.near[:max_items],
        out_dir / "near_duplicates.png",
        f"Near-duplicates (cosine >= {findings.threshold})",
    )
    labels = label_issue_grid(findings, max_items, out_dir / "label_issues.png")
    files += [p for p in (exact, near, labels) if p is not None]
    return report, files


def summary_lines(f: Findings) -> list[str]:
    m = f.metrics()
    labels = (
        f"{len(f.labels.issues)} label-issue candidate(s)" if f.labels else "labels not checked"
    )
    flags = ", ".join(f"{k} {v}" for k, v in sorted(f.flag_counts().items())) or "none"
    cached = {"embedding": f" ({f.features_cached} of {len(f.refs)} from the cache)"}
    if not f.features_cached:
        cached = {}
    return [
        f"data health: {len(f.refs)} images, {len(f.class_names)} classes",
        f"  exact duplicates: {m['inspect/exact_cross_split']} val/test image(s) duplicate "
        f"another split, {m['inspect/exact_within_split']} within a split",
        f"  near-duplicates (cosine >= {f.threshold}): {len(f.near)} pair(s), "
        f"{m['inspect/near_cross_split_pairs']} across splits (closest pair {f.closest:.3f})",
        f"  {labels}; odd images: {flags}",
        "  " + ", ".join(f"{k} {v:.1f}s" + cached.get(k, "") for k, v in f.seconds.items()),
    ]


def run_inspect(cfg: RunConfig, out_dir: Path) -> Findings:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_model_name(cfg.backbone.name)
    check_store(cfg.tracking)  # a bad tracking.uri fails now, not after the backbone pass
    seed_everything(cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    splits = run_splits(cfg.data, cfg.seed)  # the very split a training run would use
    log.info("data %s: %s, %d classes", cfg.data.name, splits.sizes(), len(splits.class_names))
    findings = inspect_splits(cfg, splits)
    report, files = write_files(findings, out_dir, cfg.inspect.max_grid_items)

    tags = {"stage": "inspect", "backbone": cfg.backbone.name}
    with start_run(cfg.tracking, tags=tags, name=run_name_for(cfg, "inspect")) as run:
        settings = {"data": cfg.to_dict()["data"], "inspect": cfg.to_dict()["inspect"]}
        run.log_params(
            {
                **flatten(settings),
                "seed": cfg.seed,
                "backbone.name": cfg.backbone.name,
                "features.cached": findings.features_cached,  # of len(refs), from the cache
            }
        )
        run.log_metrics(findings.metrics())
        run.set_tags({"mlflow.note.content": report})  # the run's description in the UI
        for path in files:
            run.log_artifact(path)

    for line in summary_lines(findings):
        print(line)
    where = f"run {run.run_id}, " if run.run_id else ""
    print(f"report: {out_dir / 'data_health.md'} ({where}CSVs and PNG grids beside it)")
    return findings
