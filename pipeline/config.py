"""The typed run config: one dataclass per Hydra config group.

The entry point turns Hydra's DictConfig into a `RunConfig` once; everything below it takes
plain typed objects. Unknown keys and bad values fail here, before any work, with one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.config import AugmentConfig, DataConfig
from pipeline.errors import ConfigError
from pipeline.evaluation.config import BaselineConfig, EvalConfig, VisualizeConfig
from pipeline.evaluation.health.config import InspectConfig
from pipeline.models.config import BackboneConfig, HeadConfig
from pipeline.tracking.config import TrackingConfig
from pipeline.tracking.credentials import take_credentials
from pipeline.training.config import (
    FinetuneConfig,
    LRFindConfig,
    OptimConfig,
    SchedConfig,
    TrainConfig,
    check_cache_features,
    check_unfreezes,
)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
STAGES = (
    "train",
    "download",
    "evaluate",
    "predict",
    "export",
    "visualize",
    "lr_find",
    "ablate",
    "search",
    "baseline",
    "compare",
    "inspect",
    "screen",
)
EXPORT_FORMATS = ("onnx", "torchscript")
# The RunConfig fields a training run uses, logged as its params (`tracking.params`); the
# other stages' sections (lr_find, eval, ablation, ...) stay out of its runs-table row.
TRAINING_GROUPS = (
    "seed",
    "data",
    "augment",
    "backbone",
    "head",
    "finetune",
    "optim",
    "sched",
    "train",
    "tracking",
)


# --- settings of the experiment groups (conf/ablation, conf/hparams_search) -----------
# Here rather than in pipeline/experiments/, which runs them: RunConfig holds them, and
# experiments/ sits above this module.

MODES = {"leave_one_out": "no_", "add_one_in": "with_"}


# Overrides the plan sets itself (or that would escape it), never per component or from the CLI.
RESERVED_KEYS = ("stage", "seed", "ablation", "hparams_search", "search")


_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass
class AblationConfig:
    name: str = ""  # the parent run's identity: rerunning the same name resumes it
    mode: str = "leave_one_out"  # leave_one_out | add_one_in
    baseline: list[str] = field(default_factory=list)  # overrides for the full/bare baseline
    components: dict[str, list[str]] = field(default_factory=dict)  # name -> overrides
    seeds: int = 3  # runs per variant, seeds first_seed .. first_seed + seeds - 1
    first_seed: int = 0
    metric: str = "test/acc"  # what the deltas, paired tests and chart compare
    bootstrap: int = 10000  # resamples for ablation.csv's bootstrap CI (from 5 seeds on)
    # Narrow this process to one variant and/or seed: one job of a Hydra multirun.
    only_variant: str | None = None
    only_seed: int | None = None
    # Compose every child, find or create the parent, print the plan, train nothing: checks an
    # ablation, and sets up the store and parent before parallel jobs race to create them.
    dry_run: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]*", self.name):  # it goes into MLflow filters
            raise ConfigError(f"ablation.name={self.name!r} may use only letters, digits, _ . -")
        if self.mode not in MODES:
            raise ConfigError(f"ablation.mode={self.mode!r} is not one of: {', '.join(MODES)}")
        if self.seeds < 1:
            raise ConfigError(f"ablation.seeds must be >= 1, got {self.seeds}")
        if self.bootstrap < 1:
            raise ConfigError(f"ablation.bootstrap must be >= 1, got {self.bootstrap}")
        for name, overrides in self.components.items():
            if not _NAME.match(name):
                raise ConfigError(f"ablation component name {name!r} must match [A-Za-z0-9_]+")
            if isinstance(overrides, str):
                overrides = [overrides]
            if not overrides or not all(isinstance(o, str) and "=" in o for o in overrides):
                raise ConfigError(
                    f"ablation.components.{name} must be a list of overrides like "
                    f"[augment=none], got {overrides!r}"
                )
            self.components[name] = list(overrides)
        # Children log where the parent logs, so tracking.* is the ablation's, not a variant's.
        for override in [*self.baseline, *(o for v in self.components.values() for o in v)]:
            if override_key(override).split(".")[0] in (*RESERVED_KEYS, "tracking"):
                raise ConfigError(
                    f"ablation override {override!r} sets a key the ablation controls "
                    f"({', '.join(RESERVED_KEYS)}, tracking)"
                )

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))

    @property
    def narrowed(self) -> bool:
        return self.only_variant is not None or self.only_seed is not None


def override_key(override: str) -> str:
    """'+head.dropout=0.1' -> 'head.dropout'; 'augment=none' -> 'augment'."""
    return override.split("=", 1)[0].lstrip("+~")


@dataclass
class SearchConfig:
    study: str = "search"  # the parent run's name: trials of one study nest under it
    metric: str = "val/acc"  # any per-epoch metric: val/acc, val/loss, ...
    direction: str = "maximize"  # maximize | minimize; hparams_search passes it to the sweeper

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.study):  # it goes into MLflow filters
            raise ConfigError(f"search.study={self.study!r} may use only letters, digits, _ . -")
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(
                f"search.direction must be maximize or minimize, got {self.direction!r}"
            )

    def better(self, value: float, best: float | None) -> bool:
        if best is None or best != best:
            return True
        return value > best if self.direction == "maximize" else value < best


@dataclass
class CompareConfig:
    """stage=compare, and what a sweep's parent compares when the sweep ends."""

    parent: str = ""  # stage=compare: the parent run's id or name (an ablation, a sweep)
    metric: str = ""  # what is compared; "" = an ablation's ablation.metric, else test/acc
    baseline: str = ""  # the variant the others pair with by seed; an ablation's: baseline


