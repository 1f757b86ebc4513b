"""Transfer strategies, stage resolution per family, LR multipliers and layer decay."""

import pytest
import timm
import torch
from mlflow.tracking import MlflowClient

from pipeline.commands.train import run_train
from pipeline.data.augment import build_eval_transform
from pipeline.data.loader import DeviceNormalize, ImageDataset, build_loader
from pipeline.data.splits import build_splits
from pipeline.errors import ConfigError
from pipeline.models.classifier import Classifier, build_model
from pipeline.models.head import HeadConfig, build_head
from pipeline.models.layer_groups import backbone_stages
from pipeline.training.batches import Batches
from pipeline.training.config import TrainConfig
from pipeline.training.finetune import (
    FinetuneConfig,
    apply_finetune,
    lr_scale,
    rebuild_on_change,
    trainable_stages,
)
from pipeline.training.loop import fit
from pipeline.training.optim import OptimConfig, build_optimizer
from pipeline.training.sched import SchedConfig, build_schedule, lr_factor


@pytest.mark.parametrize(
    "name, n_stages, first, last",
    [
        ("resnet18", 5, "conv1.weight", "layer4."),
        ("vgg16", 14, "features.0.", "pre_logits."),  # 13 convs, then fc6/fc7
        ("vgg16_bn", 14, "features.0.", "pre_logits."),  # each BN joins its conv
        ("inception_v3", 13, "Conv2d_1a_3x3.", "Mixed_7c."),
        ("tf_efficientnet_lite0", 8, "conv_stem.", "blocks.6."),
    ],
)
def test_stages_resolve_per_family(name, n_stages, first, last):
    with torch.device("meta"):  # names and shapes only
        model = timm.create_model(name, num_classes=0)
    stages = backbone_stages(model)
    assert len(stages) == n_stages
    assert stages[0][0].startswith(first) and stages[-1][0].startswith(last)
    assert sorted(n for s in stages for n in s) == sorted(n for n, _ in model.named_parameters())
    if name == "vgg16_bn":
        conv5_3 = next(s for s in stages if "features.40.weight" in s)
        assert "features.41.weight" in conv5_3 and "features.41.bias" in conv5_3


def test_trainable_stage_schedules():
    gradual = FinetuneConfig(strategy="gradual", unfreeze_every=2)
    assert [trainable_stages(gradual, e, 3) for e in range(9)] == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    ltf = FinetuneConfig(strategy="linear_then_full", head_epochs=2, full_lr_mult=0.2)
    assert [trainable_stages(ltf, e, 5) for e in range(4)] == [0, 0, 5, 5]
    assert [lr_scale(ltf, e) for e in range(4)] == [1.0, 1.0, 0.2, 0.2]
    assert trainable_stages(FinetuneConfig(strategy="partial", train_last_n=2), 7, 5) == 2
    assert trainable_stages(FinetuneConfig(strategy="frozen"), 7, 5) == 0
    assert trainable_stages(FinetuneConfig(strategy="full"), 0, 5) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "half"}, "finetune.strategy='half' is not one of"),
        ({"train_last_n": 0}, "finetune.train_last_n must be >= 1"),
        ({"unfreeze_every": 0}, "finetune.unfreeze_every must be >= 1"),
        ({"full_lr_mult": 0.0}, r"finetune.full_lr_mult must be in \(0, 1\]"),
    ],
)
def test_bad_finetune_values_fail_with_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig(**kwargs)


def _tiny_classifier(name="test_resnet", num_classes=3) -> Classifier:
    backbone = timm.create_model(name, num_classes=0)
    return Classifier(backbone, build_head(HeadConfig(), backbone.num_features, num_classes))


def test_partial_beyond_the_backbone_names_the_count():
    with pytest.raises(ConfigError, match="train_last_n=9 but the backbone has 5 stages"):
        apply_finetune(_tiny_classifier(), FinetuneConfig(strategy="partial", train_last_n=9))


