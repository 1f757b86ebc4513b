"""stage=train: split, build, fine-tune, test once, and log everything to MLflow."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pipeline.commands.train_outputs import (
    config_changes,
    derived_params_of,
    interrupted_message,
    keep_checkpoints,
    log_run_end,
    log_run_start,
    resume_command,
    resume_target,
    save_outputs,
    test_metrics_of,
    test_report_files,
    tested_weights,
)
from pipeline.config import RunConfig
from pipeline.data.augment import build_eval_transform, build_train_transform
from pipeline.data.decode import cache_in_memory
from pipeline.data.imbalance import balanced_sample_weights, inverse_frequency_weights
from pipeline.data.loader import (
    DeviceNormalize,
    ImageDataset,
    build_loader,
    shut_down_loader_workers,
)
from pipeline.data.mix import MixBatch, build_batch_transform
from pipeline.data.splits import Splits, run_splits
from pipeline.errors import ConfigError, StorageError, TrainingError
from pipeline.evaluation.diagnosis import write_report
from pipeline.experiments.kfold import run_kfold
from pipeline.models.backbone import check_model_name
from pipeline.models.classifier import build_model
from pipeline.repro import seed_everything, set_deterministic
from pipeline.signals import Interrupted, sigterm_as_interrupt
from pipeline.tracking.runs import Run, run_name_for, start_run
from pipeline.tracking.store import check_store
from pipeline.training import distributed
from pipeline.training.early_stopping import EarlyStopping
from pipeline.training.features import cached_feature_loaders, check_cache_features
from pipeline.training.finetune import apply_finetune, batch_norm_trains, rebuild_on_change
from pipeline.training.guards import out_of_memory
from pipeline.training.loop import Batches, FitResult, fit, optimizer_steps_per_epoch, predict
from pipeline.training.optim import build_optimizer
from pipeline.training.precision import resolve_amp, resolve_device, use_fast_cuda_kernels
from pipeline.training.resume import ResumePoint, find_resume_point, owner_tags
from pipeline.training.sched import Schedule, build_schedule

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str | None
    test_metrics: dict[str, float]
    fit: FitResult
    out_dir: Path


def _build_loaders(
    cfg: RunConfig,
    splits: Splits,
    train_tf,
    eval_tf,
    decode: int,
    dist_info: distributed.DistInfo,
    pin_memory: bool,
) -> dict[str, DataLoader]:
    """train/val/test loaders; under torchrun each rank gets its shard."""
    num_classes = len(splits.class_names)
    eval_bs = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    if cfg.data.cache_images:
        parts = {name: cache_in_memory(images, decode) for name, images in parts.items()}
    datasets = {
        name: ImageDataset(images, train_tf if name == "train" else eval_tf, decode)
        for name, images in parts.items()
    }
    weighted = cfg.data.sampler == "weighted"
    return {
        name: build_loader(
            dataset,
            cfg.data.batch_size if name == "train" else eval_bs,
            train=name == "train",
            num_workers=cfg.data.num_workers,
            seed=cfg.seed + dist_info.rank,
            pin_memory=pin_memory,
            sample_weights=balanced_sample_weights(splits.train.labels, num_classes)
            if name == "train" and weighted
            else None,
            # Under torchrun each rank sees its shard (None: one process sees everything).
            sampler=distributed.shard_sampler(
                dataset, dist_info, train=name == "train", seed=cfg.seed
            ),
        )
        for name, dataset in datasets.items()
    }


@dataclass
class _Training:
    """Everything fit needs, built before the MLflow run starts so bad input fails first."""

    model: torch.nn.Module  # the bare model: checkpoints, EMA, finetune rebuilds, test
    train_model: torch.nn.Module  # the model fit steps: DDP-wrapped under torchrun
    loaders: dict[str, DataLoader]
    batches: Batches
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    batch_transform: MixBatch | None
    class_weights: torch.Tensor | None
    derived_params: dict


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


def _check_batch_norm_batches(cfg: RunConfig, training: _Training) -> None:
    """BatchNorm in train mode fails on a batch of one image, an epoch into an open MLflow
    run: refuse such a config before the run starts."""
    loader = training.loaders["train"]
    drawn, size = len(loader.sampler), loader.batch_size
    smallest = size if loader.drop_last else drawn % size or size
    if smallest > 1 or not batch_norm_trains(training.model, cfg.finetune, cfg.train.epochs):
        return
    if size == 1:
        raise ConfigError(
            "BatchNorm needs 2 or more images per batch, got data.batch_size=1: raise it "
            "(train.accumulate_steps keeps the effective batch size)"
        )
    raise ConfigError(
        "BatchNorm needs 2 or more images per batch, and the train split gives 1 image: add "
        "images, or lower data.val_fraction / data.test_fraction"
    )


def _build_training(
    cfg: RunConfig, splits: Splits, device: torch.device, dist_info: distributed.DistInfo
) -> _Training:
    """Model, input pipeline, optimizer and schedule, from the config's groups."""
    num_classes = len(splits.class_names)
    model, spec, weights = build_model(cfg.backbone, cfg.head, num_classes)
    apply_finetune(model, cfg.finetune)

    crop_pct = cfg.augment.crop_pct or spec.crop_pct
    train_tf = build_train_transform(cfg.augment, spec.img_size, crop_pct, spec.interpolation)
    eval_tf = build_eval_transform(spec.img_size, crop_pct, spec.interpolation)
    decode = round(spec.img_size / crop_pct)
    pin = device.type == "cuda"
    loaders = _build_loaders(cfg, splits, train_tf, eval_tf, decode, dist_info, pin_memory=pin)

    channels_last = (
        device.type == "cuda" if cfg.train.channels_last is None else cfg.train.channels_last
    )
    model = model.to(
        device, memory_format=torch.channels_last if channels_last else torch.preserve_format
    )
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch = optimizer_steps_per_epoch(len(loaders["train"]), cfg.train.accumulate_steps)
    class_weights = None
    if cfg.train.class_weights == "auto":
        inverse = inverse_frequency_weights(splits.train.labels, num_classes)
        class_weights = torch.as_tensor(inverse, dtype=torch.float32, device=device)
    return _Training(
        model=model,
        train_model=distributed.wrap_model(model, dist_info, device, cfg.train.sync_bn),
        loaders=loaders,
        batches=Batches(DeviceNormalize(spec.mean, spec.std).to(device), device, channels_last),
        optimizer=optimizer,
        schedule=build_schedule(optimizer, cfg.sched, cfg.train.epochs, steps_per_epoch),
        batch_transform=build_batch_transform(
            cfg.augment.mixup_alpha,
            cfg.augment.cutmix_alpha,
            cfg.augment.mix_prob,
            num_classes,
            cfg.seed + dist_info.rank,  # each rank mixes its own shard its own way
        ),
        class_weights=class_weights,
        derived_params=derived_params_of(
            cfg, splits, model, spec, weights, crop_pct, device, dist_info
        ),
    )


