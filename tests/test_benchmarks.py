"""The benchmark scripts still run end to end (tiny settings; no timing is asserted)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_image_folder

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_throughput_reports_all_five_configurations(tmp_path):
    root = tmp_path / "images"
    write_image_folder(root / "train", classes=("ants", "bees"), per_class=6, size=40)
    out = tmp_path / "throughput.json"
    report = _load("train_throughput").main(
        [
            "--model=test_resnet",
            "--img-size=32",
            "--batch-size=4",
            "--steps=2",
            "--warmup=1",
            "--repeats=1",
            "--device=cpu",
            "--workers=0",
            f"--data={root}",
            f"--out={out}",
        ]
    )
    assert set(report["results"]) == {
        "a_plain_synthetic",
        "b_step_synthetic",
        "c_pipeline_jpeg",
        "d_timm_loader_jpeg",
        "e_pipeline_cached",
    }
    for result in report["results"].values():
        assert result["img_per_s"] > 0 and result["peak_mem_mb"] > 0
    assert set(report["ratios"]) == set(report["paired_ratios"]) == {"b/a", "c/a", "d/a", "e/a"}
    assert report["ratios"]["b/a"] == pytest.approx(
        report["results"]["b_step_synthetic"]["img_per_s"]
        / report["results"]["a_plain_synthetic"]["img_per_s"],
        rel=0.01,
    )
    assert out.read_text().startswith("{")


def test_dataloader_benchmark_compares_loaders_on_the_same_files(tmp_path):
    root = write_image_folder(tmp_path / "images" / "train", classes=("ants", "bees"), size=40)
    report = _load("dataloader").main(
        [
            str(tmp_path / "images"),
            "--size=32",
            "--batch-size=4",
            "--workers=0",
            "--passes=1",
            "--repeats=2",
            "--loaders",
            "pipeline",
            "pipeline_cached",
            f"--out={tmp_path / 'loader.json'}",
        ]
    )
    assert report["folder"] == str(root)
    assert [(r["loader"], r["num_workers"]) for r in report["results"]] == [
        ("pipeline", 0),
        ("pipeline_cached", 0),
    ]
    for row in report["results"]:
        assert len(row["runs_images_per_s"]) == 2 and row["images_per_s"] > 0
    assert (tmp_path / "loader.json").is_file()


def test_decode_breakdown_times_each_piece_of_the_data_path(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("ants", "bees"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "train" / name / f"{i}.jpg")
    report = _load("decode_breakdown").main([str(tmp_path), "--size=32", "--passes=1"])
    assert report["jpegs"] == 6 and report["mean_hw"] == [60, 80]
    assert set(report["ms_per_image"]) == {
        "read_rgb", "read_rgb_convert", "cv2_imdecode", "augment_light"
    }  # fmt: skip
    assert all(ms > 0 for ms in report["ms_per_image"].values())
    assert 0 < report["decode_share"] < 1


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_every_benchmark_script_imports(name):
    # A refactor once broke reliability_overhead.py's import and no test noticed.
    assert hasattr(_load(name), "main") or name == "report"
