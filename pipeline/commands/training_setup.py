"""One training setup, built from the config: what stage=train, stage=lr_find (and through
run_train the k-fold and ablation children) and the benchmarks train with.

Model (fine-tuning applied, on the device, channels_last), loaders (cache_images, the
weighted sampler, torchrun shards), on-device normalisation, class weights, label
smoothing, mixing, AMP dtype, optimizer (parameter groups) and schedule. Built before any
MLflow run starts, so bad input fails first.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from pipeline.config import RunConfig
from pipeline.data.augment import build_eval_transform, build_train_transform
from pipeline.data.decode import cache_in_memory
from pipeline.data.imbalance import balanced_sample_weights, inverse_frequency_weights
from pipeline.data.loader import DeviceNormalize, ImageDataset, build_loader
from pipeline.data.mix import MixBatch, build_batch_transform
from pipeline.data.splits import Splits
from pipeline.errors import ConfigError
from pipeline.models.backbone import InputSpec
from pipeline.models.classifier import Classifier, build_model
from pipeline.models.weights import WeightsInfo
from pipeline.training import distributed
from pipeline.training.batches import Batches
from pipeline.training.finetune import apply_finetune, batch_norm_trains
from pipeline.training.loop import optimizer_steps_per_epoch
from pipeline.training.optim import build_optimizer
from pipeline.training.precision import resolve_amp
from pipeline.training.sched import Schedule, build_schedule

SPLITS = ("train", "val", "test")


@dataclass
class TrainingSetup:
    """Everything a training step needs, as stage=train builds it."""

    model: Classifier  # the bare model: checkpoints, EMA, finetune rebuilds, test
    train_model: torch.nn.Module  # the model the steps run: DDP-wrapped under torchrun
    spec: InputSpec
    weights: WeightsInfo
    crop_pct: float
    loaders: dict[str, DataLoader]
    batches: Batches
    optimizer: torch.optim.Optimizer
    schedule: Schedule | None  # None when built without one (stage=lr_find sets its own LRs)
    batch_transform: MixBatch | None
    class_weights: torch.Tensor | None
    label_smoothing: float
    amp_dtype: torch.dtype | None


def build_loaders(
    cfg: RunConfig,
    splits: Splits,
    train_tf,
    eval_tf,
    decode: int,
    dist_info: distributed.DistInfo,
    pin_memory: bool,
    parts: Sequence[str] = SPLITS,
) -> dict[str, DataLoader]:
    """Loaders of the named splits; under torchrun each rank gets its shard."""
    num_classes = len(splits.class_names)
    eval_bs = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    images = {name: getattr(splits, name) for name in parts}
    if cfg.data.cache_images:
        images = {name: cache_in_memory(part, decode) for name, part in images.items()}
    datasets = {
        name: ImageDataset(part, train_tf if name == "train" else eval_tf, decode)
        for name, part in images.items()
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


def build_training(
    cfg: RunConfig,
    splits: Splits,
    device: torch.device,
    dist_info: distributed.DistInfo | None = None,
    parts: Sequence[str] = SPLITS,
    with_schedule: bool = True,
) -> TrainingSetup:
    """Model, input pipeline, loss settings, optimizer and schedule, from the config's groups.

    `parts`: the splits to build loaders for (stage=lr_find needs only train).
    `with_schedule=False` leaves the optimizer's LRs as built: a schedule with warmup would
    lower them at once."""
    dist_info = dist_info or distributed.DistInfo()
    num_classes = len(splits.class_names)
    model, spec, weights = build_model(cfg.backbone, cfg.head, num_classes)
    apply_finetune(model, cfg.finetune)

    crop_pct = cfg.augment.crop_pct or spec.crop_pct
    train_tf = build_train_transform(cfg.augment, spec.img_size, crop_pct, spec.interpolation)
    eval_tf = build_eval_transform(spec.img_size, crop_pct, spec.interpolation)
    decode = round(spec.img_size / crop_pct)
    pin = device.type == "cuda"
    loaders = build_loaders(cfg, splits, train_tf, eval_tf, decode, dist_info, pin, parts)

    channels_last = (
        device.type == "cuda" if cfg.train.channels_last is None else cfg.train.channels_last
    )
    # torch's stubs type memory_format as a keyword only of the .to(memory_format) overload.
    model = model.to(  # type: ignore[call-overload]
        device, memory_format=torch.channels_last if channels_last else torch.preserve_format
    )
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch = optimizer_steps_per_epoch(len(loaders["train"]), cfg.train.accumulate_steps)
    class_weights = None
    if cfg.train.class_weights == "auto":
        inverse = inverse_frequency_weights(splits.train.labels, num_classes)
        class_weights = torch.as_tensor(inverse, dtype=torch.float32, device=device)
    return TrainingSetup(
        model=model,
        train_model=distributed.wrap_model(model, dist_info, device, cfg.train.sync_bn),
        spec=spec,
        weights=weights,
        crop_pct=crop_pct,
        loaders=loaders,
        batches=Batches(DeviceNormalize(spec.mean, spec.std).to(device), device, channels_last),
        optimizer=optimizer,
        schedule=build_schedule(optimizer, cfg.sched, cfg.train.epochs, steps_per_epoch)
        if with_schedule
        else None,
        batch_transform=build_batch_transform(
            cfg.augment.mixup_alpha,
            cfg.augment.cutmix_alpha,
            cfg.augment.mix_prob,
            num_classes,
            cfg.seed + dist_info.rank,  # each rank mixes its own shard its own way
        ),
        class_weights=class_weights,
        label_smoothing=cfg.train.label_smoothing,
        amp_dtype=resolve_amp(cfg.train.amp, device),
    )


def check_batch_norm_batches(cfg: RunConfig, setup: TrainingSetup) -> None:
    """BatchNorm in train mode fails on a batch of one image, an epoch into an open MLflow
    run: refuse such a config before the run starts."""
    loader = setup.loaders["train"]
    # build_loader batches by batch_size, drawn by a sampler that has a length.
    assert loader.batch_size is not None and isinstance(loader.sampler, Sized)
    drawn, size = len(loader.sampler), loader.batch_size
    smallest = size if loader.drop_last else drawn % size or size
    if smallest > 1 or not batch_norm_trains(setup.model, cfg.finetune, cfg.train.epochs):
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
