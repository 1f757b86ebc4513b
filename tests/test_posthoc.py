"""Post-hoc toggles of `eval`: temperature scaling (fitted on val after training, saved with
the run, applied by evaluate, predict and export) and multi-crop test-time augmentation."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from mlflow.tracking import MlflowClient
from PIL import Image
from torch import nn

from pipeline.commands.evaluate import run_evaluate
from pipeline.commands.posthoc import post_hoc_test
from pipeline.commands.predict import run_predict
from pipeline.commands.train import run_train
from pipeline.commands.trained_run import load_trained
from pipeline.compose import compose
from pipeline.errors import ConfigError
from pipeline.evaluation.calibration import fit_temperature
from pipeline.evaluation.evaluate import EvalConfig, check_tta, five_crops, tta_probs
from pipeline.evaluation.export import ExportModel
from tests.conftest import tiny_overrides, write_image_folder


def _calibrated_logits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from their own softmax: calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 4, generator=g) * 1.5
    labels = torch.multinomial(logits.softmax(1), 1, generator=g)[:, 0]
    return logits, labels


def test_temperature_scaling_undoes_logits_times_10():
    val_logits, val_y = _calibrated_logits(2000, seed=0)
    test_logits, test_y = _calibrated_logits(2000, seed=1)
    t = fit_temperature(10 * val_logits, val_y)
    assert t == pytest.approx(10, rel=0.15)  # the scale the logits were inflated by
    before = F.cross_entropy(10 * test_logits, test_y).item()
    after = F.cross_entropy(10 * test_logits / t, test_y).item()
    assert after < before / 3
    assert after == pytest.approx(F.cross_entropy(test_logits, test_y).item(), rel=0.05)


def test_a_val_split_without_errors_leaves_the_temperature_at_1(caplog):
    # Every image right: the NLL falls without bound as T -> 0. Unguarded, LBFGS stopped
    # near T = 0.01 on a 49-image ants/bees val split, and test probabilities became 0 or 1.
    logits, labels = _calibrated_logits(49, seed=0)
    right = logits.argmax(1)
    with caplog.at_level("WARNING"):
        assert fit_temperature(logits, right) == 1.0
        assert fit_temperature(torch.stack([logits, logits + 0.01]), right) == 1.0  # TTA views
    assert "every one of the 49 val images right" in caplog.text
    assert fit_temperature(logits, labels) != 1.0  # with mistakes there is something to fit


class _Linear10(nn.Module):
    """A fixed linear classifier on the mean colour, its logits x10: over-confident."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return 10 * self.fc(x.mean((2, 3)))


