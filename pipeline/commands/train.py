"""stage=train: split, build, fine-tune, test once, and log everything to MLflow."""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.commands.console import class_report, print_run_end, print_run_start
from pipeline.commands.finetune_auto import resolve_auto, with_line
from pipeline.commands.logged_model import log_classifier_model
from pipeline.commands.posthoc import PostHocTest, check_post_hoc, post_hoc_test, wanted
from pipeline.commands.runtime import NO_HYDRA, HydraRuntime
from pipeline.commands.train_outputs import (
    best_baseline,
    config_changes,
    derived_params_of,
    interrupted_message,
    keep_checkpoints,
    log_baseline_comparison,
    log_run_end,
    log_run_start,
    per_class_metrics_of,
    resume_target,
    run_note,
    save_outputs,
    test_metrics_of,
    test_report_files,
)
from pipeline.commands.training_setup import (
    TrainingSetup,
    build_training,
    check_batch_norm_batches,
)
from pipeline.config import RunConfig
from pipeline.data.health.leak import check_leakage
from pipeline.data.loader import shut_down_loader_workers
from pipeline.data.splits import Splits, run_splits
from pipeline.errors import ConfigError, StorageError, TrainingError, first_line
from pipeline.evaluation.evaluate import check_tta
from pipeline.experiments.kfold import run_kfold
from pipeline.models.backbone import check_model_name
from pipeline.repro import seed_everything, set_deterministic
from pipeline.signals import Interrupted, sigterm_as_interrupt
from pipeline.tracking.runs import (
    Run,
    grouping_tags,
    run_name_for,
    start_run,
    system_metrics_logged,
)
from pipeline.tracking.store import check_store
from pipeline.training import distributed
from pipeline.training.batches import BatchSource, ToDevice
from pipeline.training.early_stopping import EarlyStopping
from pipeline.training.feature_cache import cached_image_features
from pipeline.training.features import cached_feature_loaders, check_cache_features
from pipeline.training.finetune import rebuild_on_change
from pipeline.training.guards import out_of_memory
from pipeline.training.loop import FitResult, fit, predict
from pipeline.training.precision import resolve_device, use_fast_cuda_kernels
from pipeline.training.resume import ResumePoint, find_resume_point, owner_tags

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str | None
    test_metrics: dict[str, float]
    fit: FitResult
    out_dir: Path


def _check_resume(cfg: RunConfig, out_dir: Path, main: bool) -> ResumePoint | None:
    if not cfg.train.resume:
        return None
    # Under torchrun rank 0 alone decides on a takeover: the others may look after it has
    # already taken the run over, and would find it running.
    resume = find_resume_point(
        cfg.train.resume, cfg.tracking, out_dir / "resume", cfg.train.resume_force, main
    )
    changed = config_changes(resume.state.get("config", {}), cfg.to_dict())
    if changed and resume.state.get("config"):
        log.warning("resuming with a changed config: %s", ", ".join(changed))
    if cfg.train.average_last and resume.state.get("average") is None:
        raise ConfigError(
            "train.resume: the run was trained without train.average_last, so its checkpoint "
            "holds no epochs to average: resume with train.average_last=0"
        )
    stopper = EarlyStopping(cfg.train.early_stopping)
    stopper.load_state_dict(resume.state["early_stopping"])
    trained = resume.epochs_done >= cfg.train.epochs or stopper.should_stop
    if trained and resume.status == "FINISHED":
        further = (
            "raise train.early_stopping.patience (it stopped early)"
            if stopper.should_stop
            else "raise train.epochs"
        )
        raise TrainingError(
            f"train.resume: the run already finished after {resume.epochs_done} epoch(s) of "
            f"train.epochs={cfg.train.epochs}; {further} to train it further"
        )
    if trained:  # stopped during the test, after training ended: test, and finish the run
        log.info("training ended after epoch %d: testing only", resume.epochs_done)
    return resume


def _check_checkpoint_fits(model: torch.nn.Module, state: dict, spec: str) -> None:
    """Before the MLflow run is reopened: a resume whose backbone, head or classes changed
    would fail in load_state_dict and mark a finished run FAILED."""
    expected, saved = model.state_dict(), state["model"]
    misfits = sorted(expected.keys() ^ saved.keys()) + [
        f"{key} {tuple(saved[key].shape)} -> {tuple(value.shape)}"
        for key, value in expected.items()
        if key in saved and saved[key].shape != value.shape
    ]
    if misfits:
        raise ConfigError(
            f"train.resume={spec}: the checkpoint's model does not fit this config "
            f"({len(misfits)} tensors differ, e.g. {misfits[0]}): resume with the run's own "
            "backbone, head and data"
        )