def _folder_setup(tiny_cfg, image_folder, *overrides):
    cfg = tiny_cfg("data=folder", f"data.root={image_folder}", *overrides)
    splits = build_splits(cfg.data, cfg.seed)
    model, spec, _ = build_model(cfg.backbone, cfg.head, len(splits.class_names))
    tf = build_eval_transform(spec.img_size, 1.0, spec.interpolation)
    train = build_loader(ImageDataset(splits.train, tf), 8, train=True, num_workers=0, seed=0)
    val = build_loader(ImageDataset(splits.val, tf), 16, train=False, num_workers=0, seed=0)
    batches = Batches(DeviceNormalize(spec.mean, spec.std), torch.device("cpu"), False)
    return cfg, model, train, val, batches


def test_partial_trains_exactly_the_last_stage(tiny_cfg, image_folder, tmp_path):
    cfg, model, train, val, batches = _folder_setup(
        tiny_cfg,
        image_folder,
        "backbone.name=test_resnet",
        "finetune=partial",
        "finetune.train_last_n=1",
    )
    apply_finetune(model, cfg.finetune)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layer4 = {f"backbone.layer4.{n}" for n, _ in model.backbone.layer4.named_parameters()}
    head = {f"head.{n}" for n, _ in model.head.named_parameters()}
    assert trainable == layer4 | head
    optimizer = build_optimizer(model, cfg.optim)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for n, p in model.named_parameters() if n in trainable}

    before = {k: v.clone() for k, v in model.state_dict().items()}  # BN stats included
    schedule = build_schedule(optimizer, cfg.sched, 2, len(train))
    fit(model, train, val, optimizer, schedule, TrainConfig(epochs=2), batches, tmp_path)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    outside = {k for k in changed if not k.startswith(("backbone.layer4.", "head."))}
    assert not outside, f"frozen stages changed: {sorted(outside)[:5]}"
    assert trainable <= changed  # every trainable tensor moved...
    assert "backbone.layer4.0.bn1.running_mean" in changed  # ...and BN stats in layer4 too
    assert "backbone.layer3.0.bn1.running_mean" not in changed


def test_gradual_unfreezes_one_stage_per_step_and_keeps_the_schedule(tiny_cfg):
    cfg = tiny_cfg("backbone.name=test_resnet", "finetune=gradual", "finetune.unfreeze_every=1")
    model = _tiny_classifier()
    apply_finetune(model, cfg.finetune, epoch=0)
    assert model.backbone_frozen
    optimizer = build_optimizer(model, cfg.optim)
    steps_per_epoch, epochs = 3, 8
    schedule = build_schedule(optimizer, cfg.sched, epochs, steps_per_epoch)
    head_weight = model.head[-1].weight
    on_epoch_start = rebuild_on_change(model, cfg.finetune, cfg.optim, optimizer, schedule)
    stages = backbone_stages(model.backbone)
    counts = []
    for epoch in range(7):
        rebuilt = on_epoch_start(epoch)
        trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
        n = sum(all(name in trainable for name in stage) for stage in stages)
        counts.append(n)
        assert not trainable - {name for stage in stages[len(stages) - n :] for name in stage}
        assert (rebuilt is None) == (epoch in (0, 6)), epoch
        if rebuilt:
            optimizer, schedule = rebuilt
            params = {id(p) for g in optimizer.param_groups for p in g["params"]}
            assert params == {id(p) for p in model.parameters() if p.requires_grad}
            # Same position in the schedule: LR = peak * factor at the current step.
            factor = lr_factor(cfg.sched, epoch * steps_per_epoch, epochs * steps_per_epoch, 3)
            head_group = next(
                g for g in optimizer.param_groups if any(p is head_weight for p in g["params"])
            )
            assert head_group["lr"] == pytest.approx(cfg.optim.lr * factor)
        for _ in range(steps_per_epoch):
            optimizer.step()
            schedule.step_batch()
    assert counts == [0, 1, 2, 3, 4, 5, 5]