def _fit_and_test(
    cfg: RunConfig,
    training: _Training,
    run: Run,
    device: torch.device,
    checkpoint_dir: Path,
    resume: ResumePoint | None,
):
    """Train with model selection on val, then touch the test split exactly once."""
    amp = resolve_amp(cfg.train.amp, device)
    model, batches = training.train_model, training.batches
    train_loader, val_loader = training.loaders["train"], training.loaders["val"]
    if cfg.train.cache_features:  # frozen backbone, no augmentation: run it once per split
        use_fast_cuda_kernels(device)  # fit sets these too, but after this pass
        model, train_loader, val_loader, batches = cached_feature_loaders(
            training.model, train_loader, val_loader, batches, amp, cfg.seed
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
    )
    test_loss, probs, targets = distributed.gather_predictions(
        *predict(training.model, training.loaders["test"], training.batches, amp)
    )
    return result, test_loss, probs, targets


def run_train(cfg: RunConfig, out_dir: Path, splits: Splits | None = None) -> TrainResult:
    """`splits` given (one k-fold fold) skips building them; data.kfold=K runs K folds, and
    data.fold=I only fold I."""
    if cfg.data.kfold and cfg.data.fold is None and splits is None:
        return run_kfold(cfg, out_dir, run_train)
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
    log.info("data %s: %s, %d classes", cfg.data.name, splits.sizes(), len(splits.class_names))
    training = _build_training(cfg, splits, device, dist_info)
    _check_batch_norm_batches(cfg, training)
    if resume is not None:
        _check_checkpoint_fits(training.model, resume.state, cfg.train.resume)

    checkpoint_dir = resume.checkpoint_dir if resume else out_dir / "checkpoints"
    tracking = cfg.tracking if main else dataclasses.replace(cfg.tracking, enabled=False)
    # owner.host/pid: a RUNNING run whose process is gone (SIGKILL) can be taken over.
    run_tags = {"stage": "train", "backbone": cfg.backbone.name, **owner_tags()}
    with (
        sigterm_as_interrupt(),
        start_run(
            tracking,
            tags=run_tags,
            run_id=resume.run_id if resume else None,
            name=run_name_for(cfg, "train"),
        ) as run,
    ):
        log_run_start(run, cfg, splits, training.derived_params, out_dir, resume, checkpoint_dir)
        if main:  # said now, not only at the end: a SIGKILL leaves no last words
            print(resume_command(run, checkpoint_dir, cfg.data.fold), flush=True)
        stopped_by = None
        try:
            result, test_loss, probs, targets = _fit_and_test(
                cfg, training, run, device, checkpoint_dir, resume
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
        test_metrics = {"test/loss": test_loss}
        if main:  # per-class report, plots and report.md: rank 0 holds the gathered predictions
            test_metrics |= test_metrics_of(splits.class_names, targets, probs)
        log_run_end(run, result, test_metrics)  # the numbers first, then the files
        not_saved = []
        if result.checkpoint:  # best.pt, or final.pt: the weights the test used
            not_saved += save_outputs(run, {result.checkpoint: None}, "checkpoints")
        if main:
            title = f"Run {run.run_id or '(tracking off)'}: {cfg.backbone.name} on {cfg.data.name}"
            files = test_report_files(
                out_dir, splits.class_names, targets, probs, result.history, result.best_epoch
            )
            files[out_dir / "report.md"] = lambda p: write_report(
                p, title, result.history, test_metrics, result.best_epoch
            )
            not_saved += save_outputs(run, files)
        if not_saved:  # the run still ends FINISHED: its training and test are complete
            run.set_tags({"warning": f"not saved: {'; '.join(not_saved)}"})
            log.warning("run finished, but not all its files were saved: %s", "; ".join(not_saved))

    summary = "  ".join(f"{k} {v:.4f}" for k, v in test_metrics.items())
    if main:
        print(
            f"run {run.run_id or '(tracking off)'}: {summary}  ({tested_weights(result)}, "
            f"{result.train_seconds:.0f}s)"
        )
    return TrainResult(run.run_id, test_metrics, result, out_dir)
