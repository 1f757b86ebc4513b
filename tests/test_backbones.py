"""Backbone families, their input specs and pooled widths, torchvision files, stage=download."""

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from pipeline.commands.download import run_download
from pipeline.compose import compose
from pipeline.errors import ConfigError, WeightsUnavailableError
from pipeline.models.backbone import BackboneConfig, create_backbone, use_fast_pooling
from pipeline.models.classifier import build_model

# backbone yaml -> (timm name, pretrained input size, pooled width with avg pooling)
FAMILIES = {
    "resnet18": ("resnet18", 224, 512),
    "resnet50": ("resnet50", 224, 2048),
    "vgg16": ("vgg16", 224, 4096),  # after timm's fc6/fc7 (pre_logits ConvMlp)
    "vgg16_bn": ("vgg16_bn", 224, 4096),
    "inception_v3": ("inception_v3", 299, 2048),
    "efficientnet_lite0": ("tf_efficientnet_lite0", 224, 1280),
}


@pytest.mark.parametrize("backbone", sorted(FAMILIES))
def test_each_backbone_config_builds_with_its_pretrained_input_spec(backbone):
    """Shapes only (meta device): no memory, no init cost, even for VGG's 138M parameters."""
    name, size, width = FAMILIES[backbone]
    for pool, expected in (("avg", width), ("catavgmax", 2 * width)):
        # data=folder: the digits' 64 px override does not apply.
        cfg = compose(
            [
                f"backbone={backbone}",
                "backbone.pretrained=false",
                "data=folder",
                f"head.pool={pool}",
            ]
        )
        with torch.device("meta"):
            model, spec, info = build_model(cfg.backbone, cfg.head, num_classes=3)
        assert cfg.backbone.name == name and info.source == "scratch"
        assert spec.img_size == size  # from timm's pretrained cfg, never hard-coded
        data_cfg = timm.data.resolve_data_config({}, model=model.backbone)
        assert spec.mean == data_cfg["mean"] and spec.interpolation == data_cfg["interpolation"]
        assert model.head[-1].in_features == expected, pool
        assert not any("AuxLogits" in k or k.startswith("fc.") for k in model.backbone.state_dict())


def test_too_small_input_for_inception_names_the_fix():
    cfg = compose(["backbone=inception_v3", "backbone.pretrained=false"])  # digits: 64 px
    with torch.device("meta"), pytest.raises(ConfigError) as info:
        build_model(cfg.backbone, cfg.head, num_classes=10)
    assert "backbone.img_size=299" in str(info.value) and "\n" not in str(info.value)


def test_any_timm_model_by_name():
    cfg = BackboneConfig(name="mobilenetv3_small_050", pretrained=False)
    model, spec, _ = create_backbone(cfg)
    assert spec.img_size == 224 and model(torch.zeros(2, 3, 32, 32)).shape == (2, 1024)
    with pytest.raises(ConfigError, match="did you mean resnet50"):
        create_backbone(BackboneConfig(name="resnet5O", pretrained=False))


# --- torchvision checkpoints ----------------------------------------------------------------


def _save(state, path):
    torch.save(state, path)
    return str(path)


