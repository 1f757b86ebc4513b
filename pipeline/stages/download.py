"""stage=download: fetch (or find) the backbone's pretrained weights and check they load."""

from __future__ import annotations

from pathlib import Path

from pipeline.backbone import create_backbone
from pipeline.config import RunConfig
from pipeline.weights import WeightsInfo


def run_download(cfg: RunConfig, out_dir: Path | None = None) -> WeightsInfo:
    if not cfg.backbone.pretrained:
        raise SystemExit("error: stage=download needs backbone.pretrained=true")
    _, spec, info = create_backbone(cfg.backbone)  # resolves, loads strictly, or raises
    print(f"{cfg.backbone.name}: weights from {info.source} at {info.path}")
    print(f"sha256 {info.sha256}; input {spec.img_size}px, mean {spec.mean}, std {spec.std}")
    return info
