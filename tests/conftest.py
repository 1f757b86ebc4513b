"""Shared fixtures: tiny images, tiny models, a throwaway MLflow store. All offline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.compose import compose
from pipeline.config import RunConfig

SHARED_ANTS_BEES = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"

# Tests must never wait on a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """One SQLite store for the session: creating its tables takes seconds, so share it."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"


def tiny_overrides(mlflow_uri: str, tmp_path: Path) -> list[str]:
    """A fast, offline run: timm's 100k-parameter test net at 32 px, one epoch."""
    return [
        "backbone.name=test_efficientnet",
        "backbone.pretrained=false",
        "backbone.img_size=32",
        "train.epochs=1",
        "train.device=cpu",  # exact comparisons hold on CPU; CUDA has its own `gpu` tests
        "train.threads=2",
        "data.num_workers=0",
        f"tracking.uri={mlflow_uri}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
        # Never .cache/ in the repo: each test its own feature cache, empty at first.
        f"data.feature_cache={tmp_path / 'feature_cache'}",
        "tracking.experiment=tests",
        # Seconds per run that only tests/test_run_logging.py (which turns them on) checks.
        "tracking.log_model=false",
        "tracking.system_metrics=false",
    ]


@pytest.fixture
def tiny_cfg(mlflow_uri, tmp_path):
    def make(*extra: str) -> RunConfig:
        return compose([*tiny_overrides(mlflow_uri, tmp_path), *extra])

    return make


def write_image_folder(
    root: Path, classes=("circle", "square", "stripe"), per_class=8, size=24
) -> Path:
    """root/<class>/*.png with class-specific patterns a tiny net can tell apart."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            if c % 3 == 0:
                mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
            elif c % 3 == 1:
                mask = (abs(yy - size / 2) < size / 4) & (abs(xx - size / 2) < size / 4)
            else:
                mask = (xx // 3) % 2 == 0
            img = np.where(mask[..., None], 220, 30).astype(np.uint8).repeat(3, axis=-1)
            img = np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(
                np.uint8
            )
            Image.fromarray(img).save(root / name / f"img {i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_image_folder(tmp_path / "images")
