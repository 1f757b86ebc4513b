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

from pipeline.commands.evaluate import metric_name
from pipeline.commands.training_setup import TrainingSetup
from pipeline.config import TRAINING_GROUPS, RunConfig
from pipeline.data.report import log_data_report, log_dataset_inputs
from pipeline.data.splits import Splits
from pipeline.errors import first_line
from pipeline.evaluation.baselines import (
    SPLIT_DIGEST,
    BestBaseline,
    baseline_lines,
    baseline_metrics,
    find_best_baseline,
    majority_baseline,
)
from pipeline.evaluation.diagnosis import diagnose
from pipeline.evaluation.metrics import classification_report, confusion_matrix, summarize
from pipeline.evaluation.plots import plot_learning_curves
from pipeline.evaluation.report import report_files
from pipeline.repro import environment_tags
from pipeline.tracking.params import config_params, param_text
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


def best_baseline(cfg: RunConfig, splits: Splits) -> BestBaseline:
    """The best baseline logged on this split (stage=baseline), else the majority class
    scored now. A store that cannot be searched costs the lookup, not the finished run."""
    try:
        found = find_best_baseline(cfg.tracking, splits.digest())
    except Exception as exc:
        log.warning("could not look up baselines in MLflow: %s", first_line(exc))
        found = None
    return found or majority_baseline(splits.train.labels, splits.test.labels)


def log_baseline_comparison(run: Run, test_acc: float, best: BestBaseline) -> list[str]:
    """Logs baseline/best_acc and test/acc_over_baseline, warns in one line when the run
    did not beat the baseline; returns report.md's section."""
    run.log_metrics(baseline_metrics(test_acc, best))
    run.set_tags({"baseline.best": f"{best.kind} ({best.source})"})
    if test_acc <= best.acc:
        log.warning(
            "test/acc %.4f did not beat the %s baseline's %.4f (%s)",
            test_acc,
            best.kind,
            best.acc,
            best.source,
        )
    return baseline_lines(test_acc, best)


def per_class_metrics_of(class_names: list[str], targets, probs) -> dict[str, float]:
    """`test/precision/<class>`, `test/recall/<class>`, `test/f1/<class>`: the keys
    stage=evaluate logs, so a training run and its evaluations line up in the runs table."""
    report = classification_report(
        confusion_matrix(targets, probs.argmax(1), len(class_names)), class_names
    )
    return {
        metric_name(f"test/{key.removesuffix('-score')}/{name}"): report[name][key]
        for name in class_names
        for key in ("precision", "recall", "f1-score")
    }


def test_report_files(
    out_dir: Path,
    title: str,
    class_names: list[str],
    targets,
    probs,
    test_metrics,
    result,
    sections: list[str] | None = None,
) -> dict[Path, Callable[[Path], object]]:
    """Each file of the test report (the one stage=evaluate writes, plus the learning
    curves), with the function that writes it."""
    cm = confusion_matrix(targets, probs.argmax(1), len(class_names))
    report = classification_report(cm, class_names)
    history, best_epoch = result.history, result.best_epoch
    files = report_files(
        out_dir, class_names, cm, report, title, history, test_metrics, best_epoch, sections
    )
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


