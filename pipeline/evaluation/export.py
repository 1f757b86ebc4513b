"""Export a trained classifier as one self-contained graph: uint8 images in, probabilities out.

The exported model takes what an image decoder gives you, a uint8 NHWC batch at the model's
input size (resize/crop as `stage=predict` does), and does the normalisation itself, so a
server never needs the training code or the mean/std. Output: softmax probabilities (N, C).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.data.loader import DeviceNormalize
from pipeline.errors import ConfigError, ExportError

ATOL = 1e-4  # max |probability difference| between the export and PyTorch


class ExportModel(nn.Module):
    """uint8 NHWC images -> class probabilities, normalisation (and the run's calibration
    temperature) included."""

    def __init__(self, classifier: nn.Module, mean, std, temperature: float = 1.0):
        super().__init__()
        self.normalize = DeviceNormalize(mean, std)
        self.classifier = classifier
        self.temperature = float(temperature)  # a constant in the traced graph

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.normalize(images))
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return logits.softmax(1)


def export_torchscript(
    model: ExportModel, example: torch.Tensor, path: Path
) -> torch.jit.ScriptModule:
    """Trace (not script: timm models are not all scriptable) and save."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still supported
        traced = torch.jit.trace(model.eval(), example)
        torch.jit.save(traced, str(path))
    return traced


def export_onnx(model: ExportModel, example: torch.Tensor, path: Path) -> Path:
    """torch.export-based ONNX export with a dynamic batch dimension."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as exc:
        raise ConfigError(
            "format=onnx needs onnx, onnxscript and onnxruntime: pip install 'pipeline[export]'"
        ) from exc
    # The exporter narrates every graph pass at INFO: keep the run's log readable.
    chatty = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=["images"],
            output_names=["probs"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            dynamo=True,
            external_data=False,  # one file: fine below 2 GB
            verbose=False,
        )
    for logger, level in zip(chatty, levels, strict=True):
        logger.setLevel(level)
    return path


def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: session.run(None, {"images": images})[0]


def check_outputs(
    reference: np.ndarray, exported: np.ndarray, what: str, atol: float = ATOL
) -> float:
    """Max absolute difference; ExportError if above atol or shapes differ."""
    if reference.shape != exported.shape:
        raise ExportError(f"{what} output shape {exported.shape} != PyTorch's {reference.shape}")
    diff = float(np.abs(reference - exported).max())
    if not diff <= atol:
        raise ExportError(f"{what} output differs from PyTorch by {diff:.2e} (> {atol:.0e})")
    return diff
