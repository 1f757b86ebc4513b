"""stage=export format=onnx|torchscript: one file that serves without the training code.

The export is checked against PyTorch on a batch size it was not traced with (so the dynamic
batch dimension is exercised too), then logged in a run nested under the training run as an
MLflow model of the exported format (signature + input example), servable with
`mlflow models serve -m runs:/<export run id>/model --env-manager local`: format=onnx logs the
ONNX flavour; format=torchscript logs the PyTorch flavour saved with torch.export ("pt2"), since
MLflow's TorchScript path pickles the model and loads it with the deprecated torch.jit.load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.commands.trained_run import linked_run, load_trained
from pipeline.config import RunConfig
from pipeline.evaluation.export import (
    ExportModel,
    check_outputs,
    export_onnx,
    export_torchscript,
    onnx_runner,
)
from pipeline.tracking.runs import fluent_run
from pipeline.tracking.store import check_store

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    run_id: str | None
    model_uri: str | None


def _log_mlflow_model(
    run_id: str, tracking_uri: str, fmt: str, exported, example: np.ndarray, probs, labels
) -> str:
    """`exported`: the ONNX file for format=onnx, else the eager ExportModel."""
    from mlflow.models import infer_signature

    signature = infer_signature(example, probs)
    metadata = {"class_names": labels, "input": "uint8 NHWC RGB", "output": "probs"}
    with fluent_run(tracking_uri, run_id) as mlflow:
        if fmt == "onnx":
            import onnx
            import onnxruntime

            info = mlflow.onnx.log_model(
                onnx.load(str(exported)),
                name="model",
                signature=signature,
                input_example=example,
                # CPU: the provider the export was checked with, present in every onnxruntime.
                onnx_execution_providers=["CPUExecutionProvider"],
                save_as_external_data=False,  # one file, as exported
                # Pinned here so MLflow does not import the model in a subprocess to guess them.
                pip_requirements=[
                    f"onnx=={onnx.__version__}",
                    f"onnxruntime=={onnxruntime.__version__}",
                ],
                metadata=metadata,
            )
        else:
            info = mlflow.pytorch.log_model(
                exported,
                name="model",
                signature=signature,
                # Two images: torch.export would fix a batch of one as a constant dimension.
                input_example=example,
                serialization_format="pt2",  # torch.export: no pickle, no torch.jit.load
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                metadata=metadata,
            )
    return info.model_uri


def run_export(cfg: RunConfig, out_dir: Path) -> ExportResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Traced on the CPU: the graph is then portable, and the check runs anywhere.
    cpu = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cpu"))
    check_store(cfg.tracking)  # a bad tracking.uri fails before the model loads
    trained = load_trained(cpu, out_dir)
    spec = trained.spec
    # A calibrated run's temperature goes into the graph: served probabilities are calibrated.
    model = ExportModel(trained.model, spec.mean, spec.std, trained.temperature or 1.0).eval()
    size = spec.img_size
    rng = np.random.default_rng(cfg.seed)
    example = torch.from_numpy(rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8))
    check_batch = torch.from_numpy(rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8))
    with torch.no_grad():
        reference = model(check_batch).numpy()
        example_probs = model(example).numpy()

    if cfg.format == "torchscript":
        path = out_dir / "model.pt"
        traced = export_torchscript(model, example, path)
        exported = traced(check_batch).detach().numpy()
    else:
        path = export_onnx(model, example, out_dir / "model.onnx")
        exported = onnx_runner(path)(check_batch.numpy())
    diff = check_outputs(reference, exported, cfg.format)
    print(f"exported {trained.source} to {path} ({cfg.format}); max |diff| vs PyTorch {diff:.2e}")

    labels_path = out_dir / "labels.json"
    labels_path.write_text(
        json.dumps(
            {
                "class_names": trained.class_names,
                "input": f"uint8 (N, {size}, {size}, 3) RGB, resized and centre-cropped",
                "output": "softmax probabilities (N, num_classes)",
                "temperature": trained.temperature or 1.0,
            },
            indent=2,
        )
    )
    model_uri = None
    with linked_run(cfg, trained, "export") as run:
        run.log_params(
            {
                "format": cfg.format,
                "source": trained.source,
                "input.img_size": size,
                "calibration.temperature": trained.temperature or 1.0,
            }
        )
        run.log_metrics({"export/max_abs_diff": diff})
        run.log_artifact(path)
        run.log_artifact(labels_path)
        if run.run_id is not None:  # tracking is on
            model_uri = _log_mlflow_model(
                run.run_id,
                cfg.tracking.uri,
                cfg.format,
                path if cfg.format == "onnx" else model,
                example.numpy(),
                example_probs,
                trained.class_names,
            )
    if run.run_id:
        print(f"logged to run {run.run_id}; serve it with:")
        print(
            f"  MLFLOW_TRACKING_URI={cfg.tracking.uri} mlflow models serve "
            f"-m runs:/{run.run_id}/model --env-manager local -p 5001"
        )
    return ExportResult(path, cfg.format, diff, run.run_id, model_uri)
