"""Settings of training (conf/train, finetune, optim, sched, lr_find): the dataclasses and the
checks that span sections. Torch-free, so that the run config loads without torch; the code
that uses them (finetune.py, optim.py, sched.py, lr_find.py, features.py) re-exports them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.errors import ConfigError

NAN_POLICIES = ("stop", "skip")  # train.nan_policy (guards.py)
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


# --- conf/finetune: how strategies unfreeze is in finetune.py --------------------------

# auto: stage=train picks one of the others from the data (pipeline/training/auto.py)
STRATEGIES = ("frozen", "full", "partial", "gradual", "linear_then_full", "auto")
BN_POLICIES = ("train", "eval")


@dataclass
class FinetuneConfig:
    strategy: str = "full"  # frozen | full | partial | gradual | linear_then_full | auto
    train_last_n: int = 1  # partial: how many backbone stages (from the top) train
    unfreeze_every: int = 1  # gradual: epochs between unfreezing one more stage
    head_epochs: int = 1  # linear_then_full: epochs that train the head only
    full_lr_mult: float = 0.1  # linear_then_full: LR multiplier once everything trains
    # BatchNorm of unfrozen backbone layers: train (batch statistics, running stats move) or
    # eval (ImageNet's running stats kept, as Keras does after unfreezing: a batch of a few
    # dozen images is a noisy stand-in for them). Frozen layers' BN is always eval.
    bn: str = "train"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"finetune.strategy={self.strategy!r} is not one of: {', '.join(STRATEGIES)}"
            )
        for key in ("train_last_n", "unfreeze_every", "head_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"finetune.{key} must be >= 1, got {getattr(self, key)}")
        if self.bn not in BN_POLICIES:
            raise ConfigError(f"finetune.bn={self.bn!r} is not one of: {', '.join(BN_POLICIES)}")
        if not 0 < self.full_lr_mult <= 1:
            raise ConfigError(f"finetune.full_lr_mult must be in (0, 1], got {self.full_lr_mult}")


def check_unfreezes(cfg: FinetuneConfig, epochs: int) -> None:
    """linear_then_full that never reaches its full phase is finetune=frozen under another name."""
    if cfg.strategy == "linear_then_full" and cfg.head_epochs >= epochs:
        raise ConfigError(
            f"finetune.head_epochs={cfg.head_epochs} >= train.epochs={epochs}: linear_then_full "
            "would train the head only, as finetune=frozen does; raise train.epochs or lower "
            "finetune.head_epochs"
        )


# --- conf/optim, conf/sched, conf/lr_find ---------------------------------------------

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")


@dataclass
class OptimConfig:
    name: str = "adamw"  # sgd | adam | adamw | rmsprop | adagrad
    lr: float = 1e-3  # head learning rate; backbone gets lr * backbone_lr_mult
    weight_decay: float = 0.05  # L2 (decoupled for adamw); never applied to norms and biases
    momentum: float = 0.9  # sgd, rmsprop
    nesterov: bool = True  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    backbone_lr_mult: float = 1.0  # discriminative LR: < 1 keeps pretrained features closer
    layer_decay: float = 1.0  # < 1: a backbone stage d stages below the head gets lr * decay**d
    # L1 penalty: l1 * sum |w| over the trainable weights weight decay applies to (not norms
    # and biases), added to the loss each step; it drives small weights to exactly zero.
    l1: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name={self.name!r} is not one of: {', '.join(OPTIMIZERS)}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.l1 < 0:
            raise ConfigError(f"optim.l1 must be >= 0, got {self.l1}")
        if self.backbone_lr_mult < 0:
            raise ConfigError(f"optim.backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"optim.layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two values in [0, 1), got {list(self.betas)}")
        self.betas = (self.betas[0], self.betas[1])  # Hydra passes a list


SCHEDULES = ("constant", "cosine", "step", "exponential", "plateau", "onecycle")


@dataclass
class SchedConfig:
    name: str = "cosine"  # constant | cosine | step | exponential | plateau | onecycle
    warmup_epochs: float = 1.0  # linear ramp from 0; plateau, onecycle: 0 (no warmup)
    min_lr_ratio: float = 0.01  # cosine floor, as a fraction of the peak LR
    step_epochs: int = 10  # step: decay every N epochs
    gamma: float = 0.1  # step: factor per step; exponential: factor per epoch
    plateau_patience: int = 2  # plateau: epochs without val/loss improvement before decay
    plateau_factor: float = 0.1
    # onecycle (torch's OneCycleLR, cosine): from peak/div_factor up to the peak (optim.lr)
    # over the first pct_start of all steps, then down to peak/div_factor/final_div_factor.
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ConfigError(f"sched.name={self.name!r} is not one of: {', '.join(SCHEDULES)}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"sched.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.name == "plateau" and self.warmup_epochs:
            raise ConfigError("sched.warmup_epochs is not supported with sched.name=plateau")
        if self.name == "onecycle" and self.warmup_epochs:
            raise ConfigError(
                "sched.warmup_epochs is not used with sched.name=onecycle: its rise is "
                "sched.pct_start (sched=onecycle sets sched.warmup_epochs=0)"
            )
        if not 0 < self.pct_start < 1:
            raise ConfigError(f"sched.pct_start must be in (0, 1), got {self.pct_start}")
        if self.div_factor < 1 or self.final_div_factor < 1:
            raise ConfigError("sched.div_factor and sched.final_div_factor must be >= 1")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"sched.gamma must be in (0, 1], got {self.gamma}")
        if self.step_epochs < 1:
            raise ConfigError(f"sched.step_epochs must be >= 1, got {self.step_epochs}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"sched.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.plateau_patience < 0:
            raise ConfigError(f"sched.plateau_patience must be >= 0, got {self.plateau_patience}")
        if not 0 < self.plateau_factor < 1:
            raise ConfigError(f"sched.plateau_factor must be in (0, 1), got {self.plateau_factor}")


@dataclass
class LRFindConfig:
    start_lr: float = 1e-7
    end_lr: float = 10.0
    steps: int = 100  # optimizer steps; the train loader is cycled if it is shorter
    smoothing: float = 0.05  # weight of each new loss in the exponential moving average
    diverge: float = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum

    def __post_init__(self) -> None:
        if not 0 < self.start_lr < self.end_lr:
            raise ConfigError("lr_find needs 0 < lr_find.start_lr < lr_find.end_lr")
        if self.steps < 5:
            raise ConfigError(f"lr_find.steps must be >= 5, got {self.steps}")
        if not 0 < self.smoothing <= 1:
            raise ConfigError(f"lr_find.smoothing must be in (0, 1], got {self.smoothing}")


def check_cache_features(
    cache_features: bool,
    strategy: str,
    augment_preset: str,
    world_size: int = 1,
    *,
    mixing: bool = False,
    erasing: bool = False,
    sampler: str = "shuffle",
) -> None:
    """Caching is exact only when the backbone and its input are the same every epoch."""
    if not cache_features:
        return
    if strategy != "frozen" or augment_preset != "none" or mixing or erasing:
        raise ConfigError(
            "train.cache_features=true needs finetune=frozen, augment=none and no mixup/cutmix "
            f"or random erasing (got finetune={strategy}, augment={augment_preset}"
            + (", augment.mixup_alpha/cutmix_alpha > 0" if mixing else "")
            + (", augment.random_erasing > 0" if erasing else "")
            + ")"
        )
    if sampler != "shuffle":
        raise ConfigError(
            f"train.cache_features=true shuffles uniformly: it cannot use data.sampler={sampler}"
        )
    if world_size > 1:
        # Every rank would extract and train on the whole set, unsynchronised: N times the
        # work for one head, which one process trains in seconds anyway.
        raise ConfigError(
            f"train.cache_features=true trains the head in one process, not {world_size}: "
            "run it without torchrun"
        )
