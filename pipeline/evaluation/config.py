"""Settings of evaluation (conf/eval, visualize, baseline): `EvalConfig`, `VisualizeConfig`,
`BaselineConfig`. Torch-free, so that the run config loads without torch or matplotlib."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import ConfigError

TTA_MODES = ("none", "flip", "five_crop", "five_crop_flip")
CALIBRATE_MODES = ("none", "temperature")


@dataclass
class EvalConfig:
    split: str = "test"  # test | val
    # none | flip (the image and its mirror) | five_crop (centre and 4 corners, each zoomed
    # back to input size) | five_crop_flip (those 5 and their mirrors): the softmax averaged
    tta: str = "none"
    # none | temperature: after training, fit one temperature on val logits (Guo et al. 2017);
    # saved with the run (calibration.json), evaluate, predict and export apply it
    calibrate: str = "none"
    topk: int = 5  # top-k accuracy; predict writes the k best labels

    def __post_init__(self) -> None:
        if self.split not in ("test", "val"):
            raise ConfigError(f"eval.split={self.split!r} is not one of: test, val")
        if self.tta not in TTA_MODES:
            raise ConfigError(f"eval.tta={self.tta!r} is not one of: {', '.join(TTA_MODES)}")
        if self.calibrate not in CALIBRATE_MODES:
            raise ConfigError(
                f"eval.calibrate={self.calibrate!r} is not one of: {', '.join(CALIBRATE_MODES)}"
            )
        if self.topk < 1:
            raise ConfigError(f"eval.topk must be >= 1, got {self.topk}")


def check_tta(tta: str, hflip: float) -> None:
    """Flip TTA assumes a mirrored image shows the same class; a run trained with
    augment.hflip=0 was told it may not (digits: a mirrored 2 is no 2)."""
    if tta in ("flip", "five_crop_flip") and hflip == 0:
        raise ConfigError(
            f"eval.tta={tta} averages each image with its mirror, but the run trained with "
            "augment.hflip=0 (a mirrored image may be another class): use eval.tta=none "
            "or five_crop"
        )


@dataclass
class VisualizeConfig:
    layers: list[str] = field(default_factory=list)  # backbone modules; []: every stage
    num_images: int = 8  # test images with Grad-CAM overlays
    channels: int = 16  # feature-map channels shown per layer

    def __post_init__(self) -> None:
        self.layers = list(self.layers)
        if self.num_images < 1 or self.channels < 1:
            raise ConfigError("visualize.num_images and visualize.channels must be >= 1")


KINDS = ("majority", "pixels", "probe")


@dataclass
class BaselineConfig:
    kinds: list[str] = field(default_factory=lambda: list(KINDS))  # which to fit, in order
    pixels_size: int = 16  # pixels: each image resized to size x size
    pixels_grey: bool = False  # pixels: one grey channel instead of three
    # Inverse L2 strengths tried for pixels and probe; val picks one (ties: the smaller C).
    c_grid: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0])
    max_iter: int = 1000  # lbfgs iterations per fit

    def __post_init__(self) -> None:
        self.kinds, self.c_grid = list(self.kinds), [float(c) for c in self.c_grid]
        unknown = [k for k in self.kinds if k not in KINDS]
        if not self.kinds or unknown:
            raise ConfigError(
                f"baseline.kinds must name some of: {', '.join(KINDS)}, got {self.kinds}"
            )
        if self.pixels_size < 1 or self.max_iter < 1:
            raise ConfigError("baseline.pixels_size and baseline.max_iter must be >= 1")
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ConfigError(f"baseline.c_grid must be values > 0, got {self.c_grid}")
