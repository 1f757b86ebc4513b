"""data.feature_cache: frozen-backbone features stored per image on disk, read back by every
stage that needs them (inspect, baseline's probe, screen, train.cache_features)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.commands.baseline import run_baseline
from pipeline.commands.inspect import run_inspect
from pipeline.commands.train import run_train
from pipeline.data.sources import ImageSet, scan_class_folders
from pipeline.data.splits import run_splits
from pipeline.models.backbone import create_backbone
from pipeline.training.feature_cache import cached_image_features
from tests.conftest import write_image_folder


def _backbone(tiny_cfg):
    cfg = tiny_cfg()
    backbone, spec, _ = create_backbone(cfg.backbone)
    calls = []
    backbone.register_forward_hook(lambda *_: calls.append(1))
    return backbone, spec, calls


def _features(cache: Path, backbone, spec, images: ImageSet):
    return cached_image_features(cache, backbone, spec, images, 8, 0, torch.device("cpu"))


def test_features_are_computed_once_and_any_subset_is_read_back(tiny_cfg, tmp_path, caplog):
    images, _ = scan_class_folders(write_image_folder(tmp_path / "images", per_class=4))
    backbone, spec, calls = _backbone(tiny_cfg)
    cache = tmp_path / "cache"

    first = _features(cache, backbone, spec, images)
    assert first.from_cache == 0 and calls  # computed: the backbone ran
    assert first.path is not None and first.path.parent == cache and first.path.is_file()
    calls.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.training.feature_cache"):
        again = _features(cache, backbone, spec, images)
    assert again.from_cache == len(images) == 12 and not calls  # no forward pass at all
    assert torch.equal(again.features, first.features)
    assert f"features: 12 of 12 from the cache {first.path}" in caplog.text

    part = _features(cache, backbone, spec, images.subset(np.array([7, 2, 11])))
    assert part.from_cache == 3 and not calls
    assert torch.equal(part.features, first.features[[7, 2, 11]])

    # A touched file (new mtime) is computed again, alone; the rest still hits.
    path = images.items[5]
    assert isinstance(path, str)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = _features(cache, backbone, spec, images)
    assert touched.from_cache == 11 and len(calls) == 1  # one batch: the one image
    assert torch.allclose(touched.features, first.features, atol=1e-6)

    # Other weights are another namespace: nothing hits, and the first file stays.
    calls.clear()
    with torch.no_grad():
        next(backbone.parameters()).add_(0.1)
    changed = _features(cache, backbone, spec, images)
    assert changed.from_cache == 0 and calls and changed.path != first.path
    assert not torch.allclose(changed.features, first.features)
    assert len(list(cache.glob("*.pt"))) == 2


def test_in_memory_images_are_keyed_by_their_pixels(tiny_cfg, tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    images = ImageSet(arrays, np.zeros(6, dtype=np.int64), ["a"])
    backbone, spec, calls = _backbone(tiny_cfg)
    cache = tmp_path / "cache"
    first = _features(cache, backbone, spec, images)
    edited = [a.copy() for a in arrays]
    edited[3][0, 0, 0] ^= 1  # one pixel off
    calls.clear()
    again = _features(cache, backbone, spec, ImageSet(edited, images.labels, ["a"]))
    assert first.from_cache == 0 and again.from_cache == 5 and len(calls) == 1
    assert torch.equal(again.features[:3], first.features[:3])


def test_a_corrupt_cache_file_is_ignored_with_a_warning_and_rewritten(tiny_cfg, tmp_path, caplog):
    images, _ = scan_class_folders(write_image_folder(tmp_path / "images", per_class=2))
    backbone, spec, calls = _backbone(tiny_cfg)
    cache = tmp_path / "cache"
    path = _features(cache, backbone, spec, images).path
    assert path is not None
    path.write_bytes(b"\x00garbage, not a torch file")
    calls.clear()
    with caplog.at_level(logging.WARNING):
        rebuilt = _features(cache, backbone, spec, images)
    assert rebuilt.from_cache == 0 and calls
    assert f"ignoring unreadable feature cache {path}" in caplog.text
    assert _features(cache, backbone, spec, images).from_cache == len(images)  # rewritten
    assert not list(cache.glob(".*.tmp"))  # no temporary file left behind


def test_a_cache_that_cannot_be_written_only_warns(tiny_cfg, tmp_path, caplog):
    images, _ = scan_class_folders(write_image_folder(tmp_path / "images", per_class=2))
    backbone, spec, _ = _backbone(tiny_cfg)
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING):
        result = _features(blocked, backbone, spec, images)
    assert result.from_cache == 0 and len(result.features) == len(images) == 6
    assert f"feature cache not saved to {blocked}" in caplog.text


def test_the_cache_off_computes_everything_and_writes_nothing(tiny_cfg, tmp_path):
    images, _ = scan_class_folders(write_image_folder(tmp_path / "images", per_class=2))
    backbone, spec, _ = _backbone(tiny_cfg)
    result = cached_image_features(None, backbone, spec, images, 8, 0, torch.device("cpu"))
    assert result.from_cache == 0 and result.path is None and len(result.features) == 6


@pytest.mark.slow  # three stages: an inspect (cleanlab's import), a baseline, a training run
def test_baseline_and_train_read_the_features_inspect_computed(
    tiny_cfg, mlflow_uri, tmp_path, image_folder
):
    # Pretrained weights from a file, as in real use: every stage builds the same backbone.
    weights = tmp_path / "weights.pth"
    net, _, _ = create_backbone(tiny_cfg().backbone)
    torch.save(net.state_dict(), weights)
    common = (
        "data=folder",
        f"data.root={image_folder}",
        "backbone.pretrained=true",
        f"backbone.weights={weights}",
    )
    client = MlflowClient(mlflow_uri)
    inspect_cfg = tiny_cfg("stage=inspect", *common, "tracking.experiment=fcache")
    findings = run_inspect(inspect_cfg, tmp_path / "inspect")
    assert findings.features_cached == 0
    runs = client.search_runs(
        [client.get_experiment_by_name("fcache").experiment_id], "tags.stage = 'inspect'"
    )
    assert runs[0].data.params["features.cached"] == "0"

    cfg = tiny_cfg("stage=baseline", *common, "baseline.kinds=[probe]")
    [probe] = run_baseline(cfg, tmp_path / "baseline")
    total = len(findings.refs)  # train + val + test
    assert client.get_run(probe.run_id).data.params["features.cached"] == str(total)

    splits = run_splits(cfg.data, cfg.seed)
    cached = run_train(
        tiny_cfg(*common, "finetune=frozen", "augment=none", "train.cache_features=true"),
        tmp_path / "train",
    )
    params = client.get_run(cached.run_id).data.params
    assert params["features.cached"] == str(len(splits.train) + len(splits.val))
    assert params["data.feature_cache"] == str(tmp_path / "feature_cache")


def test_inspect_baseline_and_auto_key_the_cache_with_the_same_crop(
    tiny_cfg, tmp_path, monkeypatch
):
    """augment.crop_pct changes the pixels: stage=inspect once ignored it, so its features
    were keyed (and computed) unlike baseline's and train's for the same config."""
    import pipeline.commands.baseline as baseline
    import pipeline.commands.finetune_auto as finetune_auto
    import pipeline.commands.frozen_features as frozen
    import pipeline.commands.inspect as inspect
    from pipeline.training.distributed import DistInfo

    crops = []

    def recording(cache_dir, backbone, spec, images, *args):
        crops.append(args[-1])  # crop_pct, the last positional argument
        return cached_image_features(cache_dir, backbone, spec, images, *args)

    monkeypatch.setattr(frozen, "cached_image_features", recording)
    root = write_image_folder(tmp_path / "images")
    cfg = tiny_cfg("data=folder", f"data.root={root}", "augment.crop_pct=0.8")
    splits = run_splits(cfg.data, cfg.seed)
    inspect._backbone_features(cfg, splits)
    baseline._probe(cfg, splits)
    finetune_auto.resolve_auto(cfg, splits, torch.device("cpu"), DistInfo())
    assert crops == [0.8] * len(crops) and len(crops) == 1 + 1 + 1  # inspect, baseline, auto
