"""stage=evaluate: score a trained run again on its test (or val) split, in full detail.

Logs to a new MLflow run nested under the training run (see `inference.linked_run`): every
metric under `<split>/`, the classification report, confusion matrices (counts and
normalised), the most confident mistakes, a reliability diagram and `report.md`. A run
trained with eval.calibrate=temperature is scored at its saved temperature.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.commands.trained_run import applied_temperature, linked_run, load_trained
from pipeline.config import RunConfig
from pipeline.data.loader import ImageDataset, build_loader
from pipeline.data.sources import ImageSet
from pipeline.errors import DataError
from pipeline.evaluation.evaluate import check_tta, misclassified, predict_probs, score
from pipeline.evaluation.metrics import calibration_bins, format_report
from pipeline.evaluation.report import report_files, write_all
from pipeline.evaluation.visualize import (
    plot_confusion_normalized,
    plot_image_grid,
    plot_reliability,
)
from pipeline.tracking.runs import fetch_history
from pipeline.tracking.store import check_store
from pipeline.training.precision import resolve_amp

log = logging.getLogger(__name__)

MAX_MISTAKES_SHOWN = 24


@dataclass
class EvalResult:
    run_id: str | None  # the evaluation's own run
    source_run_id: str | None
    metrics: dict[str, float]  # `<split>/<name>`
    out_dir: Path


def metric_name(name: str) -> str:
    """MLflow accepts letters, digits and `_-. :/` in metric names; class names may not."""
    return re.sub(r"[^\w\-. :/]", "_", name)


def _write_predictions(path: Path, images: ImageSet, probs, targets, class_names) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "true", "predicted", "confidence", "correct"])
        for image_id, p, t in zip(images.ids, probs, targets, strict=True):
            pred = int(p.argmax())
            writer.writerow(
                [image_id, class_names[t], class_names[pred], f"{p[pred]:.6f}", int(pred == t)]
            )
    return path


def run_evaluate(cfg: RunConfig, out_dir: Path) -> EvalResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_store(cfg.tracking)  # a bad tracking.uri fails before the model loads
    trained = load_trained(cfg, out_dir)
    run_cfg, split = trained.cfg, cfg.eval.split
    check_tta(cfg.eval.tta, run_cfg.augment.hflip)
    temperature = applied_temperature(cfg.eval.calibrate, trained)
    splits = trained.splits()  # seeded: the same split (or fold) as training
    if splits.class_names != trained.class_names:
        raise DataError(
            f"the data's classes {splits.class_names} differ from the model's {trained.class_names}"
        )
    images: ImageSet = getattr(splits, split)
    loader = build_loader(
        ImageDataset(images, trained.eval_transform, trained.decode_size),
        run_cfg.data.eval_batch_size or 2 * run_cfg.data.batch_size,
        train=False,
        num_workers=run_cfg.data.num_workers,
        seed=run_cfg.seed,
    )
    amp_dtype = resolve_amp(run_cfg.train.amp, trained.device)
    loss, probs, targets = predict_probs(
        trained.model, loader, trained.batches(), amp_dtype, cfg.eval.tta, temperature
    )
    scores, report, cm = score(targets, probs, loss, trained.class_names, cfg.eval.topk)
    metrics = {metric_name(f"{split}/{name}"): value for name, value in scores.items()}
    if trained.temperature is not None:
        metrics["calibration/temperature"] = temperature

    names = trained.class_names
    artifacts = [
        _write_predictions(out_dir / f"{split}_predictions.csv", images, probs, targets, names),
        plot_confusion_normalized(cm, names, out_dir / "confusion_matrix_normalized.png"),
        plot_reliability(
            calibration_bins(targets, probs), scores["ece"], out_dir / "reliability.png"
        ),
    ]
    wrong = misclassified(targets, probs, MAX_MISTAKES_SHOWN)
    artifacts.append(
        plot_image_grid(
            [trained.load_image(images.items[i]) for i in wrong],
            [
                f"true {names[targets[i]]}\npred {names[probs[i].argmax()]} ({probs[i].max():.2f})"
                for i in wrong
            ],
            out_dir / "misclassified.png",
            f"most confident mistakes on {split} ({int((probs.argmax(1) != targets).sum())} "
            f"of {len(targets)} wrong)",
        )
    )
    history = fetch_history(cfg.tracking.uri, trained.run_id) if trained.run_id else []
    how = f"tta {cfg.eval.tta}" + (f", temperature {temperature:.3f}" if temperature != 1 else "")
    title = f"Evaluation of {trained.source} on the {split} split ({how})"
    # The same classification report, confusion matrix and report.md as stage=train writes.
    artifacts += write_all(report_files(out_dir, names, cm, report, title, history, metrics))

    with linked_run(cfg, trained, "evaluate") as run:
        run.log_params(
            {
                "eval.split": split,
                "eval.tta": cfg.eval.tta,
                "calibration.temperature": temperature,
                "eval.topk": cfg.eval.topk,
                "source": trained.source,
                "backbone.name": run_cfg.backbone.name,
                f"data.n_{split}": len(images),
            }
        )
        run.log_metrics(metrics)
        for path in artifacts:
            run.log_artifact(path)

    k = min(cfg.eval.topk, len(names))
    headline = ("loss", "acc", f"top{k}_acc", "f1_macro", "ece")
    summary = "  ".join(f"{split}/{name} {scores[name]:.4f}" for name in headline)
    print(f"evaluated {trained.source} on {split} ({how}): {summary}")
    print(format_report(report), end="")
    if run.run_id:
        print(f"logged to run {run.run_id}")
    return EvalResult(run.run_id, trained.run_id, metrics, out_dir)
