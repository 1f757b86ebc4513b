"""Odd and broken image files: converted to RGB, or skipped, counted and listed."""

import logging
import os

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.commands.train import run_train
from pipeline.data.config import DataConfig
from pipeline.data.decode import (
    cache_in_memory,
    check_decodes,
    drop_unreadable,
    read_images,
    read_rgb,
)
from pipeline.data.loader import ImageDataset
from pipeline.data.sources import ImageSet, list_images, scan_class_folders
from pipeline.data.splits import build_splits
from pipeline.errors import DataError
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
    assert sorted(path for path, _ in splits.skipped) == sorted(str(p) for p in broken.values())
    assert all(reason.startswith("unreadable: ") for _, reason in splits.skipped)
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
    lines = (out / "skipped.txt").read_text().splitlines()  # path<TAB>reason
    assert sorted(line.split("\t")[0] for line in lines) == sorted(str(p) for p in broken.values())
    assert all(line.split("\t")[1].startswith("unreadable: ") for line in lines)
    artifacts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(result.run_id)}
    assert {"skipped.txt", "class_counts.json"} <= artifacts
    assert run.data.params["data.class_counts.test"] == "ant=2,bee=2,wasp=2"
    assert run.data.params["train.class_weights"] == "auto"
    assert 0 <= result.test_metrics["test/acc"] <= 1


def test_a_set_with_no_decodable_image_fails_in_one_line(tmp_path):
    broken = write_broken_images(tmp_path)
    images = ImageSet([str(p) for p in broken.values()], np.array([0, 0]), ["a"])
    with pytest.raises(DataError, match="none of 2 image"):
        drop_unreadable(images, "skip")


def test_a_class_whose_images_are_all_unreadable_stops_the_run(tmp_path):
    # Skipping them all would train a classifier on a class it never sees.
    root = write_image_folder(tmp_path / "imgs", classes=("ant", "bee", "wasp"), per_class=6)
    for path in (root / "wasp").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"no readable images of class 'wasp': all 6 .*img 0\.png"):
        build_splits(DataConfig(name="folder", root=str(root)), seed=0)


def test_hidden_files_and_folders_are_left_out_and_broken_links_listed(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=("ant", "bee"), per_class=6)
    checkpoints = root / "ant" / ".ipynb_checkpoints"  # Jupyter's copies, not more data
    checkpoints.mkdir()
    _photo().save(checkpoints / "img 0-checkpoint.png")
    _photo().save(root / "bee" / "._img 0.png")  # macOS metadata beside a copied file
    outside = write_image_folder(tmp_path / "elsewhere", classes=("more",), per_class=2)
    os.symlink(outside / "more" / "img 0.png", root / "bee" / "linked.png")
    os.symlink(outside / "more", root / "bee" / "linked folder")
    os.symlink(tmp_path / "gone.png", root / "bee" / "broken.png")

    images, skipped = scan_class_folders(root)
    assert images.class_counts() == {"ant": 6, "bee": 6 + 1 + 2}  # links followed
    assert not any("/." in path for path in images.items)
    assert skipped == [
        (str(root / "bee" / "broken.png"), f"broken link to {tmp_path / 'gone.png'}")
    ]
    # predict lists its input folder the same way
    files, not_images = list_images(root)
    assert sorted(map(str, files)) == sorted(images.items)
    assert [(str(p), reason) for p, reason in not_images] == skipped


def _oriented_jpeg(path, orientation: int) -> np.ndarray:
    """A 64x32 JPEG (wide, red left half) tagged to be shown rotated; returns its raw pixels."""
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return pixels


def test_exif_orientation_is_applied_in_training_the_cache_and_predict(tmp_path):
    path = tmp_path / "phone.jpg"
    _oriented_jpeg(path, orientation=6)  # 6: turn 90 degrees clockwise to view
    upright = read_rgb(str(path))
    assert upright.shape == (64, 32, 3)  # tall now
    assert upright[2, 16, 0] > 200 and upright[-3, 16, 2] > 200  # red on top, blue below
    assert read_rgb(str(path), min_size=16).shape == (32, 16, 3)  # draft decode at 1/2 scale
    cached = cache_in_memory(ImageSet([str(path)], np.array([0]), ["a"]), decode_size=16)
    assert np.array_equal(cached.items[0], read_rgb(str(path), 16))
    [(_, predicted)], _ = read_images([path], decode_size=None)
    assert np.array_equal(predicted, upright)


def test_a_large_image_warns_in_one_line_and_a_bomb_is_skipped_with_its_reason(
    tmp_path, monkeypatch, recwarn, caplog
):
    # PIL warns above Image.MAX_IMAGE_PIXELS and refuses above twice that; a small limit
    # stands in for a 10000x10000 scan.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    root = write_image_folder(tmp_path / "imgs", classes=("ant", "bee"), per_class=6, size=24)
    large, bomb = root / "ant" / "large.png", root / "bee" / "bomb.png"
    _photo((40, 30)).save(large)  # 1200 px: over the limit, under twice it
    _photo((50, 50)).save(bomb)  # 2500 px > 2 x 1000
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        splits = build_splits(DataConfig(name="folder", root=str(root)), seed=0)
        read_rgb(str(large))  # each epoch's decode: no second warning
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    lines = [r.getMessage() for r in caplog.records if "large.png" in r.getMessage()]
    assert len(lines) == 1 and "40x30" in lines[0], lines
    assert splits.skipped == [(str(bomb), "unreadable: too large (2500 pixels; PIL stops at 2000)")]
    strict = DataConfig(name="folder", root=str(root), on_bad_image="error")
    with pytest.raises(DataError, match=r"unreadable image: .*bomb\.png \(too large"):
        build_splits(strict, seed=0)
