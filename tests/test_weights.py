from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.data.decode import read_rgb
from pipeline.errors import WeightsUnavailableError
from pipeline.models.backbone import BackboneConfig, create_backbone, input_spec_of
from pipeline.models.weights import (
    lite0_key_map,
    load_backbone_state,
    packaged_lite0_path,
    read_packaged_lite0,
    read_state_dict,
    resolve_pretrained,
)

from .conftest import SHARED_ANTS_BEES

IMAGENET_ANT, IMAGENET_BEE = 310, 309


@pytest.fixture(scope="module")
def lite0_source():
    return read_state_dict(packaged_lite0_path())


def test_lite0_mapping_is_by_name_and_complete(lite0_source):
    model = timm.create_model("tf_efficientnet_lite0")
    mapping = lite0_key_map(list(lite0_source), model)
    assert len(lite0_source) == 296
    assert sorted(mapping.values()) == sorted(model.state_dict())  # one-to-one onto timm
    # Spot checks by name: flat block 7 is stage 3, block 2; block 0 has no expansion conv.
    assert mapping["_blocks.7._expand_conv.weight"] == "blocks.3.2.conv_pw.weight"
    assert mapping["_blocks.7._project_conv.weight"] == "blocks.3.2.conv_pwl.weight"
    assert mapping["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"
    assert mapping["_bn1.running_var"] == "bn2.running_var"
    assert mapping["_fc.weight"] == "classifier.weight"


def test_lite0_loads_strictly_with_the_real_tensors(lite0_source):
    model = timm.create_model("tf_efficientnet_lite0")
    state = read_packaged_lite0(model)
    model.load_state_dict(state, strict=True)
    torch.testing.assert_close(
        model.blocks[3][2].conv_pw.weight, lite0_source["_blocks.7._expand_conv.weight"]
    )


def test_lite0_backbone_drops_the_imagenet_classifier():
    model, spec, info = create_backbone(BackboneConfig(img_size=64))
    assert info.source == "package" and len(info.sha256) == 64
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5) and spec.img_size == 64
    assert not any(k.startswith("classifier.") for k in model.state_dict())


def _imagenet_top5(model, spec, paths):
    from pipeline.data.augment import build_eval_transform

    tf = build_eval_transform(spec.img_size, spec.crop_pct, spec.interpolation)
    x = np.stack([tf(image=read_rgb(str(p)))["image"] for p in paths]).astype(np.float32) / 255
    x = (torch.from_numpy(x).permute(0, 3, 1, 2) - 0.5) / 0.5
    with torch.no_grad():
        return model(x).topk(5, dim=1).indices


@pytest.mark.skipif(not SHARED_ANTS_BEES.is_dir(), reason="shared ants/bees images not present")
def test_lite0_weights_are_real_imagenet_weights():
    model = timm.create_model("tf_efficientnet_lite0").eval()
    model.load_state_dict(read_packaged_lite0(model), strict=True)
    spec = input_spec_of(model, None)
    paths = sorted((SHARED_ANTS_BEES / "val" / "ants").glob("*.jpg"))[:12]
    paths += sorted((SHARED_ANTS_BEES / "val" / "bees").glob("*.jpg"))[:12]
    top5 = _imagenet_top5(model, spec, paths)
    hits = sum(bool({IMAGENET_ANT, IMAGENET_BEE} & set(row.tolist())) for row in top5)
    assert hits >= 18, f"only {hits}/24 images have ant/bee in the top 5"


def test_lite0_weights_beat_random_on_a_synthetic_check():
    """Without the shared images: pretrained features are far from random-init ones."""
    pretrained, _, _ = create_backbone(BackboneConfig())
    scratch, _, _ = create_backbone(BackboneConfig(pretrained=False))
    a = pretrained.state_dict()["conv_stem.weight"]
    b = scratch.state_dict()["conv_stem.weight"]
    assert not torch.allclose(a, b)
    assert pretrained.state_dict()["bn2.running_var"].std() > 0  # real stats, not the init ones


@pytest.fixture
def tiny_checkpoint(tmp_path) -> tuple[Path, dict]:
    model = timm.create_model("test_efficientnet")  # with its 1000-class classifier
    state = model.state_dict()
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    return path, state


def test_local_pth_file_loads_and_is_hashed(tiny_checkpoint):
    path, state = tiny_checkpoint
    model, _, info = create_backbone(BackboneConfig(name="test_efficientnet", weights=str(path)))
    assert info.source == "file" and info.path == str(path) and len(info.sha256) == 64
    torch.testing.assert_close(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])


def test_local_safetensors_and_wrapped_checkpoints_load(tmp_path, tiny_checkpoint):
    _, state = tiny_checkpoint
    st_path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st_path))
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    for path in (st_path, wrapped):
        model, _, _ = create_backbone(BackboneConfig(name="test_efficientnet", weights=str(path)))
        torch.testing.assert_close(model.state_dict()["bn2.weight"], state["bn2.weight"])


def test_mismatched_weights_list_missing_and_unexpected_keys(tiny_checkpoint):
    _, state = tiny_checkpoint
    model = timm.create_model("test_efficientnet", num_classes=0)
    broken = {k: v for k, v in state.items() if not k.startswith("bn2.")}
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(
        WeightsUnavailableError, match=r"missing \(\d+\): bn2\..*unexpected \(1\): extra.weight"
    ):
        load_backbone_state(model, broken)


def test_pickled_non_tensor_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": object()}, path)  # needs full pickle: weights_only refuses it
    with pytest.raises(WeightsUnavailableError, match=r"code objects \(global \S*object\)"):
        read_state_dict(path)


def test_unreadable_weights_files_fail_in_one_line(tmp_path):
    cases = {
        "list.pth": lambda p: torch.save([torch.zeros(1)], p),
        "bad.safetensors": lambda p: p.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json"),
        "notes.pth": lambda p: p.write_text("hello"),
    }
    for name, write in cases.items():
        write(tmp_path / name)
        with pytest.raises(WeightsUnavailableError) as info:
            read_state_dict(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and "\n" not in str(info.value), name


@pytest.mark.timeout(30)  # fails fast: MLflow/the hub alone would retry for minutes
def test_offline_without_weights_fails_fast_naming_the_fixes(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsUnavailableError) as info:
        create_backbone(BackboneConfig(name="resnet18"))
    message = str(info.value)
    assert "\n" not in message
    for fix in ("backbone.weights=", "HF_HUB_OFFLINE=1", "backbone.pretrained=false"):
        assert fix in message


def test_hf_cache_layout_is_used_offline(monkeypatch, tmp_path, tiny_checkpoint):
    """A Hugging Face cache built by hand, as `hf_hub_download` would leave it."""
    _, state = tiny_checkpoint
    cache = tmp_path / "hub"
    repo = cache / "models--timm--test_efficientnet.r160_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    model = timm.create_model("test_efficientnet", num_classes=0)
    loaded, info = resolve_pretrained("test_efficientnet", model, None)
    assert info.source == "hf-cache" and info.path.endswith("model.safetensors")
    torch.testing.assert_close(loaded["conv_stem.weight"], state["conv_stem.weight"])


def test_scratch_is_logged_as_such():
    _, _, info = create_backbone(BackboneConfig(name="test_efficientnet", pretrained=False))
    assert info.source == "scratch" and info.sha256 is None
