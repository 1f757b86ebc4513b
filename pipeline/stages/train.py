"""stage=train: split, build, fine-tune, test once, and log everything to MLflow."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from pipeline.augment import build_eval_transform, build_train_transform
from pipeline.config import RunConfig
from pipeline.data import DeviceNormalize, ImageDataset, Splits, build_loader, build_splits
from pipeline.features import cached_feature_loaders
from pipeline.finetune import apply_finetune
from pipeline.metrics import classification_report, confusion_matrix, format_report, summarize
from pipeline.model import build_model
from pipeline.optim import build_optimizer
from pipeline.plots import plot_confusion_matrix, plot_learning_curves
from pipeline.repro import seed_everything
from pipeline.sched import build_schedule
from pipeline.tracking import Run, flatten, start_run
from pipeline.train import (
    Batches,
    FitResult,
    fit,
    optimizer_steps_per_epoch,
    predict,
    resolve_amp,
    resolve_device,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str | None
    test_metrics: dict[str, float]
    fit: FitResult
    out_dir: Path


def _write_split_manifest(splits: Splits, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "image", "label"])
        writer.writerows(splits.manifest_rows())
    return path


def _log_test_report(
    run: Run, out_dir: Path, class_names: list[str], targets, probs, history, best_epoch
) -> dict[str, float]:
    cm = confusion_matrix(targets, probs.argmax(1), len(class_names))
    report = classification_report(cm, class_names)
    (out_dir / "classification_report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "classification_report.txt").write_text(format_report(report))
    (out_dir / "confusion_matrix.json").write_text(
        json.dumps({"labels": class_names, "counts": cm.tolist()})
    )
    plot_confusion_matrix(cm, class_names, out_dir / "confusion_matrix.png")
    plot_learning_curves(history, out_dir / "learning_curves.png", best_epoch)
    for name in (
        "classification_report.json",
        "classification_report.txt",
        "confusion_matrix.json",
        "confusion_matrix.png",
        "learning_curves.png",
    ):
        run.log_artifact(out_dir / name)
    return {
        f"test/{k}": v for k, v in summarize(targets, probs.argmax(1), len(class_names)).items()
    }


def run_train(cfg: RunConfig, out_dir: Path) -> TrainResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)

    # Everything that can fail on bad input happens before the MLflow run starts.
    splits = build_splits(cfg.data, cfg.seed)
    log.info("data %s: %s, %d classes", cfg.data.name, splits.sizes(), len(splits.class_names))
    model, spec, weights = build_model(cfg.backbone, cfg.head, len(splits.class_names))
    apply_finetune(model, cfg.finetune)

    crop_pct = cfg.augment.crop_pct or spec.crop_pct
    train_tf = build_train_transform(cfg.augment, spec.img_size, crop_pct, spec.interpolation)
    eval_tf = build_eval_transform(spec.img_size, crop_pct, spec.interpolation)
    decode = round(spec.img_size / crop_pct)
    pin = device.type == "cuda"
    eval_bs = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    loaders = {
        "train": build_loader(
            ImageDataset(splits.train, train_tf, decode),
            cfg.data.batch_size,
            train=True,
            num_workers=cfg.data.num_workers,
            seed=cfg.seed,
            pin_memory=pin,
        ),
        "val": build_loader(
            ImageDataset(splits.val, eval_tf, decode),
            eval_bs,
            train=False,
            num_workers=cfg.data.num_workers,
            seed=cfg.seed,
            pin_memory=pin,
        ),
        "test": build_loader(
            ImageDataset(splits.test, eval_tf, decode),
            eval_bs,
            train=False,
            num_workers=cfg.data.num_workers,
            seed=cfg.seed,
            pin_memory=pin,
        ),
    }

    channels_last = (
        device.type == "cuda" if cfg.train.channels_last is None else cfg.train.channels_last
    )
    model = model.to(
        device, memory_format=torch.channels_last if channels_last else torch.preserve_format
    )
    batches = Batches(DeviceNormalize(spec.mean, spec.std).to(device), device, channels_last)
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch = optimizer_steps_per_epoch(len(loaders["train"]), cfg.train.accumulate_steps)
    schedule = build_schedule(optimizer, cfg.sched, cfg.train.epochs, steps_per_epoch)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    derived = {
        "weights_source": weights.source,
        "weights_sha256": weights.sha256 or "",
        "weights_path": weights.path or "",
        "input.img_size": spec.img_size,
        "input.mean": list(spec.mean),
        "input.std": list(spec.std),
        "input.interpolation": spec.interpolation,
        "input.crop_pct": crop_pct,
        "params.total": sum(p.numel() for p in model.parameters()),
        "params.trainable": trainable,
        "device": str(device),
        "amp": str(resolve_amp(cfg.train.amp, device)).removeprefix("torch."),
        **{f"data.n_{name}": n for name, n in splits.sizes().items()},
        "data.n_skipped": len(splits.skipped),
    }
    config_path = out_dir / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(json.loads(json.dumps(cfg.to_dict(), default=list)), sort_keys=False)
    )

    with start_run(cfg.tracking, tags={"stage": "train", "backbone": cfg.backbone.name}) as run:
        run.log_params({**flatten(cfg.to_dict()), **derived})
        run.log_artifact(config_path)
        run.log_artifact(_write_split_manifest(splits, out_dir / "splits.csv"))
        fit_model, fit_batches, train_loader, val_loader = (
            model,
            batches,
            loaders["train"],
            loaders["val"],
        )
        if cfg.train.cache_features:  # frozen backbone, no augmentation: run it once per split
            fit_model, train_loader, val_loader, fit_batches = cached_feature_loaders(
                model,
                train_loader,
                val_loader,
                batches,
                resolve_amp(cfg.train.amp, device),
                cfg.seed,
            )
        result = fit(
            fit_model,
            train_loader,
            val_loader,
            optimizer,
            schedule,
            cfg.train,
            fit_batches,
            checkpoint_dir=out_dir / "checkpoints",
            on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
        )
        # The test split is touched exactly once, after model selection is over.
        test_loss, probs, targets = predict(
            model, loaders["test"], batches, resolve_amp(cfg.train.amp, device)
        )
        test_metrics = {"test/loss": test_loss}
        test_metrics |= _log_test_report(
            run, out_dir, splits.class_names, targets, probs, result.history, result.best_epoch
        )
        run.log_metrics(
            {
                **test_metrics,
                "best_epoch": result.best_epoch + 1,
                "train_seconds": result.train_seconds,
                "epochs_run": len(result.history),
            }
        )
        if result.best_checkpoint:
            run.log_artifact(result.best_checkpoint, "checkpoints")

    summary = "  ".join(f"{k} {v:.4f}" for k, v in test_metrics.items())
    print(
        f"run {run.run_id or '(tracking off)'}: {summary}  (best epoch {result.best_epoch + 1}, "
        f"{result.train_seconds:.0f}s)"
    )
    return TrainResult(run.run_id, test_metrics, result, out_dir)
