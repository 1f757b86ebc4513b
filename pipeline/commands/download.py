"""stage=download: fetch (or find) the backbone's pretrained weights and check they load.

Run it once on a connected machine: the file lands in the Hugging Face cache
(`HF_HUB_CACHE`, default ~/.cache/huggingface/hub), which later runs read with
`HF_HUB_OFFLINE=1`. Copy that folder to an offline machine to use it there.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from pipeline.config import RunConfig
from pipeline.errors import ConfigError
from pipeline.models.backbone import create_backbone
from pipeline.models.weights import WeightsInfo, WeightsOfflineError


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def run_download(cfg: RunConfig, out_dir: Path | None = None) -> WeightsInfo:
    if not cfg.backbone.pretrained:
        raise ConfigError("stage=download needs backbone.pretrained=true")
    try:
        # Resolves in the documented order, downloads if needed, loads strictly, or raises.
        # img_size=None: report the weights' own input size, not the size a data group
        # trains at (data=digits sets 64 px).
        native = dataclasses.replace(cfg.backbone, img_size=None)
        _, spec, info = create_backbone(native)
    except WeightsOfflineError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        why = (
            "HF_HUB_OFFLINE=1 is set (unset it)"
            if offline
            else "backbone.allow_hub=false"
            if not cfg.backbone.allow_hub
            else "huggingface.co is unreachable"
        )
        raise WeightsOfflineError(
            f"stage=download cannot fetch {cfg.backbone.name}: {why} and it is not in the "
            f"cache {hf_cache_dir()}; run it on a connected machine and copy that folder, "
            "or pass a local file with backbone.weights=<path.pth|.safetensors>"
        ) from exc
    print(f"{cfg.backbone.name}: weights from {info.source} at {info.path} (loaded strictly: ok)")
    print(f"sha256 {info.sha256}; input {spec.img_size}px, mean {spec.mean}, std {spec.std}")
    return info
