"""stage=inspect and the per-run leak check, on a generated folder with planted problems:
exact copies across train/test, resized + recompressed copies, and flipped labels."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image, ImageDraw

from pipeline.commands.inspect import run_inspect
from pipeline.commands.train import run_train
from pipeline.data.health.duplicates import ImageRef, duplicate_counts, exact_duplicates
from pipeline.data.health.image_stats import flags_of, image_stats, most_common
from pipeline.errors import DataError
from pipeline.evaluation.health.near_duplicates import near_duplicate_pairs
from tests.conftest import write_image_folder

CLASSES = ("disc", "box", "bar")
SIZE = 96


def scene(rng: np.random.Generator, cls: int) -> Image.Image:
    """A varied picture whose class is the kind of shape on it: discs, boxes or bars on a
    random two-colour background, each image its own layout and colours."""
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, SIZE)[:, None, None]
    background = (top * (1 - t) + bottom * t).repeat(SIZE, axis=1)
    img = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 5)):
        x, y = rng.integers(0, SIZE - 24, 2)
        w, h = rng.integers(16, 40, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (int(x), int(y), int(x + w), int(y + h))
        if cls == 0:
            draw.ellipse(box, fill=colour)
        elif cls == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.line((int(x), int(y), int(x + w), int(y)), fill=colour, width=6)
            draw.line((int(x), int(y + 12), int(x + w), int(y + 12)), fill=colour, width=6)
    texture = rng.normal(0, 6, (SIZE, SIZE, 3))  # grain: no two images are flat alike
    return Image.fromarray(np.clip(np.asarray(img) + texture, 0, 255).astype(np.uint8))


def planted_folder(root: Path, per_class: int = 16, test_per_class: int = 5) -> dict:
    """root/train|test/<class>/*.png with 3 exact copies and 4 resized+recompressed copies
    of train images in test, and 4 train images filed under the wrong class."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
    flipped = []
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            wrong = i == 0 or (c == 0 and i == 1)  # 4 flips: one per class, one more disc
            folder = CLASSES[(c + 1) % 3] if wrong else name
            path = root / "train" / folder / f"{name}_{i}.png"
            scene(rng, c).save(path)
            if wrong:
                flipped.append(str(path))
        for i in range(test_per_class):
            scene(rng, c).save(root / "test" / name / f"{name}_t{i}.png")
    exact, near = [], []
    for k, name in enumerate(CLASSES):  # byte-identical copies: leakage
        source = root / "train" / name / f"{name}_{5 + k}.png"
        shutil.copy(source, root / "test" / name / f"same_{k}.png")
        exact.append(str(source))
    for k in range(4):  # JPEG-recompressed (two of them resized first): near-duplicates
        name = CLASSES[k % 3]
        source = root / "train" / name / f"{name}_{9 + k}.png"
        image = Image.open(source).convert("RGB")
        if k >= 2:
            image = image.resize((86, 86), Image.Resampling.BILINEAR)
        image.save(root / "test" / name / f"copy_{k}.jpg", quality=90)
        near.append(str(source))
    return {"exact": exact, "near": near, "flipped": flipped}


def lite0(*extra: str) -> list[str]:
    """Real ImageNet features (the packaged EfficientNet-Lite0) at 64 px: meaningful
    embeddings offline, a second or two on a CPU."""
    return [
        "backbone.name=tf_efficientnet_lite0",
        "backbone.pretrained=true",
        "backbone.img_size=64",
        *extra,
    ]


@pytest.mark.slow  # a backbone pass over 70 images, a 5-fold probe and an MLflow run
def test_inspect_finds_planted_duplicates_and_label_flips(tiny_cfg, mlflow_uri, tmp_path, capsys):
    planted = planted_folder(tmp_path / "data")
    cfg = tiny_cfg(*lite0("stage=inspect", "data=folder", f"data.root={tmp_path / 'data'}"))
    findings = run_inspect(cfg, tmp_path / "out")

    # Every exact copy, as a train/test pair.
    cross = [p for p in findings.exact if p.cross_split]
    assert findings.exact_counts == {"cross_split": 3, "within_split": 0}
    assert sorted(p.a.id for p in cross) == sorted(planted["exact"])
    assert {p.b.split for p in cross} == {"test"}  # the copies; val is carved from train/
    # Most resized/recompressed copies, and nothing else above the threshold.
    found_near = {p.a.id for p in findings.near if p.cross_split}
    assert len(found_near & set(planted["near"])) >= 3
    assert len(findings.near) <= len(planted["near"]) + 3  # look-alike scenes score ~0.91
    # The flipped labels rank near the top of the label check.
    assert findings.labels is not None
    ranked = [findings.refs[i].id for i in np.argsort(findings.labels.quality)]
    assert len(set(ranked[:10]) & set(planted["flipped"])) >= 3
    assert (
        len(set(findings.refs[i].id for i in findings.labels.issues) & set(planted["flipped"])) >= 3
    )

    out = tmp_path / "out"
    with open(out / "exact_duplicates.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["cross_split"] == "True" for r in rows)
    with open(out / "label_issues.csv") as f:
        issues = list(csv.DictReader(f))
    flipped = next(r for r in issues if r["image"] in planted["flipped"])
    assert flipped["given"] != flipped["suggested"]
    for png in ("exact_duplicates.png", "near_duplicates.png", "label_issues.png"):
        assert Image.open(out / png).size[0] >= 500  # a grid, readable at 100 %

    client = MlflowClient(mlflow_uri)
    run = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id],
        filter_string="tags.stage = 'inspect'",
        max_results=1,
    )[0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["inspect/exact_cross_split"] == 3
    assert run.data.tags["mlflow.note.content"] == (out / "data_health.md").read_text()
    assert "**3** val/test image(s) duplicate" in run.data.tags["mlflow.note.content"]
    printed = capsys.readouterr().out
    assert "exact duplicates: 3 val/test image(s) duplicate another split" in printed


def test_exact_duplicates_within_and_across_splits():
    a, b = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)
    refs = [
        ImageRef("train", 0, "t0", "x"),
        ImageRef("train", 1, "t1", "x"),
        ImageRef("val", 0, "v0", "x"),
        ImageRef("test", 0, "s0", "y"),
        ImageRef("test", 1, "s1", "y"),
    ]
    from pipeline.data.health.hashing import content_hashes

    hashes = content_hashes([a, a, b, a, b])
    assert duplicate_counts(refs, hashes) == {"cross_split": 2, "within_split": 1}
    pairs = exact_duplicates(refs, hashes)
    assert [(p.a.id, p.b.id) for p in pairs if p.cross_split] == [
        ("v0", "s1"),
        ("t0", "s0"),
        ("t1", "s0"),
    ] or {(p.a.id, p.b.id) for p in pairs if p.cross_split} == {
        ("v0", "s1"),
        ("t0", "s0"),
        ("t1", "s0"),
    }
    assert [(p.a.id, p.b.id) for p in pairs if not p.cross_split] == [("t0", "t1")]
    assert pairs[0].cross_split  # leakage listed first


def test_near_duplicate_search_in_blocks_matches_the_full_matrix():
    features = torch.randn(50, 8)
    features[7] = features[3] * 2 + 0.01  # same direction: cosine ~1
    features[40] = features[12]
    full, closest = near_duplicate_pairs(features, 0.99, block_size=1000)
    blocked, closest_blocked = near_duplicate_pairs(features, 0.99, block_size=7)
    assert [(i, j) for i, j, _ in full] == [(i, j) for i, j, _ in blocked]
    assert {(i, j) for i, j, _ in full} == {(3, 7), (12, 40)}
    assert closest == pytest.approx(closest_blocked) and closest == pytest.approx(1.0, abs=1e-4)


def test_near_duplicate_pairs_are_capped_at_the_most_similar(monkeypatch, caplog):
    import pipeline.evaluation.health.near_duplicates as near

    monkeypatch.setattr(near, "MAX_PAIRS", 3)
    features = torch.ones(6, 4) + torch.arange(6.0)[:, None] * torch.tensor([0, 0, 0, 0.01])
    with caplog.at_level(logging.WARNING):
        pairs, _ = near.near_duplicate_pairs(features, 0.5, block_size=2)
    assert len(pairs) == 3 and [p[2] for p in pairs] == sorted((p[2] for p in pairs), reverse=True)
    assert "raise inspect.near_dup_threshold" in caplog.text


def test_image_flags_small_dark_grey_and_animated(tmp_path):
    photo = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(photo).save(tmp_path / "photo2.png")
    Image.fromarray(np.full((20, 40), 5, np.uint8)).save(tmp_path / "dark.png")
    frames = [Image.fromarray(np.roll(photo, k, axis=0)).convert("P") for k in range(2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    stats = {p.stem: image_stats(str(p)) for p in tmp_path.iterdir()}
    common = most_common(list(stats.values()))
    flags = {k: flags_of(s, common, min_side=32, dark=20, blur=20) for k, s in stats.items()}
    assert flags["photo"] == []
    assert set(flags["dark"]) == {"small", "dark", "blurred", "mode L"}
    assert "format GIF" in flags["anim"] and "animated (2 frames)" in flags["anim"]
    assert stats["dark"].aspect == 2.0


def _leaky_folder(root: Path) -> Path:
    write_image_folder(root / "train", per_class=6)
    write_image_folder(root / "test", per_class=2, size=20)  # other pixels than train's
    shutil.copy(root / "train" / "circle" / "img 3.png", root / "test" / "circle" / "copy.png")
    return root


def test_on_leak_error_stops_the_run_before_training(tiny_cfg, mlflow_uri, tmp_path):
    root = _leaky_folder(tmp_path / "data")
    cfg = tiny_cfg(
        "data=folder", f"data.root={root}", "data.on_leak=error", "tracking.experiment=leak_error"
    )
    with pytest.raises(DataError, match=r"data leak: 1 val/test image\(s\) duplicate"):
        run_train(cfg, tmp_path / "out")
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("leak_error")
    # No run, so no epoch metrics: the check runs before the MLflow run starts.
    assert experiment is None or not client.search_runs([experiment.experiment_id])


@pytest.mark.slow  # one tiny training run
def test_a_training_run_logs_the_leak_check_and_warns(tiny_cfg, mlflow_uri, tmp_path, caplog):
    root = _leaky_folder(tmp_path / "data")
    cfg = tiny_cfg("data=folder", f"data.root={root}")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        result = run_train(cfg, tmp_path / "out")
    warnings = [r.getMessage() for r in caplog.records if "data leak" in r.getMessage()]
    assert len(warnings) == 1 and "copy.png" in warnings[0]
    metrics = MlflowClient(mlflow_uri).get_run(result.run_id).data.metrics
    assert metrics["data/cross_split_duplicates"] == 1
    assert metrics["data/within_split_duplicates"] == 0
    assert metrics["data/train_imbalance"] == pytest.approx(1.0)


@pytest.mark.slow  # two small inspect passes, cleanlab's import
def test_inspect_scale_benchmark_times_every_part_and_projects(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "inspect_scale.py"
    spec = importlib.util.spec_from_file_location("inspect_scale", path)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "scale.json"
    report = bench.main(
        [
            "--sizes",
            "30",
            "60",
            "--img-size=24",
            "--project=600",
            f"--out={out}",
            "--warm",  # each folder inspected again, its features from the cache
            "backbone.name=test_efficientnet",
            "backbone.pretrained=false",
            "backbone.img_size=32",
            "train.device=cpu",
        ]
    )
    parts = {"hashing", "image_stats", "embedding", "near_dup_search", "label_probe", "total"}
    assert set(report["results"]["60"]["seconds"]) == parts
    assert set(report["results"]["60"]["warm_seconds"]) == parts
    projected = report["projected_600"]
    measured = report["results"]["60"]["seconds"]
    # x10 images: linear parts x10, the pairwise search x100.
    assert projected["hashing"] == round(measured["hashing"] * 10)
    assert projected["near_dup_search"] == round(measured["near_dup_search"] * 100)
    assert out.is_file()
