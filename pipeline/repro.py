"""Seeding, determinism and run provenance, so a run is repeatable from its logged config.

The training data's randomness (shuffle order, augmentations, mixup/cutmix) is a function of
(seed, epoch) alone: see `epoch_seed`, `pipeline.data.loader.EpochSampler` and
`pipeline.data.mix.MixBatch.set_epoch`. It needs no saved state, so a resumed run, a run with
another number of loader workers and each DDP rank all draw what they should.
`rng_state` / `load_rng_state` capture the rest (python, numpy, torch, CUDA: dropout, say),
which is what makes a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

import os
import platform
import random
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Packages whose versions change results; logged as run tags `version.<name>`.
TRACKED_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "albumentations",
    "mlflow",
    "hydra-core",
    "numpy",
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (slower; an op without a deterministic version then raises).

    Set both ways, so one deterministic run does not leak into the next in the same process."""
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        # cuBLAS needs a fixed workspace for reproducible GEMMs; read before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False  # autotuning may pick different kernels


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for one epoch of one run. Mixed through numpy's SeedSequence, so nearby
    (seed, epoch) pairs are unrelated: seed + epoch would give seed 1's epoch 0 the shuffle
    of seed 0's epoch 1, and a several-seed ablation would share its epochs."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


# --- albumentations' own generators -------------------------------------------------------


def seed_transform(transform: Any, seed: int) -> None:
    """Give an albumentations Compose one seeded (numpy, python) generator pair, shared by all
    its transforms, so its augmentations repeat."""
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


# --- capture and restore ---------------------------------------------------------------------


def rng_state() -> dict:
    """The process-wide random states (weights_only-loadable)."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {**np_state["state"], "key": np_state["state"]["key"].tolist()}
    return {
        "python": random.getstate(),
        "numpy": np_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def load_rng_state(state: dict) -> None:
    """Checkpoints from before the data's randomness came from (seed, epoch) also hold
    "loader" and "augment" states: nothing draws from those any more."""
    random.setstate(_as_tuple(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {
        **np_state["state"],
        "key": np.asarray(np_state["state"]["key"], np.uint32),
    }
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # The saving job may have seen more GPUs than this one (8-GPU node -> 1 GPU).
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def _as_tuple(value: Any) -> Any:
    """random.setstate wants tuples all the way down; a checkpoint round trip may give lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


# --- provenance ---------------------------------------------------------------------------------


def git_commit(path: Path | None = None) -> str:
    """HEAD of the checkout this code runs from, with `-dirty` for uncommitted changes."""
    cwd = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_tags() -> dict[str, str]:
    """Code version, package versions and hardware, for `run.set_tags`."""
    tags = {"git.commit": git_commit(), "version.python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            tags[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            tags[f"version.{name}"] = "not installed"
    tags["version.torch"] = torch.__version__  # with the build, e.g. +cu124 or +cpu
    tags["hw.platform"] = platform.platform()
    tags["hw.cpu"] = _cpu_model()
    tags["hw.cpu_count"] = str(os.cpu_count())
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    tags["hw.gpu_count"] = str(gpus)
    if gpus:
        tags["hw.gpu"] = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(gpus)}))
        tags["version.cuda"] = str(torch.version.cuda)
    return tags