def test_optimizer_rebuild_keeps_the_head_momentum(tiny_cfg):
    cfg = tiny_cfg("backbone.name=test_resnet", "finetune=linear_then_full", "train.epochs=3")
    model = _tiny_classifier()
    apply_finetune(model, cfg.finetune, epoch=0)
    optimizer = build_optimizer(model, cfg.optim)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    exp_avg = optimizer.state[model.head[-1].weight]["exp_avg"]
    schedule = build_schedule(optimizer, SchedConfig(name="constant"), 4, 1)
    new, _ = rebuild_on_change(model, cfg.finetune, cfg.optim, optimizer, schedule)(2)
    assert new.state[model.head[-1].weight]["exp_avg"] is exp_avg
    assert all(p.requires_grad for p in model.parameters())
    assert [g["lr"] for g in new.param_groups] == pytest.approx([cfg.optim.lr * 0.1] * 4)


def test_lr_multipliers_and_layer_decay_land_in_param_groups():
    model = _tiny_classifier()
    cfg = OptimConfig(lr=1e-2, weight_decay=0.05, backbone_lr_mult=0.5, layer_decay=0.5)
    optimizer = build_optimizer(model, cfg)
    stages = backbone_stages(model.backbone)
    stage_of = {
        id(model.backbone.get_parameter(n)): i for i, names in enumerate(stages) for n in names
    }
    seen = 0
    for group in optimizer.param_groups:
        name = group["name"]
        no_decay = name.endswith("/no_decay")
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
        assert all((p.ndim <= 1) == no_decay for p in group["params"]), name
        if name.startswith("head/"):
            assert group["lr"] == pytest.approx(1e-2)
            continue
        (index,) = {stage_of[id(p)] for p in group["params"]}  # one stage per group
        assert name.startswith(f"backbone/stage{index:02d}/")
        assert group["lr"] == pytest.approx(1e-2 * 0.5 * 0.5 ** (len(stages) - index))
        seen += len(group["params"])
    assert seen == len(list(model.backbone.parameters()))
    # Without layer decay: the plain discriminative split, four groups.
    plain = build_optimizer(model, OptimConfig(lr=1e-2, backbone_lr_mult=0.1))
    lrs = {g["name"]: g["lr"] for g in plain.param_groups}
    assert lrs == {
        "backbone/decay": pytest.approx(1e-3),
        "backbone/no_decay": pytest.approx(1e-3),
        "head/decay": pytest.approx(1e-2),
        "head/no_decay": pytest.approx(1e-2),
    }
    with pytest.raises(ConfigError, match=r"optim\.layer_decay"):
        OptimConfig(layer_decay=1.5)


def test_plateau_schedule_carries_its_reductions_over_a_rebuild():
    model = _tiny_classifier()
    optimizer = build_optimizer(model, OptimConfig(lr=1.0))
    cfg = SchedConfig(name="plateau", warmup_epochs=0.0, plateau_patience=0, plateau_factor=0.5)
    schedule = build_schedule(optimizer, cfg, 10, 1)
    for loss in (1.0, 2.0):  # one bad epoch with patience 0: LR halves
        schedule.step_epoch(loss)
    new_optimizer = build_optimizer(model, OptimConfig(lr=0.2))
    schedule.rebind(new_optimizer).step_epoch(3.0)  # another bad epoch, counters carried over
    assert [g["lr"] for g in new_optimizer.param_groups] == pytest.approx([0.2 * 0.25] * 4)


@pytest.mark.slow  # a whole 2-epoch run_train with MLflow: ~10 s on 2 busy cores
def test_linear_then_full_run_logs_the_lower_lr_after_the_head_epochs(
    tiny_cfg, image_folder, mlflow_uri, tmp_path
):
    cfg = tiny_cfg(
        "data=folder",
        f"data.root={image_folder}",
        "finetune=linear_then_full",
        "finetune.head_epochs=1",
        "finetune.full_lr_mult=0.1",
        "sched=constant",
        "sched.warmup_epochs=0",
        "train.epochs=2",
        "train.early_stopping.enabled=false",
    )
    result = run_train(cfg, tmp_path / "out")
    history = MlflowClient(mlflow_uri).get_metric_history(result.run_id, "lr")
    assert [m.value for m in history] == pytest.approx([cfg.optim.lr, cfg.optim.lr * 0.1])
