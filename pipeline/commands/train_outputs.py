"""What a training run records besides fitting: its params, reports, output files and
uploads, and the lines that tell how to resume it."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import yaml

from pipeline.commands.training_setup import TrainingSetup
from pipeline.config import RunConfig
from pipeline.data.report import log_data_report
from pipeline.data.splits import Splits
from pipeline.errors import first_line
from pipeline.evaluation.metrics import classification_report, confusion_matrix, summarize
from pipeline.evaluation.plots import plot_learning_curves
from pipeline.evaluation.report import report_files
from pipeline.repro import environment_tags
from pipeline.tracking.runs import Run, flatten
from pipeline.training import distributed
from pipeline.training.loop import FitResult
from pipeline.training.resume import CHECKPOINT_DIR_TAG, ResumePoint

log = logging.getLogger(__name__)


def write_split_manifest(splits: Splits, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "image", "label"])
        writer.writerows(splits.manifest_rows())
    return path


def test_metrics_of(class_names: list[str], targets, probs) -> dict[str, float]:
    return {
        f"test/{k}": v for k, v in summarize(targets, probs.argmax(1), len(class_names)).items()
    }


def test_report_files(
    out_dir: Path, title: str, class_names: list[str], targets, probs, test_metrics, result
) -> dict[Path, Callable[[Path], object]]:
    """Each file of the test report (the one stage=evaluate writes, plus the learning
    curves), with the function that writes it."""
    cm = confusion_matrix(targets, probs.argmax(1), len(class_names))
    report = classification_report(cm, class_names)
    history, best_epoch = result.history, result.best_epoch
    files = report_files(out_dir, class_names, cm, report, title, history, test_metrics, best_epoch)
    files[out_dir / "learning_curves.png"] = lambda p: plot_learning_curves(
        history, p, best_epoch, title
    )
    return files


def save_outputs(
    run: Run, files: Mapping[Path, Callable[[Path], object] | None], subdir: str | None = None
) -> list[str]:
    """Write (where a writer is given) and upload each file, after the run's metrics are
    logged: a full disk or a refused upload then costs that file, not the finished run.
    Returns 'name (why)' for each file that was not saved."""
    failed = []
    for path, write in files.items():
        name = f"{subdir}/{path.name}" if subdir else path.name
        try:
            if write is not None:
                write(path)
        except OSError as exc:  # a full or read-only disk
            failed.append(f"{name} (not written: {first_line(exc)})")
            continue
        try:
            run.log_artifact(path, subdir)
        except Exception as exc:  # a full artifact store, a refused or failed upload
            failed.append(f"{name} (not uploaded: {first_line(exc)})")
    return failed


def keep_checkpoints(run: Run, checkpoint_dir: Path) -> None:
    """Upload last.pt/best.pt with an interrupted or failed run, so it can be resumed anywhere."""
    for name in ("last.pt", "best.pt"):
        if (checkpoint_dir / name).is_file():
            try:
                run.log_artifact(checkpoint_dir / name, "checkpoints")
            except Exception as exc:  # never hide the original error behind an upload error
                log.warning("could not upload %s to MLflow: %s", name, exc)


def config_changes(old: dict, new: dict) -> list[str]:
    old_flat, new_flat = flatten(old), flatten(new)
    return [
        key
        for key in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(key) != new_flat.get(key)
        and key not in ("train.resume", "train.resume_force")
    ]


def resume_target(run: Run, checkpoint_dir: Path) -> str:
    return run.run_id or str(checkpoint_dir / "last.pt")


def interrupted_message(what: str, run: Run, checkpoint_dir: Path) -> str:
    last = checkpoint_dir / "last.pt"
    if not last.is_file():
        return (
            f"{what} before the first epoch's checkpoint was written: nothing to resume; "
            "run the same command again to start over"
        )
    status = f"MLflow run {run.run_id} marked KILLED; " if run.run_id else ""
    return (
        f"{what}: {status}checkpoint {last}; continue with "
        f"train.resume={resume_target(run, checkpoint_dir)}"
    )


def resume_command(run: Run, checkpoint_dir: Path, fold: int | None) -> str:
    overrides = f"<same overrides, data.fold={fold}>" if fold is not None else "<same overrides>"
    return (
        f"run {run.run_id or '(tracking off)'}: if it stops, continue with: python -m pipeline "
        f"{overrides} train.resume={resume_target(run, checkpoint_dir)}"
    )


def derived_params_of(
    cfg: RunConfig,
    splits: Splits,
    setup: TrainingSetup,
    device: torch.device,
    dist_info: distributed.DistInfo,
) -> dict:
    """Facts the config alone does not say, logged as params beside it."""
    model, spec, weights = setup.model, setup.spec, setup.weights
    return {
        "weights_source": weights.source,
        "weights_sha256": weights.sha256 or "",
        "weights_path": weights.path or "",
        "input.img_size": spec.img_size,
        "input.mean": list(spec.mean),
        "input.std": list(spec.std),
        "input.interpolation": spec.interpolation,
        "input.crop_pct": setup.crop_pct,
        "params.total": sum(p.numel() for p in model.parameters()),
        "params.trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": str(device),
        "amp": str(setup.amp_dtype).removeprefix("torch."),
        "world_size": dist_info.world_size,
        **{f"data.n_{name}": n for name, n in splits.sizes().items()},
        "data.n_skipped": len(splits.skipped),
    }


def log_run_start(
    run: Run,
    cfg: RunConfig,
    splits: Splits,
    derived_params: dict,
    out_dir: Path,
    resume: ResumePoint | None,
    checkpoint_dir: Path,
) -> None:
    """config.yaml; params, split manifest and data report for a new run; history for an adopted one."""
    config_path = out_dir / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(json.loads(json.dumps(cfg.to_dict(), default=list)), sort_keys=False)
    )
    if resume is None or resume.run_id is None:  # a new run
        run.log_params({**flatten(cfg.to_dict()), **derived_params})
        run.log_artifact(config_path)
        run.log_artifact(write_split_manifest(splits, out_dir / "splits.csv"))
        log_data_report(run, splits, out_dir)
    if resume is not None:
        run.set_tags({"resumed_after_epoch": resume.epochs_done})
        if resume.run_id is None:  # the checkpoint came from an untracked run
            for epoch, metrics in enumerate(resume.state["history"]):
                run.log_metrics(metrics, step=epoch)
    run.set_tags({**environment_tags(), CHECKPOINT_DIR_TAG: checkpoint_dir.resolve()})


def log_run_end(run: Run, result: FitResult, test_metrics: dict[str, float]) -> None:
    run.log_metrics(
        {
            **test_metrics,
            "best_epoch": result.best_epoch + 1,
            "tested_epoch": result.weights_epoch + 1,  # differs under restore_best=false
            "train_seconds": result.train_seconds,
            "epochs_run": len(result.history),
        }
    )


def tested_weights(result: FitResult) -> str:
    """Which epoch's weights the test used, for the summary line."""
    best = f"best epoch {result.best_epoch + 1}"
    if result.weights_epoch == result.best_epoch:
        return best
    return f"tested epoch {result.weights_epoch + 1}, the last (restore_best=false); {best}"
