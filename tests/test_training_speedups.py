"""Training-speed features: gradient accumulation, EMA, cached frozen-backbone features,
and the CUDA paths (bf16 autocast, fp16 + grad scaler, channels_last, torch.compile).

The `gpu` tests skip without CUDA; they use tiny models so they also run fast on a GPU box.
"""

import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline.commands.train import run_train
from pipeline.compose import compose
from pipeline.data.loader import DeviceNormalize, build_loader
from pipeline.errors import ConfigError
from pipeline.repro import set_deterministic
from pipeline.training.batches import Batches
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.config import EarlyStoppingConfig, TrainConfig
from pipeline.training.ema import ModelEma
from pipeline.training.features import FeatureLoader, check_cache_features
from pipeline.training.loop import fit, optimizer_steps_per_epoch, predict, train_one_epoch
from pipeline.training.sched import SchedConfig, build_schedule

CONSTANT_LR = SchedConfig(name="constant", warmup_epochs=0)


def _toy_data(n=32, size=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, classes, (n,), generator=g)


def _toy_model(size=4, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * size * size, 16), nn.ReLU(), nn.Linear(16, classes)
    )


def _identity_batches(device="cpu", channels_last=False):
    normalize = DeviceNormalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)).to(device)
    return Batches(normalize, torch.device(device), channels_last)


def _one_epoch(model, loader, cfg, lr=0.5):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    steps = optimizer_steps_per_epoch(len(loader), cfg.accumulate_steps)
    schedule = build_schedule(optimizer, CONSTANT_LR, 1, steps)
    metrics = train_one_epoch(
        model, loader, _identity_batches(), optimizer, schedule, cfg, None, None, False
    )
    return metrics, schedule


def test_gradient_accumulation_equals_one_bigger_batch():
    images, labels = _toy_data(n=32)
    data = TensorDataset(images, labels)
    big, accumulated = _toy_model(), _toy_model()
    big_metrics, _ = _one_epoch(big, DataLoader(data, batch_size=32), TrainConfig(epochs=1))
    acc_metrics, schedule = _one_epoch(
        accumulated, DataLoader(data, batch_size=8), TrainConfig(epochs=1, accumulate_steps=4)
    )
    assert schedule.per_batch.last_epoch == 1  # one optimizer step for four micro-batches
    for p_big, p_acc, p_init in zip(
        big.parameters(), accumulated.parameters(), _toy_model().parameters(), strict=True
    ):
        assert not torch.equal(p_big, p_init)  # the step did move the weights
        torch.testing.assert_close(p_acc, p_big, atol=1e-6, rtol=1e-5)
    assert acc_metrics["loss"] == pytest.approx(big_metrics["loss"], rel=1e-5)


def test_accumulation_with_a_short_last_group_steps_on_its_mean():
    images, labels = _toy_data(n=24)
    data = TensorDataset(images, labels)
    # 3 micro-batches of 8 with accumulate_steps=2: groups [8, 8] and [8] -> 2 steps, the
    # second on the last micro-batch's own mean loss (not half of it).
    accumulated, reference = _toy_model(), _toy_model()
    _, schedule = _one_epoch(
        accumulated, DataLoader(data, batch_size=8), TrainConfig(epochs=1, accumulate_steps=2)
    )
    assert schedule.per_batch.last_epoch == 2 == optimizer_steps_per_epoch(3, 2)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    batches = _identity_batches()
    for index in (slice(0, 16), slice(16, 24)):
        x, y = batches(images[index], labels[index])
        optimizer.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        optimizer.step()
    for p_acc, p_ref in zip(accumulated.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p_acc, p_ref, atol=1e-6, rtol=1e-5)