@dataclass
class ScreenConfig:
    """stage=screen: rank backbones by a cross-validated linear probe on frozen features."""

    # Entries: a conf/backbone option or timm name; `name@scratch` for random init (only
    # when asked), `name@/path/weights.pth` for a local file. []: every backbone in
    # conf/backbone/ (and backbone.name) whose weights are here, packaged or cached.
    backbones: list[str] = field(default_factory=list)
    folds: int = 5  # stratified folds over train+val (the test split is never read)
    img_size: int | None = None  # None: backbone.img_size (digits: 64), else each one's own

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ConfigError(f"screen.folds must be >= 2, got {self.folds}")
        if self.img_size is not None and self.img_size < 8:
            raise ConfigError(f"screen.img_size must be >= 8, got {self.img_size}")
        for entry in self.backbones:
            if not isinstance(entry, str) or not entry.split("@", 1)[0]:
                raise ConfigError(
                    f"screen.backbones entries are backbone names (name, name@scratch, "
                    f"name@/path/to/weights), got {entry!r}"
                )
        self.backbones = list(self.backbones)


# --- the whole run -------------------------------------------------------------------


def not_one_of(key: str, value: str, choices: tuple[str, ...]) -> ConfigError:
    """`stage='evalute' is not one of: ...; did you mean evaluate?`"""
    close = difflib.get_close_matches(value, choices, n=2, cutoff=0.7)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{key}={value!r} is not one of: {', '.join(choices)}{hint}")


@dataclass
class RunConfig:
    stage: str = "train"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # After training: which trained model (a run id, or a local checkpoint) and what to do.
    run_id: str | None = None
    checkpoint: str | None = None
    input: str | None = None  # stage=predict (file or folder), stage=visualize (one image)
    format: str = "onnx"  # stage=export: onnx | torchscript
    eval: EvalConfig = field(default_factory=EvalConfig)
    visualize: VisualizeConfig = field(default_factory=VisualizeConfig)
    lr_find: LRFindConfig = field(default_factory=LRFindConfig)
    inspect: InspectConfig = field(default_factory=InspectConfig)  # stage=inspect
    ablation: AblationConfig = field(default_factory=AblationConfig)  # stage=ablate only
    search: SearchConfig = field(default_factory=SearchConfig)  # stage=search only
    baseline: BaselineConfig = field(default_factory=BaselineConfig)  # stage=baseline
    compare: CompareConfig = field(default_factory=CompareConfig)  # stage=compare, sweeps
    screen: ScreenConfig = field(default_factory=ScreenConfig)  # stage=screen only

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise not_one_of("stage", self.stage, STAGES)
        if self.format not in EXPORT_FORMATS:
            raise not_one_of("format", self.format, EXPORT_FORMATS)
        if not 0 <= self.seed < 2**32:  # numpy's seed range
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.data.kfold and self.data.fold is None and self.train.resume:
            raise ConfigError(
                "train.resume resumes one run, and data.kfold runs one per fold: resume a "
                "fold's run with data.fold=I train.resume=<that fold's run id>"
            )
        if self.stage in ("train", "search"):  # not a trained run's config read back
            check_unfreezes(self.finetune, self.train.epochs)
        check_cache_features(
            self.train.cache_features,
            self.finetune.strategy,
            self.augment.preset,
            mixing=self.augment.mixup_alpha > 0 or self.augment.cutmix_alpha > 0,
            erasing=self.augment.random_erasing > 0,
            sampler=self.data.sampler,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: Any, path: str) -> Any:
    """Instantiate dataclass `cls` from a plain dict, recursing into dataclass-typed fields."""
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]} (known: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        key = f"{path}.{name}" if path else name
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            value = _build(hint, value, key)
        else:
            value = _check_type(value, hint, key)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad value in {path or 'config'}: {exc}") from exc


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Reject e.g. optim.lr=abc with one line; ints are accepted where floats are expected."""
    options = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{key} must not be null")
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # nan slips through every `x <= 0` style check
                raise ConfigError(f"{key} must be a finite number, got {value}")
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (bool, str) and isinstance(value, origin):
            return value
        if origin in (tuple, list, dict) and isinstance(value, list | tuple | dict):
            return value
    names = ", ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{key}={value!r} has the wrong type (expected {names})")


def run_config_from_dict(values: dict[str, Any]) -> RunConfig:
    values = {k: v for k, v in values.items() if k not in ("hydra", "experiment", "hparams_search")}
    cfg = _build(RunConfig, values, "")
    # Before anything logs or saves the config: a password in tracking.uri goes to MLflow's
    # own environment variables, and the config keeps the bare URI.
    cfg.tracking = take_credentials(cfg.tracking)
    return cfg