def derived_params_of(
    cfg: RunConfig,
    splits: Splits,
    setup: TrainingSetup,
    device: torch.device,
    dist_info: distributed.DistInfo,
) -> dict:
    """Facts the config alone does not say, logged as params beside it."""
    model, spec, weights = setup.model, setup.spec, setup.weights
    return {  # lists as `a,b,c`, as config_params writes them
        "weights_source": weights.source,
        "weights_sha256": weights.sha256 or "",
        "weights_path": weights.path or "",
        "input.img_size": spec.img_size,
        "input.mean": param_text(list(spec.mean)),
        "input.std": param_text(list(spec.std)),
        "input.interpolation": spec.interpolation,
        "input.crop_pct": setup.crop_pct,
        "params.total": sum(p.numel() for p in model.parameters()),
        "params.trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": str(device),
        "amp": str(setup.amp_dtype).removeprefix("torch."),
        "world_size": dist_info.world_size,
        **{f"data.n_{name}": n for name, n in splits.sizes().items()},
        "data.n_skipped": len(splits.skipped),
        SPLIT_DIGEST: splits.digest(),  # which baselines it is compared with
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
    """config.yaml; params (the training groups only), split manifest, data report and
    dataset inputs for a new run; history for an adopted one."""
    config_path = out_dir / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(json.loads(json.dumps(cfg.to_dict(), default=list)), sort_keys=False)
    )
    if resume is None or resume.run_id is None:  # a new run
        run.log_params({**config_params(cfg.to_dict(), TRAINING_GROUPS), **derived_params})
        run.log_artifact(config_path)
        run.log_artifact(write_split_manifest(splits, out_dir / "splits.csv"))
        log_data_report(run, splits, out_dir)
        log_dataset_inputs(run, splits, cfg.data)
    if resume is not None:
        run.set_tags({"resumed_after_epoch": resume.epochs_done})
        if resume.run_id is None:  # the checkpoint came from an untracked run
            for epoch, metrics in enumerate(resume.state["history"]):
                run.log_metrics(metrics, step=epoch)
    run.set_tags({**environment_tags(), CHECKPOINT_DIR_TAG: checkpoint_dir.resolve()})


def best_metrics_of(result: FitResult) -> dict[str, float]:
    """`best/<metric>`: the epoch model selection kept (`best/val/loss`, `best/val/acc`,
    `best/train/...`), named as the search parent's `best/<search.metric>`."""
    if not 0 <= result.best_epoch < len(result.history):
        return {}
    return {f"best/{k}": v for k, v in result.history[result.best_epoch].items() if "/" in k}


def log_run_end(
    run: Run,
    result: FitResult,
    test_metrics: dict[str, float],
    per_class: dict[str, float] | None = None,
) -> None:
    run.log_metrics(
        {
            **test_metrics,
            **(per_class or {}),
            **best_metrics_of(result),
            "best_epoch": result.best_epoch + 1,
            "tested_epoch": result.weights_epoch + 1,  # differs under restore_best=false
            "train_seconds": result.train_seconds,
            "epochs_run": len(result.history),
            **({"averaged_epochs": result.averaged_epochs} if result.averaged_epochs else {}),
        }
    )


def tested_weights(result: FitResult) -> str:
    """Which epoch's weights the test used, for the summary line."""
    best = f"best epoch {result.best_epoch + 1}"
    if result.averaged_epochs:
        last = result.weights_epoch + 1
        return (
            f"tested the average of epochs {last + 1 - result.averaged_epochs}-{last} "
            f"(train.average_last={result.averaged_epochs}); {best}"
        )
    if result.weights_epoch == result.best_epoch:
        return best
    return f"tested epoch {result.weights_epoch + 1}, the last (restore_best=false); {best}"


def run_note(name: str | None, result: FitResult, test_metrics: dict[str, float]) -> str:
    """The run's description (`mlflow.note.content`, markdown, on its Overview page): the
    learning-curve diagnosis headline and the test metrics, as report.md opens."""
    diagnosis = diagnose(result.history)
    headline = diagnosis.findings[0] if diagnosis.findings else ""
    keys = list(test_metrics)
    lines = [
        f"**{name or 'training run'}**: {diagnosis.verdict}. {headline}",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        "| " + " | ".join(f"{test_metrics[k]:.4f}" for k in keys) + " |",
        "",
        f"Tested the weights of the {tested_weights(result)} ({len(result.history)} epoch(s) run). "
        "Per-class scores, curves and the full diagnosis: `report.md`, "
        "`learning_curves.png`, `confusion_matrix.png` (Artifacts).",
    ]
    return "\n".join(lines)
