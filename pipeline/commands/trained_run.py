"""Load a trained model back: from an MLflow run id or a local checkpoint.

Every stage after training (evaluate, predict, export, visualize) starts here. The run's own
resolved `config.yaml` rebuilds the exact model, input handling and data split; only where it
runs (device, threads, workers) and a moved `data.root` come from the current command line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from pipeline.config import RunConfig, run_config_from_dict
from pipeline.data.augment import build_eval_transform
from pipeline.data.decode import read_rgb
from pipeline.data.loader import DeviceNormalize
from pipeline.data.splits import Splits, run_splits
from pipeline.errors import ConfigError, DataError, first_line
from pipeline.evaluation.calibration import CALIBRATION_FILE, read_temperature
from pipeline.models.backbone import InputSpec
from pipeline.models.classifier import Classifier, build_model
from pipeline.tracking.runs import grouping_tags, run_name_for, start_run
from pipeline.tracking.store import mlflow_client, store_missing
from pipeline.training.batches import Batches
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.precision import resolve_device

log = logging.getLogger(__name__)

_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@dataclass
class TrainedModel:
    model: Classifier  # eval mode, on `device`
    spec: InputSpec
    crop_pct: float
    class_names: list[str]
    cfg: RunConfig  # the training run's config (with this command's device/data overrides)
    run_id: str | None  # the training run, when loaded from MLflow
    source: str  # "run <id>" or the checkpoint path, for messages and tags
    device: torch.device
    channels_last: bool = False
    temperature: float | None = None  # fitted by eval.calibrate=temperature; None: uncalibrated

    @functools.cached_property
    def eval_transform(self):
        """Resize the short side to img_size / crop_pct, centre-crop: as validation did."""
        return build_eval_transform(self.spec.img_size, self.crop_pct, self.spec.interpolation)

    @property
    def decode_size(self) -> int:
        return round(self.spec.img_size / self.crop_pct)

    def splits(self) -> Splits:
        """The run's own split (seeded: the same images, fold included) from its data.root."""
        data = self.cfg.data
        root = Path(data.root).expanduser() if data.root else None
        if data.name in ("folder", "csv") and root is not None and not root.exists():
            # A relative root read from another folder, or data moved since: the user passed
            # no data.root, so say which one and how to point at the images.
            raise DataError(
                f"data.root not found: {data.root} (the run's data, read from {Path.cwd()}): "
                "pass data.root=<where its images are now>"
            )
        return run_splits(data, self.cfg.seed)

    def batches(self) -> Batches:
        normalize = DeviceNormalize(self.spec.mean, self.spec.std).to(self.device)
        return Batches(normalize, self.device, self.channels_last)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC batch -> the normalised batch the model takes, on its device."""
        return self.batches()(images, torch.zeros(len(images), dtype=torch.long))[0]

    def load_image(self, item: np.ndarray | str) -> np.ndarray:
        """A data-set item (array or path) as the model sees it, before normalisation."""
        image = read_rgb(item, self.decode_size) if isinstance(item, str) else item
        return self.preprocess(image).numpy()

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """uint8 HWC image of any size -> uint8 HWC tensor at the model's input size."""
        return torch.from_numpy(np.ascontiguousarray(self.eval_transform(image=image)["image"]))


def applied_temperature(calibrate: str, trained: TrainedModel) -> float:
    """The run's saved temperature (1: none). eval.calibrate=temperature asks for one, and a
    run trained without it has none to give."""
    if calibrate == "temperature" and trained.temperature is None:
        raise ConfigError(
            f"eval.calibrate=temperature: {trained.source} has no {CALIBRATION_FILE} (it trained "
            "with eval.calibrate=none); train with eval.calibrate=temperature to fit one on val"
        )
    return trained.temperature or 1.0


