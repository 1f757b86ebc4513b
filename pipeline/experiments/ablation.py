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
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import MODES, RESERVED_KEYS, AblationConfig, override_key
from pipeline.errors import ConfigError

BASELINE = "baseline"
# How a child runs, not what it computes: left out of its identity, so a summarising rerun
# without e.g. train.threads=1 still counts the children a parallel sweep trained.
RUNTIME_KEYS = ("train.threads", "train.progress", "data.num_workers", "data.eval_batch_size")


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


def plan_children(cfg: AblationConfig, passthrough: Sequence[str] = ()) -> list[Child]:
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
