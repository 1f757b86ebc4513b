"""stage=screen: rank backbones by a cross-validated linear probe on their frozen features.

For each backbone: build it with its pretrained weights (a backbone without weights here
is listed as skipped, with the reason, and the screen goes on), run it once over train+val
(`training.features.image_features`, as stage=inspect), and cross-validate
a logistic-regression probe over stratified folds (`experiments.screen`). One parent MLflow
run (tag stage=screen) with one child per backbone (`screen/<backbone>`); the table (CSV,
Markdown, printed), a plot and the recommendation in words go to the parent.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import torch
import yaml

from pipeline.config import CONF_DIR, RunConfig
from pipeline.data.splits import run_splits
from pipeline.errors import ConfigError, WeightsUnavailableError, first_line
from pipeline.experiments.screen import (
    Candidate,
    ScreenRow,
    check_fold_sizes,
    default_candidates,
    format_table,
    parse_candidate,
    plot_screen,
    probe_fold_accuracies,
    ranked,
    recommendation,
    short_reason,
    write_csv,
)
from pipeline.models.backbone import BackboneConfig, check_model_name, create_backbone, feature_dim
from pipeline.models.weights import local_weights_source
from pipeline.repro import seed_everything
from pipeline.tracking.parents import child_tracking
from pipeline.tracking.runs import Run, flatten, start_run
from pipeline.tracking.store import check_store
from pipeline.training.feature_cache import cached_image_features
from pipeline.training.precision import resolve_amp, resolve_device

log = logging.getLogger(__name__)


def backbone_options() -> dict[str, str]:
    """conf/backbone option -> the timm model it names."""
    options = {}
    for path in sorted((CONF_DIR / "backbone").glob("*.yaml")):
        name = (yaml.safe_load(path.read_text()) or {}).get("name")
        if name:
            options[path.stem] = name
    return options


def screen_candidates(cfg: RunConfig) -> tuple[list[Candidate], bool]:
    """The backbones to screen, and whether the list is the default one (which only uses
    weights already here: never the network)."""
    options = backbone_options()
    if cfg.screen.backbones:
        return [parse_candidate(entry, options) for entry in cfg.screen.backbones], False
    return default_candidates(options, cfg.backbone.name, cfg.backbone.weights), True


def _backbone_config(cfg: RunConfig, candidate: Candidate, default_list: bool) -> BackboneConfig:
    weights = candidate.weights
    if weights is None and candidate.name == cfg.backbone.name and candidate.pretrained:
        weights = cfg.backbone.weights  # backbone.weights on the command line is this one's
    return dataclasses.replace(
        cfg.backbone,
        name=candidate.name,
        pretrained=candidate.pretrained,
        weights=weights,
        img_size=cfg.screen.img_size or cfg.backbone.img_size,
        allow_hub=cfg.backbone.allow_hub and not default_list,
    )


def _build(backbone_cfg: BackboneConfig, pool: str, default_list: bool):
    """The backbone, its input spec, weights info and feature width; or a one-line reason
    it cannot be screened here (no weights offline, an input size it refuses)."""
    try:
        check_model_name(backbone_cfg.name)
        if default_list and backbone_cfg.pretrained:  # skip before building a 138M-param net
            local_weights_source(backbone_cfg.name, backbone_cfg.weights)
        backbone, spec, weights = create_backbone(backbone_cfg, global_pool=pool)
        return (backbone, spec, weights, feature_dim(backbone, spec.img_size)), ""
    except (WeightsUnavailableError, ConfigError) as exc:
        return None, first_line(exc)


def run_screen(cfg: RunConfig, out_dir: Path) -> list[ScreenRow]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_store(cfg.tracking)  # a bad tracking.uri fails now, before any backbone runs
    seed_everything(cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    amp = resolve_amp(cfg.train.amp, device)
    candidates, default_list = screen_candidates(cfg)
    splits = run_splits(cfg.data, cfg.seed)
    pool = splits.train.concat(splits.val)  # never the test split
    check_fold_sizes(pool.labels, cfg.screen.folds)
    batch_size = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    print(
        f"screening {len(candidates)} backbone(s) on {cfg.data.name}: linear probe, "
        f"{cfg.screen.folds}-fold stratified CV over {len(pool)} train+val images"
    )

    rows = []
    params = {
        **flatten({"screen": dataclasses.asdict(cfg.screen), "data": dataclasses.asdict(cfg.data)}),
        "seed": cfg.seed,
        "data.n_train_val": len(pool),
        "candidates": [c.label for c in candidates],
    }
    name = cfg.tracking.run_name or f"screen-{cfg.data.name}"
    with start_run(
        dataclasses.replace(cfg.tracking, run_name=None), {"stage": "screen"}, name=name
    ) as parent:
        parent.log_params(params)
        for candidate in candidates:
            backbone_cfg = _backbone_config(cfg, candidate, default_list)
            built, reason = _build(backbone_cfg, cfg.head.pool, default_list)
            if built is None:
                print(f"  {candidate.label}: skipped: {short_reason(reason)}")
                rows.append(ScreenRow(candidate, skipped=reason))
                continue
            row = _screen_one(cfg, candidate, built, pool, device, amp, batch_size, parent)
            print(
                f"  {candidate.label}: probe {row.acc_mean:.4f} ± {row.acc_std:.4f}, "
                f"{row.img_per_s:.0f} img/s ({row.weights_source} weights, {row.img_size} px)"
            )
            rows.append(row)
        _report(cfg, rows, out_dir, parent)
    return ranked(rows)


def _screen_one(cfg, candidate, built, pool, device, amp, batch_size, parent: Run) -> ScreenRow:
    """Features once, then the probe on every fold; logged as the child `screen/<label>`."""
    backbone, spec, weights, dim = built
    crop_pct = cfg.augment.crop_pct or spec.crop_pct
    tags = {"stage": "screen", "backbone": candidate.name, "screen": candidate.label}
    tracking = child_tracking(cfg.tracking, parent, f"screen/{candidate.label}", tags)
    with start_run(tracking) as child:
        embedded = cached_image_features(
            cfg.data.feature_cache,
            *(backbone, spec, pool, batch_size, cfg.data.num_workers, device, amp, crop_pct),
        )
        features, labels = embedded.features, pool.labels  # the images' order is kept
        # The backbone's own time per image, measured when these features were computed
        # (now, or the run that cached them): reading the cache is no measure of its speed.
        seconds = embedded.seconds_per_image * len(pool)
        accuracies = probe_fold_accuracies(features.numpy(), labels, cfg.screen.folds, cfg.seed)
        row = ScreenRow(
            candidate,
            weights_source=weights.source,
            img_size=spec.img_size,
            params=sum(p.numel() for p in backbone.parameters()),
            feature_dim=dim,
            fold_accuracies=accuracies,
            extract_seconds=seconds,
            images=len(pool),
        )
        child.log_params(
            {
                "backbone.name": candidate.name,
                "backbone.pretrained": candidate.pretrained,
                "weights_source": weights.source,
                "weights_sha256": weights.sha256 or "",
                "input.img_size": spec.img_size,
                "input.crop_pct": crop_pct,
                "params.total": row.params,
                "feature_dim": dim,
                "screen.folds": cfg.screen.folds,
                "device": str(device),
                "features.cached": embedded.from_cache,
            }
        )
        child.log_metrics(_row_metrics(row))
        for fold, accuracy in enumerate(accuracies):
            child.log_metrics({"probe/fold_acc": accuracy}, step=fold)
    return row


def _row_metrics(row: ScreenRow) -> dict[str, float]:
    metrics = {
        "probe/acc_mean": row.acc_mean,
        "probe/acc_std": row.acc_std,
        "features/seconds": row.extract_seconds,
        "features/img_per_s": row.img_per_s,
        "params": float(row.params),
    }
    return {k: v for k, v in metrics.items() if v == v}  # no NaN std from a single fold


def metric_name(label: str) -> str:
    """MLflow metric names take letters, digits, _ - . / and spaces: no '@'."""
    return re.sub(r"[^\w./ -]", "-", label)


def _report(cfg: RunConfig, rows: list[ScreenRow], out_dir: Path, parent: Run) -> None:
    table, words = format_table(rows), recommendation(rows)
    data = Path(cfg.data.root).name if cfg.data.root else cfg.data.name
    title = f"screen on {data}: {cfg.screen.folds}-fold linear probe"
    (out_dir / "screen.md").write_text(f"# {title}\n\n{table}\n\n{words}\n")
    write_csv(rows, out_dir / "screen.csv")
    plot_screen(rows, out_dir / "screen.png", title)
    for artifact in ("screen.md", "screen.csv", "screen.png"):
        parent.log_artifact(out_dir / artifact)
    parent.log_metrics(
        {
            f"{metric_name(r.candidate.label)}/probe_acc_mean": r.acc_mean
            for r in rows
            if not r.skipped
        }
    )
    best = next((r for r in ranked(rows) if not r.skipped), None)
    parent.set_tags(
        {
            "screen.best": best.candidate.label if best else "",
            "screen.skipped": "; ".join(
                f"{r.candidate.label}: {r.skipped}" for r in rows if r.skipped
            ),
            "screen.recommendation": words,
        }
    )
    print(
        f"\n{table}\n\n{words}\nfiles: {out_dir}"
        + (f"  (run {parent.run_id})" if parent.run_id else "")
    )