def _download(client, run_id: str, path: str, dst: Path) -> Path | None:
    # A progress bar per small file is noise: switch it off for this call only.
    previous = os.environ.get(_PROGRESS_BAR)
    os.environ[_PROGRESS_BAR] = "false"
    try:
        return Path(client.download_artifacts(run_id, path, str(dst)))
    except Exception:  # MLflow raises several types for a missing artifact
        return None
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS_BAR)
        else:
            os.environ[_PROGRESS_BAR] = previous


def _fetch_run_files(run_id: str, tracking_uri: str, work_dir: Path) -> dict[str, Path | None]:
    """config.yaml, the weights it tested, confusion_matrix.json (class names) and
    calibration.json (its temperature, if calibrated) of a run."""
    from mlflow.exceptions import MlflowException

    not_found = ConfigError(
        f"run_id={run_id} not found in {tracking_uri} (pass tracking.uri=... "
        "where it was logged, or checkpoint=<path>)"
    )
    if store_missing(tracking_uri):
        raise not_found
    client = mlflow_client(tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        raise not_found from exc
    dst = work_dir / "source_run"
    dst.mkdir(parents=True, exist_ok=True)
    files = {
        name: _download(client, run_id, name, dst)
        for name in ("config.yaml", "confusion_matrix.json", CALIBRATION_FILE)
    }
    # The weights its test used: final.pt (the last epoch's, restore_best=false), else best.pt.
    final = _download(client, run_id, "checkpoints/final.pt", dst)
    files["weights"] = final or _download(client, run_id, "checkpoints/best.pt", dst)
    if files["weights"] is None:
        raise ConfigError(f"run {run_id} has no checkpoints/best.pt artifact (did it finish?)")
    return files


def _local_files(checkpoint: str) -> dict[str, Path | None]:
    """A training output folder holds checkpoints/best.pt (or final.pt) beside config.yaml."""
    ckpt = Path(checkpoint).expanduser()
    if not ckpt.is_file():
        raise ConfigError(f"checkpoint not found: {ckpt}")

    def near(name: str) -> Path | None:
        return next(
            (p / name for p in (ckpt.parent, ckpt.parent.parent) if (p / name).is_file()), None
        )

    return {
        "config.yaml": near("config.yaml"),
        "weights": ckpt,
        "confusion_matrix.json": near("confusion_matrix.json"),
        CALIBRATION_FILE: near(CALIBRATION_FILE),
    }


def trained_config(saved: dict | None, current: RunConfig) -> RunConfig:
    """The run's config, with where-it-runs settings (and a moved data.root) from `current`."""
    if saved is None:
        log.warning("no config.yaml beside the checkpoint: using this command's config")
        return current
    saved = {k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(RunConfig)}}
    saved["stage"] = current.stage
    # How the run was started, not what it trained: older k-fold runs may hold a resume
    # that today's config check refuses.
    saved["train"] = {**saved.get("train", {}), "resume": None}
    run_cfg = run_config_from_dict(saved)
    data = dataclasses.replace(run_cfg.data, num_workers=current.data.num_workers)
    if current.data.root and current.data.root != run_cfg.data.root:
        data = dataclasses.replace(data, root=current.data.root)
    train = dataclasses.replace(
        run_cfg.train, device=current.train.device, threads=current.train.threads
    )
    return dataclasses.replace(run_cfg, data=data, train=train)


def _read_run_config(path: Path) -> dict:
    """A run's config.yaml as plain data. safe_load builds no Python objects; a file with a
    tag that would (`!!python/object/apply:os.system`) is refused in one line."""
    try:
        saved = yaml.safe_load(path.read_text())
    except yaml.constructor.ConstructorError as exc:
        tag = (exc.problem or "").partition("tag '")[2].rstrip("'")
        tag = tag.replace("tag:yaml.org,2002:", "!!")
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(
            f"{path}: refused: line {line} holds the YAML tag {tag or '(unknown)'}, which builds "
            "Python objects (a run's config.yaml is plain data)"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not readable YAML: {first_line(exc)}") from exc
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} is not a run's config: it holds a {type(saved).__name__}")
    return saved