def _loader(n: int, seed: int):
    """Batches labelled by the sign of the red-green difference, 20% of labels flipped: the
    model above is right 80% of the time and sure of itself every time."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 4, 4, generator=g) * 3
    margin = x.mean((2, 3))[:, 0] - x.mean((2, 3))[:, 1]
    y = ((margin < 0) ^ (torch.rand(n, generator=g) < 0.2)).long()
    return [(x[i : i + 50], y[i : i + 50]) for i in range(0, n, 50)]


def test_post_hoc_test_calibrates_an_over_confident_model_without_changing_accuracy():
    model, loaders = _Linear10(), {"val": _loader(400, 0), "test": _loader(400, 1)}
    plain = post_hoc_test(EvalConfig(), model, loaders, lambda x, y: (x, y), None)
    calibrated = post_hoc_test(
        EvalConfig(calibrate="temperature"), model, loaders, lambda x, y: (x, y), None
    )
    m = calibrated.metrics
    assert calibrated.temperature == m["calibration/temperature"] > 2  # it was over-confident
    assert m["test/nll_calibrated"] < m["test/nll"] == pytest.approx(plain.loss)
    assert m["test/ece_calibrated"] < m["test/ece"]
    assert calibrated.loss == plain.loss  # test/loss stays the uncalibrated NLL
    np.testing.assert_array_equal(calibrated.probs.argmax(1), plain.probs.argmax(1))
    assert plain.metrics == {} and plain.temperature is None


def test_five_crops_are_torchvisions_five_crop_zoomed_back():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    ours = five_crops(x)  # centre first, then the corners
    tl, tr, bl, br, centre = TF.five_crop(x, [14, 14])
    for got, crop in zip(ours, (centre, tl, tr, bl, br), strict=True):
        want = F.interpolate(crop, size=(16, 16), mode="bilinear", antialias=False)
        torch.testing.assert_close(got, want)


class _TopLeft(nn.Module):
    """Logits from the top-left 4x4 patch only: its output depends on the crop."""

    def forward(self, x):
        patch = x[..., :4, :4].mean((2, 3))
        return torch.stack([patch[:, 0], patch[:, 1]], 1)


@pytest.mark.parametrize("tta, views", [("five_crop", 5), ("five_crop_flip", 10)])
def test_tta_averages_the_softmax_over_the_views(tta, views):
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    model = _TopLeft()
    crops = five_crops(x)
    if tta == "five_crop_flip":
        crops += [c.flip(3) for c in crops]
    assert len(crops) == views
    want = torch.stack([model(c).softmax(1) for c in crops]).mean(0)
    got = tta_probs(model, x, tta, None)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, tta_probs(model, x, "none", None))
    # A temperature divides each view's logits before its softmax.
    want_t = torch.stack([(model(c) / 2).softmax(1) for c in crops]).mean(0)
    torch.testing.assert_close(tta_probs(model, x, tta, None, temperature=2.0), want_t)


def test_mirroring_tta_is_refused_where_training_forbade_mirrors():
    for tta in ("flip", "five_crop_flip"):
        with pytest.raises(ConfigError, match=r"augment\.hflip=0"):
            check_tta(tta, 0.0)
    check_tta("five_crop", 0.0)  # no mirror in it
    with pytest.raises(ConfigError, match=r"eval\.calibrate='platt' is not one of"):
        EvalConfig(calibrate="platt")


def test_export_model_applies_the_temperature():
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    images = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    plain = ExportModel(classifier, [0.5] * 3, [0.25] * 3)
    hot = ExportModel(classifier, [0.5] * 3, [0.25] * 3, temperature=3.0)
    logits = classifier(plain.normalize(images))
    torch.testing.assert_close(hot(images), (logits / 3).softmax(1))
    torch.testing.assert_close(plain(images), logits.softmax(1))


@pytest.mark.slow
def test_a_calibrated_run_hands_its_temperature_to_evaluate_and_predict(mlflow_uri, tmp_path):
    images = write_image_folder(tmp_path / "images", per_class=12)
    base = [*tiny_overrides(mlflow_uri, tmp_path), "data=folder", f"data.root={images}"]
    trained = run_train(
        compose([*base, "eval.calibrate=temperature", "tracking.log_model=true"]),
        tmp_path / "train",
    )
    t = trained.test_metrics["calibration/temperature"]
    assert t > 0 and t != 1.0
    saved = json.loads((tmp_path / "train" / "calibration.json").read_text())
    assert saved["temperature"] == t
    client = MlflowClient(mlflow_uri)
    assert "calibration.json" in {a.path for a in client.list_artifacts(trained.run_id)}
    run = client.get_run(trained.run_id)
    assert run.data.metrics["test/nll_calibrated"] == trained.test_metrics["test/nll_calibrated"]
    # The learning-curve figure and report.md carry the run's name.
    assert (tmp_path / "train" / "report.md").read_text().startswith(f"# Run {run.info.run_name} (")

    later = [*base, f"run_id={trained.run_id}"]
    evaluated = run_evaluate(compose([*later, "stage=evaluate"]), tmp_path / "eval")
    assert evaluated.metrics["calibration/temperature"] == t
    assert evaluated.metrics["test/loss"] == pytest.approx(
        trained.test_metrics["test/nll_calibrated"], abs=1e-5
    )

    csv_path = run_predict(compose([*later, "stage=predict", f"input={images}"]), tmp_path / "p")
    loaded = load_trained(compose([*later, "stage=predict"]), tmp_path / "load")
    assert loaded.temperature == t
    first = csv_path.read_text().splitlines()[1].split(",")
    image = loaded.preprocess(np.asarray(Image.open(first[0]).convert("RGB")))
    with torch.no_grad():
        logits = loaded.model(loaded.to_input(image[None]))
    calibrated = (logits / t).softmax(1)[0]
    assert float(first[2]) == pytest.approx(float(calibrated.max()), abs=1e-5)
    assert float(first[2]) != pytest.approx(float(logits.softmax(1)[0].max()), abs=1e-4)
    # The run's logged MLflow model answers with the same calibrated probabilities.
    import mlflow.pyfunc

    with pytest.MonkeyPatch.context() as m:
        m.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # where runs:/ URIs are looked up
        served = mlflow.pyfunc.load_model(f"runs:/{trained.run_id}/model").predict(
            np.asarray(image)[None]
        )
    assert served[loaded.class_names].to_numpy()[0] == pytest.approx(calibrated.numpy(), abs=1e-5)


def test_evaluate_refuses_calibrate_for_a_run_without_a_temperature(mlflow_uri, tmp_path):
    from types import SimpleNamespace

    from pipeline.commands.trained_run import applied_temperature

    uncalibrated = SimpleNamespace(temperature=None, source="run abc")
    with pytest.raises(ConfigError, match=r"run abc has no calibration\.json"):
        applied_temperature("temperature", uncalibrated)
    assert applied_temperature("none", uncalibrated) == 1.0
    assert applied_temperature("none", SimpleNamespace(temperature=0.5, source="x")) == 0.5
