"""Settings of the training loop (conf/train): `TrainConfig` and its early stopping."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.errors import ConfigError
from pipeline.training.guards import NAN_POLICIES

MONITORS = ("val/loss", "val/acc", "train/loss", "train/acc")  # per-epoch metrics of `fit`


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val/loss"  # any per-epoch metric: val/loss, val/acc, ...
    mode: str = "min"  # min | max
    min_delta: float = 0.0  # smaller changes do not count as improvement
    patience: int = 3  # stop after this many epochs in a row without improvement (Keras)
    restore_best: bool = True  # end with the best epoch's weights, not the last

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ConfigError(f"train.early_stopping.mode must be min or max, got {self.mode!r}")
        if self.patience < 0 or self.min_delta < 0:
            raise ConfigError(
                f"train.early_stopping.patience and min_delta must be >= 0, got {self.patience} and {self.min_delta}"
            )
        if self.monitor not in MONITORS:
            raise ConfigError(
                f"train.early_stopping.monitor={self.monitor!r} is not one of: {', '.join(MONITORS)}"
            )


@dataclass
class TrainConfig:
    epochs: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: bool | None = None  # None: on for CUDA
    label_smoothing: float = 0.0
    class_weights: str | None = None  # auto: inverse class frequency in the loss; null: off
    grad_clip: float | None = None  # max global grad norm
    threads: int | None = None  # torch CPU threads; None: torch's default
    progress: bool | None = None  # per-batch bar; None: a bar on a terminal, else plain lines
    progress_every: float = 30.0  # seconds between the plain progress lines (not a terminal)
    # Speed and averaging (see benchmarks/README.md for what each buys).
    compile: bool = False  # torch.compile the model (slow first epoch, faster after on GPU)
    accumulate_steps: int = 1  # micro-batches summed into one optimizer step
    ema_decay: float | None = None  # e.g. 0.999: validate/test/keep an EMA of the weights
    # k > 0: test/keep the uniform average of the last k epochs' weights (SWA-style, BatchNorm
    # statistics recomputed on train), instead of the best epoch's (restore_best)
    average_last: int = 0
    cache_features: bool = False  # finetune=frozen + augment=none: run the backbone once
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # Reliability and scale-out (README "Reliability", "Scaling out").
    resume: str | None = None  # MLflow run id or path to a last.pt: continue that run
    resume_force: bool = False  # take over a RUNNING run whose process this host cannot check
    nan_policy: str = "stop"  # stop | skip: what a NaN/inf training loss does
    log_every: int = 50  # steps between non-finite-loss checks (one host sync each)
    deterministic: bool = False  # torch.use_deterministic_algorithms + cudnn flags
    sync_bn: bool = False  # under torchrun: BatchNorm statistics synchronised across ranks

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(
                f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}"
            )
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be > 0 (or null), got {self.grad_clip}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"train.threads must be >= 1 (or null), got {self.threads}")
        if self.nan_policy not in NAN_POLICIES:
            raise ConfigError(f"train.nan_policy must be stop or skip, got {self.nan_policy!r}")
        if self.progress_every < 0:
            raise ConfigError(f"train.progress_every must be >= 0, got {self.progress_every}")
        if self.log_every < 1:
            raise ConfigError(f"train.log_every must be >= 1, got {self.log_every}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"train.amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(
                f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}"
            )
        if self.class_weights not in (None, "auto"):
            raise ConfigError(
                f"train.class_weights must be auto or null, got {self.class_weights!r}"
            )
        if self.accumulate_steps < 1:
            raise ConfigError(f"train.accumulate_steps must be >= 1, got {self.accumulate_steps}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in (0, 1) or null, got {self.ema_decay}")
        if self.average_last < 0:
            raise ConfigError(f"train.average_last must be >= 0, got {self.average_last}")
        if self.average_last and self.ema_decay is not None:
            raise ConfigError(
                "train.average_last and train.ema_decay each average the weights: set one"
            )