def test_torchvision_resnet_file_loads(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    tv.layer4[1].bn2.running_var.uniform_(0.5, 2.0)  # not the init value timm would have too
    model, _, info = create_backbone(
        BackboneConfig(name="resnet18", weights=_save(tv.state_dict(), tmp_path / "r18.pth"))
    )
    assert info.source == "file"
    torch.testing.assert_close(model.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    torch.testing.assert_close(model.conv1.weight, tv.conv1.weight)


@pytest.mark.slow  # ~5-10 s on 2 busy CPU cores
def test_torchvision_inception_v3_file_loads_without_its_aux_logits(tmp_path):
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, str(path))
    model, spec, _ = create_backbone(BackboneConfig(name="inception_v3", weights=str(path)))
    assert spec.img_size == 299
    torch.testing.assert_close(
        model.Mixed_7c.branch_pool.conv.weight, tv.Mixed_7c.branch_pool.conv.weight
    )
    assert not hasattr(model, "AuxLogits") or model.AuxLogits is None  # aux logits dropped


@pytest.mark.slow  # ~10 s on 2 CPU cores: VGG-16 has 138M parameters
def test_torchvision_vgg16_file_is_converted_to_timm_layout(tmp_path):
    tv = torchvision.models.vgg16(weights=None)
    path = _save(tv.state_dict(), tmp_path / "vgg16.pth")
    model, _, info = create_backbone(BackboneConfig(name="vgg16", weights=path))
    assert info.source == "file"
    torch.testing.assert_close(model.features[28].weight, tv.features[28].weight)
    # torchvision's Linear fc6 (4096 x 25088) becomes timm's 7x7 conv, same numbers.
    torch.testing.assert_close(model.pre_logits.fc1.weight.flatten(1), tv.classifier[0].weight)
    torch.testing.assert_close(model.pre_logits.fc2.weight.flatten(1), tv.classifier[3].weight)


def test_checkpoint_of_another_architecture_lists_the_key_diff(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    path = _save(tv.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsUnavailableError) as info:
        create_backbone(BackboneConfig(name="resnet34", weights=path))
    message = str(info.value)
    assert "missing (" in message and "layer1.2.conv1.weight" in message and "\n" not in message


# --- stage=download ----------------------------------------------------------------------------


@pytest.mark.timeout(30)  # fails fast: MLflow/the hub alone would retry for minutes
def test_download_offline_fails_fast_and_names_the_fixes(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    cfg = compose(["stage=download", "backbone=resnet50"])
    with pytest.raises(WeightsUnavailableError) as info:
        run_download(cfg)
    message = str(info.value)
    assert "\n" not in message
    for fix in ("HF_HUB_OFFLINE=1", str(tmp_path / "empty"), "backbone.weights="):
        assert fix in message, fix
    with pytest.raises(ConfigError, match=r"backbone\.pretrained=true"):
        run_download(compose(["stage=download", "backbone.pretrained=false"]))


def test_download_fills_the_hf_cache_and_later_runs_read_it_offline(monkeypatch, tmp_path, capsys):
    """The hub is faked: `hf_hub_download` writes the cache layout the real one leaves."""
    cache = tmp_path / "hub"
    state = timm.create_model("test_resnet").state_dict()
    calls = []

    def fake_hf_hub_download(repo_id, filename):
        calls.append((repo_id, filename))
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / ("a" * 40)
        snapshot.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / filename))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text("a" * 40)
        return str(snapshot / filename)

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr("pipeline.models.weights.hub_reachable", lambda: True)
    cfg = compose(["stage=download", "backbone.name=test_resnet"])
    info = run_download(cfg)
    assert info.source == "hub" and calls == [("timm/test_resnet.r160_in1k", "model.safetensors")]
    # The weights' input size, not the 64 px the default data group (digits) trains at.
    assert cfg.backbone.img_size == 64 and "; input 160px, mean " in capsys.readouterr().out
    # Offline now: the same weights come from the cache, hash included.
    monkeypatch.setattr("pipeline.models.weights.hub_reachable", lambda: False)
    cached = run_download(cfg)
    assert cached.source == "hf-cache" and cached.sha256 == info.sha256 and len(calls) == 1


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", "catavgmax"])
def test_global_pooling_is_timms_fast_variant_with_the_same_values(pool):
    # nn.AdaptiveAvgPool2d / AdaptiveMaxPool2d have no deterministic CUDA backward, so
    # train.deterministic=true on a GPU needs the mean / amax versions.
    reference = timm.create_model("test_resnet", num_classes=0, global_pool=pool).eval()
    backbone, _, _ = create_backbone(
        BackboneConfig(name="test_resnet", pretrained=False), global_pool=pool
    )
    backbone.load_state_dict(reference.state_dict())
    adaptive = (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)
    assert not any(isinstance(m, adaptive) for m in backbone.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), reference(x))


def test_models_without_timm_pooling_modules_are_left_alone():
    vit = timm.create_model("test_vit", num_classes=0, global_pool="avg")
    assert use_fast_pooling(vit) == 0