def load_trained(cfg: RunConfig, work_dir: Path) -> TrainedModel:
    """Rebuild the model a run trained and load its best checkpoint."""
    if cfg.run_id and cfg.checkpoint:
        raise ConfigError("pass run_id=<id> or checkpoint=<path>, not both")
    if cfg.run_id:
        files = _fetch_run_files(cfg.run_id, cfg.tracking.uri, Path(work_dir))
    elif cfg.checkpoint:
        files = _local_files(cfg.checkpoint)
    else:
        raise ConfigError(f"stage={cfg.stage} needs run_id=<MLflow run id> or checkpoint=<path>")
    saved = _read_run_config(files["config.yaml"]) if files["config.yaml"] else None
    run_cfg = trained_config(saved, cfg)
    if run_cfg.train.threads:
        torch.set_num_threads(run_cfg.train.threads)

    weights = files["weights"]
    assert weights is not None  # both sources refuse a run without one
    state = load_checkpoint(weights)
    state = state.get("model", state)
    class_names = _class_names(files["confusion_matrix.json"], state)
    # The checkpoint holds every weight: no need to resolve pretrained ones again.
    source = f"run {cfg.run_id}" if cfg.run_id else str(cfg.checkpoint)
    model, spec, _ = build_model(run_cfg.backbone, run_cfg.head, len(class_names), source)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"checkpoint does not fit the configured model: {first_line(exc)}"
        ) from exc
    log.info("loaded the trained weights of %s (%s)", source, weights.name)
    device = resolve_device(run_cfg.train.device)
    # Same memory format as training, so evaluation reproduces its numbers bit for bit.
    channels_last = (
        device.type == "cuda"
        if run_cfg.train.channels_last is None
        else run_cfg.train.channels_last
    )
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    # torch's Module.to overloads take memory_format alone, though a device may come with it.
    model.to(device, memory_format=memory_format).eval()  # type: ignore[call-overload]
    return TrainedModel(
        model=model,
        spec=spec,
        crop_pct=run_cfg.augment.crop_pct or spec.crop_pct,
        class_names=class_names,
        cfg=run_cfg,
        run_id=cfg.run_id,
        source=source,
        device=device,
        channels_last=channels_last,
        temperature=read_temperature(files[CALIBRATION_FILE]),
    )


def _class_names(labels_file: Path | None, state: dict) -> list[str]:
    """Class names in label order, as training logged them; generic names as a last resort."""
    if labels_file is not None:
        return list(json.loads(labels_file.read_text())["labels"])
    weights = [v for k, v in state.items() if k.endswith("weight") and hasattr(v, "shape")]
    if not weights:
        raise ConfigError("the checkpoint holds no model weights (expected best.pt of a run)")
    num_classes = weights[-1].shape[0]
    log.warning("no confusion_matrix.json beside the checkpoint: classes named by index")
    return [f"class_{i}" for i in range(num_classes)]


def linked_run(cfg: RunConfig, trained: TrainedModel, stage: str):
    """A new MLflow run for a post-training stage, nested under the training run it used.

    It lands in the training run's experiment, tagged `source_run_id` and MLflow's
    `mlflow.parentRunId`, so the UI shows it under that run and nothing of the original is
    overwritten (a second evaluation with TTA is a second child, not a changed number).
    """
    tags = {**grouping_tags(stage, trained.cfg.seed), "backbone": trained.cfg.backbone.name}
    tracking = cfg.tracking
    source_name = run_name_for(trained.cfg, "train")
    if trained.run_id and tracking.enabled:
        client = mlflow_client(tracking.uri)
        source = client.get_run(trained.run_id).info
        experiment = client.get_experiment(source.experiment_id).name
        tracking = dataclasses.replace(tracking, experiment=experiment)
        tags |= {"source_run_id": trained.run_id, "mlflow.parentRunId": trained.run_id}
        source_name = source.run_name or source_name
    elif cfg.checkpoint:
        tags["source_checkpoint"] = str(cfg.checkpoint)
    return start_run(tracking, tags=tags, name=f"{stage}<-{source_name}")