def _head_on_features(
    cfg: RunConfig, training: TrainingSetup, splits: Splits, run: Run, new_run: bool
):
    """train.cache_features: the backbone's features of train and val (each image once,
    through data.feature_cache), and the head-only model and loaders `fit` trains on them.
    With augment=none the train transform is the eval transform, so these are the features
    the image loaders would give; the splits' own items key the cache (not the decoded
    arrays data.cache_images holds)."""
    device = training.batches.device
    train_bs, val_bs = training.loaders["train"].batch_size, training.loaders["val"].batch_size
    assert train_bs is not None and val_bs is not None  # build_loader batches by batch_size
    embedded = {
        name: cached_image_features(
            cfg.data.feature_cache,
            training.model.backbone,
            training.spec,
            getattr(splits, name),
            val_bs,
            cfg.data.num_workers,
            device,
            training.amp_dtype,
            training.crop_pct,
        )
        for name in ("train", "val")
    }
    if new_run:  # a resumed run logged its params already (and they cannot change)
        run.log_params({"features.cached": sum(e.from_cache for e in embedded.values())})
    train, val = (
        (embedded[name].features, torch.as_tensor(getattr(splits, name).labels))
        for name in ("train", "val")
    )
    return cached_feature_loaders(training.model, train, val, (train_bs, val_bs), device, cfg.seed)


def _fit_and_test(
    cfg: RunConfig,
    training: TrainingSetup,
    splits: Splits,
    run: Run,
    device: torch.device,
    checkpoint_dir: Path,
    resume: ResumePoint | None,
):
    """Train with model selection on val, then touch the test split exactly once."""
    amp = training.amp_dtype
    model: torch.nn.Module = training.train_model
    batches: ToDevice = training.batches
    train_loader: BatchSource = training.loaders["train"]
    val_loader: BatchSource = training.loaders["val"]
    assert training.schedule is not None  # build_training builds one unless told not to
    if cfg.train.cache_features:  # frozen backbone, no augmentation: run it once per split
        use_fast_cuda_kernels(device)  # fit sets these too, but after this pass
        model, train_loader, val_loader, batches = _head_on_features(
            cfg, training, splits, run, new_run=resume is None or resume.run_id is None
        )
    result = fit(
        model,
        train_loader,
        val_loader,
        training.optimizer,
        training.schedule,
        cfg.train,
        batches,
        checkpoint_dir=checkpoint_dir,
        on_epoch=lambda epoch, metrics: run.log_metrics(metrics, step=epoch),
        resume=resume.state if resume else None,
        checkpoint_extra={"run_id": run.run_id, "config": cfg.to_dict()},
        on_epoch_start=rebuild_on_change(
            training.model, cfg.finetune, cfg.optim, training.optimizer, training.schedule
        ),
        batch_transform=training.batch_transform,
        class_weights=training.class_weights,
        l1=cfg.optim.l1,
    )
    if wanted(cfg.eval):  # TTA and/or temperature scaling (one process: check_post_hoc)
        return result, post_hoc_test(
            cfg.eval, training.model, training.loaders, training.batches, amp
        )
    test_loss, probs, targets = distributed.gather_predictions(
        *predict(training.model, training.loaders["test"], training.batches, amp)
    )
    return result, PostHocTest(test_loss, probs, targets, {})


