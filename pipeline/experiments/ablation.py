"""Ablation plans: which (variant, seed) runs answer "which component mattered?".

An ablation names a baseline (a list of Hydra overrides) and components, each a list of
overrides that toggles one thing. `leave_one_out` starts from the full baseline and removes
one component per variant (`no_<name>`); `add_one_in` starts from a bare baseline and adds
one (`with_<name>`). Every variant runs for the same seeds, and a seed fixes both the data
split and the initialisation, so variant and baseline runs pair up seed by seed.

Pure planning only: running and tracking live in `pipeline/commands/ablate.py`, statistics in
`pipeline/experiments/compare.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from pipeline.errors import ConfigError

MODES = {"leave_one_out": "no_", "add_one_in": "with_"}
BASELINE = "baseline"
# Overrides the plan sets itself (or that would escape it), never per component or from the CLI.
RESERVED_KEYS = ("stage", "seed", "ablation", "hparams_search", "search")
# How a child runs, not what it computes: left out of its identity, so a summarising rerun
# without e.g. train.threads=1 still counts the children a parallel sweep trained.
RUNTIME_KEYS = ("train.threads", "train.progress", "data.num_workers", "data.eval_batch_size")
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


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]  # on top of the baseline


@dataclass(frozen=True)
class Child:
    """One (variant, seed) run and the exact overrides that compose its config."""

    variant: str
    seed: int
    overrides: tuple[str, ...]

    @property
    def sha(self) -> str:
        """Identity for resume: a child only counts as done if it ran these overrides."""
        return overrides_sha([o for o in self.overrides if override_key(o) not in RUNTIME_KEYS])


def override_key(override: str) -> str:
    """'+head.dropout=0.1' -> 'head.dropout'; 'augment=none' -> 'augment'."""
    return override.split("=", 1)[0].lstrip("+~")


def overrides_sha(overrides: tuple[str, ...] | list[str]) -> str:
    return hashlib.sha1(json.dumps(list(overrides)).encode()).hexdigest()[:12]


def passthrough_overrides(cli_overrides: list[str]) -> list[str]:
    """The command line's overrides that apply to every child (e.g. train.threads=2).

    Drops what the ablation sets itself, and tracking.*: children log where the parent logs."""
    keep = []
    for override in cli_overrides:
        key = override_key(override)
        if key.split(".")[0] in (*RESERVED_KEYS, "tracking") or key.startswith("hydra"):
            continue
        keep.append(override)
    return keep


def build_variants(cfg: AblationConfig) -> list[Variant]:
    if not cfg.components:
        raise ConfigError(
            "stage=ablate needs an ablation with components: pick one with ablation=<name> "
            "(see conf/ablation/)"
        )
    prefix = MODES[cfg.mode]
    return [Variant(BASELINE, ())] + [
        Variant(prefix + name, tuple(overrides)) for name, overrides in cfg.components.items()
    ]


def plan_children(cfg: AblationConfig, passthrough: list[str] = ()) -> list[Child]:
    """Every (variant, seed) child in run order: seed-major, so an interrupted ablation
    already has complete seeds for every variant to compare."""
    variants = build_variants(cfg)
    names = [v.name for v in variants]
    if cfg.only_variant is not None and cfg.only_variant not in names:
        raise ConfigError(
            f"ablation.only_variant={cfg.only_variant!r} is not one of: {', '.join(names)}"
        )
    if cfg.only_seed is not None and cfg.only_seed not in cfg.seed_list:
        raise ConfigError(
            f"ablation.only_seed={cfg.only_seed} is not one of the seeds {cfg.seed_list}"
        )
    children = []
    for seed in cfg.seed_list:
        for variant in variants:
            if cfg.only_variant not in (None, variant.name) or cfg.only_seed not in (None, seed):
                continue
            overrides = (*cfg.baseline, *passthrough, *variant.overrides, f"seed={seed}")
            children.append(Child(variant.name, seed, overrides))
    return children