def test_ema_update_rule():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)  # frozen: never averaged
    ema = ModelEma(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(5)
    ema.update()
    after = ema.module.state_dict()
    torch.testing.assert_close(after["0.weight"], 0.9 * before["0.weight"] + 0.1 * model[0].weight)
    torch.testing.assert_close(after["1.running_mean"], torch.full((2,), 0.2))  # 0.9*0 + 0.1*2
    assert after["1.num_batches_tracked"] == 5  # integer buffers are copied
    assert torch.equal(after["0.bias"], before["0.bias"])
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_averages_a_parameter_unfrozen_after_it_was_created():
    # finetune=gradual unfreezes stages mid-run; from then on they must be averaged, not skipped.
    model = nn.Linear(2, 2)
    model.weight.requires_grad_(False)
    ema = ModelEma(model, decay=0.5)
    start = model.weight.detach().clone()
    model.weight.requires_grad_(True)
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update()
    torch.testing.assert_close(ema.module.weight, start + 1.0)  # 0.5 * start + 0.5 * (start + 2)


def test_fit_with_ema_validates_and_keeps_the_averaged_weights(tmp_path):
    images, labels = _toy_data(n=32)
    train = DataLoader(TensorDataset(images, labels), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(images, labels), batch_size=32)
    model = _toy_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    cfg = TrainConfig(
        epochs=2,
        ema_decay=0.5,
        progress=False,
        early_stopping=EarlyStoppingConfig(restore_best=False),
    )
    schedule = build_schedule(optimizer, CONSTANT_LR, cfg.epochs, len(train))
    raw = {}
    result = fit(
        model,
        train,
        val,
        optimizer,
        schedule,
        cfg,
        _identity_batches(),
        tmp_path,
        on_epoch=lambda epoch, _: raw.update({k: v.clone() for k, v in model.state_dict().items()}),
    )
    # The last epoch's val/loss was measured on the EMA weights, which the model now holds
    # (and which differ from the raw weights the optimizer left at the end of training).
    final_loss, _, _ = predict(model, val, _identity_batches(), None)
    assert result.history[-1]["val/loss"] == pytest.approx(final_loss, rel=1e-6)
    assert not torch.equal(model.state_dict()["3.weight"], raw["3.weight"])


def test_feature_loader_shuffles_like_the_image_loader():
    n, batch_size, seed = 50, 8, 7
    images = build_loader(
        TensorDataset(torch.arange(n)), batch_size, train=True, num_workers=0, seed=seed
    )
    features = FeatureLoader(
        torch.arange(n).float()[:, None], torch.arange(n), batch_size, train=True, seed=seed
    )
    assert len(features) == len(images) == n // batch_size  # drop_last as for images
    for _ in range(2):  # a fresh permutation each epoch, the same one for both
        assert [y.tolist() for _, y in features] == [b[0].tolist() for b in images]


def test_cache_features_needs_frozen_backbone_without_augmentation():
    with pytest.raises(ConfigError, match="cache_features=true needs finetune=frozen"):
        compose(["train.cache_features=true", "finetune=full", "augment=none"])
    with pytest.raises(ConfigError, match="augment=none"):
        compose(["train.cache_features=true", "finetune=frozen", "augment=light"])
    with pytest.raises(ConfigError, match="no mixup/cutmix"):  # mixing features != images
        compose(
            [
                "train.cache_features=true",
                "finetune=frozen",
                "augment=none",
                "augment.mixup_alpha=0.2",
            ]
        )
    with pytest.raises(ConfigError, match=r"augment\.random_erasing > 0"):  # a train-time change
        compose(
            [
                "train.cache_features=true",
                "finetune=frozen",
                "augment=none",
                "augment.random_erasing=0.25",
            ]
        )
    with pytest.raises(ConfigError, match=r"cannot use data\.sampler=weighted"):
        compose(
            [
                "train.cache_features=true",
                "finetune=frozen",
                "augment=none",
                "data.sampler=weighted",
            ]
        )
    with pytest.raises(ConfigError, match="in one process, not 2: run it without torchrun"):
        check_cache_features(True, "frozen", "none", world_size=2)


def test_cached_features_train_the_same_head_as_images(
    tiny_cfg, mlflow_uri, tmp_path, image_folder
):
    common = (
        "data=folder",
        f"data.root={image_folder}",
        "data.batch_size=4",  # several shuffled batches per epoch
        "finetune=frozen",
        "augment=none",
        "train.epochs=2",
        "optim.lr=1e-2",
        "head.dropout=0.5",  # draws from the global torch RNG: feature extraction must not
        "train.device=cpu",  # exact fp32 comparison (a GPU would run the backbone in bf16)
    )
    uncached = run_train(tiny_cfg(*common), tmp_path / "uncached")
    cached = run_train(tiny_cfg(*common, "train.cache_features=true"), tmp_path / "cached")
    for name, value in uncached.test_metrics.items():
        assert cached.test_metrics[name] == pytest.approx(value, abs=1e-4), name
    for a, b in zip(uncached.fit.history, cached.fit.history, strict=True):
        assert b["val/loss"] == pytest.approx(a["val/loss"], abs=1e-4)
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-4)
    # The checkpoint holds the whole classifier, with the same head.
    state = {
        name: load_checkpoint(result.out_dir / "checkpoints" / "best.pt")["model"]
        for name, result in (("uncached", uncached), ("cached", cached))
    }
    assert state["cached"].keys() == state["uncached"].keys()
    assert any(k.startswith("backbone.") for k in state["cached"])
    head = [k for k in state["cached"] if k.startswith("head.")]
    for key in head:
        torch.testing.assert_close(state["cached"][key], state["uncached"][key], atol=1e-4, rtol=0)
    client = MlflowClient(mlflow_uri)
    names = [set(client.get_run(r.run_id).data.metrics) for r in (uncached, cached)]
    assert names[0] == names[1] and "val/acc" in names[0]


# --- CUDA paths ------------------------------------------------------------------------