def run_train(
    cfg: RunConfig,
    out_dir: Path,
    splits: Splits | None = None,
    runtime: HydraRuntime = NO_HYDRA,
) -> TrainResult:
    """`splits` given (one k-fold fold) skips building them; data.kfold=K runs K folds, and
    data.fold=I only fold I. `runtime` (the command line) gives the run its `overrides` and
    `sweep` tags and makes the printed resume command exact."""
    if cfg.data.kfold and cfg.data.fold is None and splits is None:
        return run_kfold(cfg, out_dir, functools.partial(run_train, runtime=runtime))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_model_name(cfg.backbone.name)  # a typo fails here, before any data is read
    dist_info = distributed.init_distributed(cfg.train.device)
    check_cache_features(
        cfg.train.cache_features,
        cfg.finetune.strategy,
        cfg.augment.preset,
        dist_info.world_size,
    )
    check_tta(cfg.eval.tta, cfg.augment.hflip)
    check_post_hoc(cfg.eval, dist_info.world_size)
    main = dist_info.is_main
    if not main:
        logging.getLogger("pipeline").setLevel(logging.WARNING)  # rank 0 reports for all
    if main:  # a bad tracking.uri fails now, not after the data and model are built
        check_store(cfg.tracking)
    resume = _check_resume(cfg, out_dir, main)
    seed_everything(cfg.seed)
    set_deterministic(cfg.train.deterministic)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = distributed.device_for(dist_info, resolve_device(cfg.train.device))

    # Everything that can fail on bad input happens before the MLflow run starts.
    if splits is None:
        splits = run_splits(cfg.data, cfg.seed)
    leak = check_leakage(splits, cfg.data.on_leak)  # data.on_leak=error stops here
    log.info("data %s: %s, %d classes", cfg.data.name, splits.sizes(), len(splits.class_names))
    auto = None
    if cfg.finetune.strategy == "auto":  # probe the frozen features, then pick a strategy
        cfg, auto = resolve_auto(cfg, splits, device, dist_info)
    training = build_training(cfg, splits, device, dist_info)
    check_batch_norm_batches(cfg, training)
    derived_params = derived_params_of(cfg, splits, training, device, dist_info)
    if auto is not None:
        derived_params |= auto.params()
    if resume is not None and cfg.train.resume:  # (a resume point comes from train.resume)
        _check_checkpoint_fits(training.model, resume.state, cfg.train.resume)

    checkpoint_dir = resume.checkpoint_dir if resume else out_dir / "checkpoints"
    tracking = cfg.tracking if main else dataclasses.replace(cfg.tracking, enabled=False)
    # owner.host/pid: a RUNNING run whose process is gone (SIGKILL) can be taken over.
    run_tags = {
        **grouping_tags("train", cfg.seed, runtime.overrides, runtime.sweep_dir),
        "backbone": cfg.backbone.name,
        **owner_tags(),
    }
    with (
        sigterm_as_interrupt(),
        start_run(
            tracking,
            tags=run_tags,
            run_id=resume.run_id if resume else None,
            name=run_name_for(cfg, "train"),
        ) as run,
        system_metrics_logged(run, tracking),  # stopped before the run ends, however it ends
    ):
        log_run_start(run, cfg, splits, derived_params, out_dir, resume, checkpoint_dir)
        run.log_metrics(leak.metrics())
        if main:  # said now, not only at the end: a SIGKILL leaves no last words
            print_run_start(run, cfg, out_dir, checkpoint_dir, derived_params, runtime)
        stopped_by = None
        try:
            result, tested = _fit_and_test(
                cfg, training, splits, run, device, checkpoint_dir, resume
            )
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM via sigterm_as_interrupt
            stopped_by = str(exc) or "Ctrl-C"
        except Exception as exc:
            keep_checkpoints(run, checkpoint_dir)
            if isinstance(exc, StorageError):  # a full disk: the last good last.pt is kept
                then = (
                    f"continue with train.resume={resume_target(run, checkpoint_dir)}"
                    if (checkpoint_dir / "last.pt").is_file()
                    else "run the same command again"
                )
                raise StorageError(f"{exc}, then {then}") from exc
            if "Expected more than 1 value per channel" in str(exc):  # BatchNorm, batch of 1
                raise TrainingError(
                    f"BatchNorm needs 2 or more images per batch, got data.batch_size="
                    f"{cfg.data.batch_size}: raise it (train.accumulate_steps keeps the "
                    "effective batch size)"
                ) from exc
            if out_of_memory(exc):
                raise TrainingError(
                    f"CUDA out of memory at data.batch_size={cfg.data.batch_size}: lower "
                    "data.batch_size (use gradient accumulation to keep the effective batch size)"
                ) from exc
            raise
        if stopped_by is not None:
            # Here, past the except block, its traceback (which holds the loader iterators)
            # is gone: shut the workers down, then upload from this process.
            shut_down_loader_workers(training.loaders)
            keep_checkpoints(run, checkpoint_dir)
            raise Interrupted(interrupted_message(stopped_by, run, checkpoint_dir))
        probs, targets = tested.probs, tested.targets
        test_metrics, per_class = {"test/loss": tested.loss}, {}
        if main:  # per-class report, plots and report.md: rank 0 holds the gathered predictions
            test_metrics |= test_metrics_of(splits.class_names, targets, probs) | tested.metrics
            per_class = per_class_metrics_of(splits.class_names, targets, probs)
        log_run_end(run, result, test_metrics, per_class)  # the numbers first, then the files
        not_saved = []
        if result.checkpoint:  # best.pt, or final.pt: the weights the test used
            not_saved += save_outputs(run, {result.checkpoint: None}, "checkpoints")
        if main:
            baseline = best_baseline(cfg, splits)  # logged, or the majority class scored now
            above = log_baseline_comparison(run, test_metrics["test/acc"], baseline)
            name = run.name or run_name_for(cfg, "train")
            title = f"Run {name} ({run.run_id or 'tracking off'}): {cfg.backbone.name} on {cfg.data.name}"
            files = test_report_files(
                out_dir, title, splits.class_names, targets, probs, test_metrics, result, above
            )
            if auto is not None:  # report.md says what finetune=auto chose, and why
                files[out_dir / "report.md"] = with_line(
                    files[out_dir / "report.md"], f"finetune=auto: {auto.reason}"
                )
            not_saved += save_outputs(run, {**files, **tested.save(out_dir)})
            run.set_tags({"mlflow.note.content": run_note(run.name, result, test_metrics)})
        if main and run.active and cfg.tracking.log_model:
            try:
                log_classifier_model(
                    str(run.run_id),
                    cfg.tracking.uri,
                    training.model,
                    training.spec,
                    splits.class_names,
                    cfg.seed,
                    tested.temperature or 1.0,
                )
            except Exception as exc:  # like a file: a failed upload costs the model, not the run
                not_saved.append(f"model (not logged: {first_line(exc)})")
        if not_saved:  # the run still ends FINISHED: its training and test are complete
            run.set_tags({"warning": f"not saved: {'; '.join(not_saved)}"})
            log.warning("run finished, but not all its files were saved: %s", "; ".join(not_saved))

    if main:
        report = class_report(splits.class_names, targets, probs)
        print_run_end(run, cfg, result, test_metrics, report, splits.class_names, out_dir)
    return TrainResult(run.run_id, test_metrics, result, out_dir)
