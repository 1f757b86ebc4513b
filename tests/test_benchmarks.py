"""The benchmark scripts still run end to end (tiny settings; no timing is asserted)."""

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import write_image_folder

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_throughput_reports_all_four_configurations(tmp_path):
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
    }
    for result in report["results"].values():
        assert result["img_per_s"] > 0 and result["peak_mem_mb"] > 0
    assert set(report["ratios"]) == {"b/a", "c/a", "d/a"}
    assert report["ratios"]["b/a"] == pytest.approx(
        report["results"]["b_step_synthetic"]["img_per_s"]
        / report["results"]["a_plain_synthetic"]["img_per_s"],
        rel=0.01,
    )
    assert out.read_text().startswith("{")