def _cuda_setup(amp="auto", **train):
    from pipeline.models.backbone import BackboneConfig
    from pipeline.models.classifier import build_model
    from pipeline.models.head import HeadConfig

    device = torch.device("cuda")
    model, spec, _ = build_model(
        BackboneConfig(name="test_resnet", pretrained=False, img_size=32), HeadConfig(), 3
    )
    model = model.to(device, memory_format=torch.channels_last)
    images, labels = _toy_data(n=32, size=32)
    loader = DataLoader(TensorDataset(images, labels), batch_size=8, pin_memory=True)
    batches = Batches(DeviceNormalize(spec.mean, spec.std).to(device), device, True)
    cfg = TrainConfig(epochs=1, amp=amp, progress=False, **train)
    return model, loader, batches, cfg


def _fit_one_epoch(model, loader, batches, optimizer, cfg, tmp_path):
    """fit() on the toy loader, which also validates on it (4 steps, constant LR)."""
    schedule = build_schedule(optimizer, CONSTANT_LR, 1, len(loader))
    return fit(model, loader, loader, optimizer, schedule, cfg, batches, tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize(("amp", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cuda_autocast_step_runs_in_low_precision_and_channels_last(tmp_path, amp, dtype):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    model, loader, batches, cfg = _cuda_setup(amp=amp, grad_clip=1.0)
    seen = {}
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_hook(
        lambda _m, args, out: seen.update(
            input_channels_last=args[0].is_contiguous(memory_format=torch.channels_last),
            conv_dtype=out.dtype,
        )
    )
    before = [p.detach().clone() for p in model.head.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    result = _fit_one_epoch(model, loader, batches, optimizer, cfg, tmp_path)
    assert seen == {"input_channels_last": True, "conv_dtype": dtype}
    assert torch.backends.cudnn.benchmark
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert torch.isfinite(torch.tensor(result.history[0]["train/loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.head.parameters(), strict=True))


@pytest.mark.gpu
def test_cuda_deterministic_run_trains_without_autotuning(tmp_path):
    # Each backward op needs a deterministic CUDA kernel (the global pooling's too).
    model, loader, batches, cfg = _cuda_setup(amp="off")
    set_deterministic(True)
    try:
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        result = _fit_one_epoch(model, loader, batches, optimizer, cfg, tmp_path)
        assert not torch.backends.cudnn.benchmark  # autotuning picks kernels by timing
        assert torch.isfinite(torch.tensor(result.history[0]["train/loss"]))
    finally:
        set_deterministic(False)


@pytest.mark.gpu
def test_cuda_batches_are_channels_last_float_on_device():
    _, loader, batches, _ = _cuda_setup()
    images, labels = next(iter(loader))
    x, y = batches(images, labels)
    assert x.device.type == y.device.type == "cuda"
    assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
def test_cuda_compile_path_trains_and_checkpoints_plain_keys(tmp_path):
    model, loader, batches, cfg = _cuda_setup(compile=True, ema_decay=0.9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    result = _fit_one_epoch(model, loader, batches, optimizer, cfg, tmp_path)
    assert getattr(model, "_compiled_call_impl", None) is not None
    assert torch.isfinite(torch.tensor(result.history[0]["val/loss"]))
    # last.pt holds the compiled training model (best.pt holds the EMA copy, never compiled).
    keys = load_checkpoint(tmp_path / "last.pt")["model"].keys()
    assert not any("_orig_mod" in k for k in keys) and "head.0.weight" in keys


@pytest.mark.slow
def test_compile_path_on_cpu(tmp_path):
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on CPU needs a C compiler")
    images, labels = _toy_data(n=16)
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    model = _toy_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    cfg = TrainConfig(epochs=1, compile=True, progress=False)
    result = fit(
        model,
        loader,
        loader,
        optimizer,
        build_schedule(optimizer, CONSTANT_LR, 1, len(loader)),
        cfg,
        _identity_batches(),
        tmp_path,
    )
    eager = _toy_model()
    eager.load_state_dict(model.state_dict())
    eager_loss, _, _ = predict(eager, loader, _identity_batches(), None)
    assert result.history[0]["val/loss"] == pytest.approx(eager_loss, rel=1e-4)


@pytest.mark.gpu
def test_cuda_cached_features_stay_on_the_device(tiny_cfg, tmp_path, image_folder, monkeypatch):
    import pipeline.commands.train as train_stage

    seen = {}
    extract = train_stage.cached_feature_loaders

    def spy(*args, **kwargs):
        result = extract(*args, **kwargs)
        seen["device"] = result[1].features.device.type
        return result

    monkeypatch.setattr(train_stage, "cached_feature_loaders", spy)
    cfg = tiny_cfg(
        "data=folder",
        f"data.root={image_folder}",
        "data.batch_size=4",
        "finetune=frozen",
        "augment=none",
        "train.cache_features=true",
        "train.device=cuda",
    )
    result = run_train(cfg, tmp_path / "out")
    assert seen == {"device": "cuda"}
    assert 0 <= result.test_metrics["test/acc"] <= 1
    state = load_checkpoint(result.out_dir / "checkpoints" / "best.pt")["model"]
    assert any(k.startswith("backbone.") for k in state)
