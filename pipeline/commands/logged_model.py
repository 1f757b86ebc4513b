"""The MLflow model of a training run: a pyfunc that answers with class labels.

Input: what `stage=export` models take, a uint8 (N, H, W, 3) RGB batch at the model's input
size (resized and centre-cropped as `stage=predict` does); normalisation is inside. Output: a
DataFrame with `label` (the predicted class name) and one probability column per class.
`mlflow.pyfunc.load_model("runs:/<run id>/model")` loads it, and `mlflow models serve -m
runs:/<run id>/model --env-manager local` serves it, where this project is installed (the
pickled model refers to its classes).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch

from pipeline.evaluation.export import ExportModel
from pipeline.models.backbone import InputSpec
from pipeline.tracking.mlflow_internals import untyped_python_model
from pipeline.tracking.runs import fluent_run, quiet_logger

EXAMPLE_IMAGES = 2  # the input example's batch size


def labelled_predictions(probs: np.ndarray, class_names: list[str]) -> Any:
    """(N, C) probabilities -> DataFrame: `label`, then one column per class."""
    import pandas as pd  # type: ignore[import-untyped]

    frame = pd.DataFrame(probs, columns=class_names)
    frame.insert(0, "label", [class_names[i] for i in probs.argmax(1)])
    return frame


def _pyfunc_model(model: ExportModel, class_names: list[str]) -> Any:
    """A PythonModel around `model`; the class is made here so that `mlflow` is imported
    only when a model is logged (and cloudpickle saves it by value, with the model)."""

    class ImageClassifier(untyped_python_model()):  # type: ignore[misc]
        def __init__(self, model: ExportModel, class_names: list[str]):
            self.model, self.class_names = model, class_names

        def predict(self, context, model_input, params=None):
            images = torch.as_tensor(np.asarray(model_input, dtype=np.uint8))
            with torch.no_grad():
                probs = self.model(images).numpy()
            return labelled_predictions(probs, self.class_names)

    return ImageClassifier(model, class_names)


def log_classifier_model(
    run_id: str,
    tracking_uri: str,
    classifier: torch.nn.Module,
    spec: InputSpec,
    class_names: list[str],
    seed: int,
    temperature: float = 1.0,
) -> str:
    """Log `classifier` (a copy on the CPU) as the run's `model`; returns its model URI.
    A calibrated run's `temperature` divides the logits, as in evaluate, predict and export."""
    from mlflow.models import infer_signature

    cpu_model = copy.deepcopy(classifier).float().cpu().eval()
    model = ExportModel(cpu_model, spec.mean, spec.std, temperature).eval()
    size = spec.img_size
    rng = np.random.default_rng(seed)
    example = rng.integers(0, 256, (EXAMPLE_IMAGES, size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        probs = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, labelled_predictions(probs, class_names))
    requirements = [f"{name}=={version.split('+')[0]}" for name, version in _versions().items()]
    # MLflow warns, in the training run's terminal, that a pickled python_model runs code
    # when loaded: as any pickle, load models from stores you trust (docs/training.md).
    with quiet_logger("mlflow.pyfunc", logging.ERROR), fluent_run(tracking_uri, run_id) as mlflow:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_pyfunc_model(model, class_names),
            signature=signature,
            input_example=example,
            # Pinned here so MLflow does not load the model in a subprocess to guess them.
            pip_requirements=requirements,
            metadata={
                "class_names": class_names,
                "input": f"uint8 (N, {size}, {size}, 3) RGB, resized and centre-cropped",
                "output": "label + one probability column per class",
                "temperature": temperature,
            },
        )
    return info.model_uri


def _versions() -> dict[str, str]:
    import pandas
    import timm

    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
    }
