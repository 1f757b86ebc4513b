"""Odd and broken image files: converted to RGB, or skipped, counted and listed."""

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.data import (
    DataConfig,
    ImageDataset,
    ImageSet,
    build_splits,
    check_decodes,
    drop_unreadable,
    read_rgb,
)
from pipeline.errors import DataError
from pipeline.stages import run_train
from tests.conftest import write_image_folder


def _photo(size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def write_odd_images(folder):
    """One file per awkward case; returns {case: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    grey = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
    paths["grey"] = folder / "grey.png"
    Image.fromarray(grey, "L").save(paths["grey"])
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 128  # half-transparent red
    paths["rgba"] = folder / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(paths["rgba"])
    paths["png16"] = folder / "deep.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(paths["png16"])
    paths["float"] = folder / "float.tif"  # a float TIFF in [0, 1] (mode F)
    floats = grey.astype(np.float32) / 255
    floats[5, 5] = np.nan  # a no-data pixel must not blacken the image
    Image.fromarray(floats, "F").save(paths["float"])
    paths["gif"] = folder / "anim.gif"
    frames = [_photo().convert("P"), _photo().convert("P")]
    frames[0].save(paths["gif"], save_all=True, append_images=frames[1:])
    paths["unicode"] = folder / "fourmi é ü 蜂 .jpg"
    _photo().save(paths["unicode"], quality=90)
    return paths


def write_broken_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    full = folder / "full.jpg"
    _photo((200, 150)).save(full, quality=95)
    data = full.read_bytes()
    full.unlink()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"not an image at all" * 10)
    return {"truncated": truncated, "garbage": garbage}


def test_odd_formats_decode_to_uint8_rgb(tmp_path):
    paths = write_odd_images(tmp_path)
    for case, path in paths.items():
        check_decodes(str(path))
        image = read_rgb(str(path))
        assert image.dtype == np.uint8 and image.shape == (30, 40, 3), case
    assert read_rgb(str(paths["png16"]))[0, -1].tolist() == [255, 255, 255]  # 16 bit scaled
    assert read_rgb(str(paths["float"]))[0, -1].tolist() == [255, 255, 255]  # was all black
    grey = read_rgb(str(paths["grey"]))
    assert (grey[..., 0] == grey[..., 2]).all()
    r, g, b = read_rgb(str(paths["rgba"]))[0, 0]  # composited on white
    assert r == 255 and 120 <= g <= 135 and g == b


def test_truncated_jpeg_passes_verify_but_not_the_decode_check(tmp_path):
    truncated = write_broken_images(tmp_path)["truncated"]
    with Image.open(truncated) as img:
        img.verify()  # headers only: does not notice
    with pytest.raises(OSError, match="truncated"):
        check_decodes(str(truncated))


def test_bad_files_are_skipped_and_listed_or_fail_with_error(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("ant", "bee"), per_class=6)
    odd = write_odd_images(root / "ant")
    broken = write_broken_images(root / "bee")
    splits = build_splits(DataConfig(name="folder", root=str(root)), seed=0)
    assert sorted(splits.skipped) == sorted(str(p) for p in broken.values())
    kept = set(splits.train.items) | set(splits.val.items) | set(splits.test.items)
    assert len(kept) == 6 + len(odd) + 6 and {str(p) for p in odd.values()} <= kept
    dataset = ImageDataset(splits.train, lambda image: {"image": image.copy()})
    for i in range(len(dataset)):
        assert dataset[i][0].shape[-1] == 3

    strict = DataConfig(name="folder", root=str(root), on_bad_image="error")
    with pytest.raises(DataError, match=r"unreadable image: .*(truncated\.jpg|garbage\.png)"):
        build_splits(strict, seed=0)


def test_run_logs_skipped_count_list_and_class_counts(tiny_cfg, mlflow_uri, tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("ant", "bee", "wasp"), per_class=8)
    broken = write_broken_images(root / "bee")
    cfg = tiny_cfg(
        "data=folder",
        f"data.root={root}",
        "data.sampler=weighted",
        "train.class_weights=auto",
        "augment=strong",
        "augment.mixup_alpha=0.2",
        "augment.cutmix_alpha=1.0",
        "train.label_smoothing=0.1",
    )
    out = tmp_path / "out"
    result = run_train(cfg, out)
    run = MlflowClient(mlflow_uri).get_run(result.run_id)
    assert run.data.metrics["data/skipped"] == 2
    assert sorted((out / "skipped.txt").read_text().splitlines()) == sorted(
        str(p) for p in broken.values()
    )
    artifacts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(result.run_id)}
    assert {"skipped.txt", "class_counts.json"} <= artifacts
    assert run.data.params["data.class_counts.test"] == '{"ant": 2, "bee": 2, "wasp": 2}'
    assert run.data.params["train.class_weights"] == "auto"
    assert 0 <= result.test_metrics["test/acc"] <= 1


def test_a_set_with_no_decodable_image_fails_in_one_line(tmp_path):
    broken = write_broken_images(tmp_path)
    images = ImageSet([str(p) for p in broken.values()], np.array([0, 0]), ["a"])
    with pytest.raises(DataError, match="none of 2 image"):
        drop_unreadable(images, "skip")
