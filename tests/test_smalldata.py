"""Small-data fine-tuning (issue 16): the BatchNorm policy of unfrozen layers, finetune=auto's
rule, and the uniform average of the last epochs' weights (train.average_last)."""

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline.commands.train import run_train
from pipeline.data.loader import DeviceNormalize
from pipeline.errors import ConfigError
from pipeline.models.backbone import BackboneConfig
from pipeline.models.classifier import build_model
from pipeline.models.head import HeadConfig
from pipeline.training.auto import PROBE_FITS, choose_finetune, probe_accuracy
from pipeline.training.batches import Batches
from pipeline.training.checkpoint import load_checkpoint
from pipeline.training.config import EarlyStoppingConfig, TrainConfig
from pipeline.training.finetune import FinetuneConfig, apply_finetune, batch_norm_trains
from pipeline.training.loop import fit, train_one_epoch
from pipeline.training.sched import SchedConfig, build_schedule

CONSTANT_LR = SchedConfig(name="constant", warmup_epochs=0)


def _batches():
    return Batches(DeviceNormalize((0.0,) * 3, (1.0,) * 3), torch.device("cpu"), False)


# --- finetune.bn -------------------------------------------------------------------------------


def _tiny_classifier(bn: str):
    torch.manual_seed(0)
    cfg = BackboneConfig(name="test_efficientnet", pretrained=False, img_size=32)
    model, _, _ = build_model(cfg, HeadConfig(), num_classes=2)
    apply_finetune(model, FinetuneConfig(strategy="full", bn=bn))
    return model


def _backbone_stats(model):
    return {
        name: buffer.clone()
        for name, buffer in model.backbone.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    }


def _train_an_epoch(model):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8, generator=g)
    loader = DataLoader(TensorDataset(images, torch.arange(16) % 2), batch_size=8)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    schedule = build_schedule(optimizer, CONSTANT_LR, 1, len(loader))
    cfg = TrainConfig(progress=False)
    train_one_epoch(model, loader, _batches(), optimizer, schedule, cfg, None, None, False)


@pytest.mark.parametrize("bn, moves", [("eval", False), ("train", True)])
def test_bn_policy_decides_whether_unfrozen_running_stats_move(bn, moves):
    model = _tiny_classifier(bn)
    before = _backbone_stats(model)
    weight_before = model.backbone.bn1.weight.detach().clone()
    _train_an_epoch(model)  # model.train() inside, as fit calls it every epoch
    after = _backbone_stats(model)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert bool(changed) is moves
    if not moves:
        assert len(before) > 0
    # Either way the BN scale and shift train: only the statistics are kept.
    assert not torch.equal(model.backbone.bn1.weight.detach(), weight_before)


def test_bn_eval_needs_no_batch_of_two_and_rejects_other_policies():
    model = _tiny_classifier("eval")
    assert not batch_norm_trains(model, FinetuneConfig(strategy="full", bn="eval"), epochs=1)
    assert batch_norm_trains(model, FinetuneConfig(strategy="full", bn="train"), epochs=1)
    with pytest.raises(ConfigError, match=r"finetune\.bn='frozen' is not one of: train, eval"):
        FinetuneConfig(bn="frozen")


# --- finetune=auto -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_train, n_classes, probe, strategy, bn",
    [
        (196, 2, 0.959, "frozen", None),  # ants/bees: few photos, ImageNet features fit
        # digits: as few per class, but the features need adapting, and BN keeps ImageNet's
        (1078, 10, 0.928, "full", "eval"),
        (40_000, 10, 0.95, "full", None),  # plenty per class: fine-tune everything, BN too
        (500, 5, None, "full", "eval"),  # no val split to probe on
        (196, 2, PROBE_FITS, "frozen", None),  # the threshold itself counts as fitting
    ],
)
def test_auto_decisions_for_synthetic_sizes(n_train, n_classes, probe, strategy, bn):
    choice = choose_finetune(n_train, n_classes, probe)
    assert choice.finetune["strategy"] == strategy
    assert choice.finetune.get("bn") == bn  # None: the config's own finetune.bn stands
    assert choice.reason.startswith(f"{strategy}")
    assert f"{n_train / n_classes:.0f} train images per class" in choice.reason
    params = choice.params()
    assert params["finetune.auto.strategy"] == strategy
    assert params["finetune.auto.images_per_class"] == round(n_train / n_classes, 1)
    assert ("finetune.bn=eval" in params["finetune.auto.changes"]) == (bn == "eval")


def test_probe_accuracy_separates_separable_features_only():
    g = torch.Generator().manual_seed(0)
    labels = (torch.arange(200) % 2).numpy()
    noise = torch.randn(200, 8, generator=g).numpy()
    separable = noise + 4.0 * labels[:, None]
    assert probe_accuracy(separable[:100], labels[:100], separable[100:], labels[100:]) == 1.0
    assert probe_accuracy(noise[:100], labels[:100], noise[100:], labels[100:]) < 0.75


# --- train.average_last ------------------------------------------------------------------------


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    )


def _fit_with_average(tmp_path, epochs, average_last, **early):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 2, 2, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (32,), generator=g)
    train = DataLoader(TensorDataset(images, labels), batch_size=8)  # fixed order
    val = DataLoader(TensorDataset(images, labels), batch_size=32)
    model = _bn_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    cfg = TrainConfig(
        epochs=epochs,
        average_last=average_last,
        progress=False,
        early_stopping=EarlyStoppingConfig(**early),
    )
    schedule = build_schedule(optimizer, CONSTANT_LR, epochs, len(train))
    saved = []
    result = fit(
        model,
        train,
        val,
        optimizer,
        schedule,
        cfg,
        _batches(),
        tmp_path,
        on_epoch=lambda *_: saved.append({k: v.clone() for k, v in model.state_dict().items()}),
    )
    return model, saved, result, images


def test_average_last_equals_the_mean_of_the_saved_states(tmp_path):
    model, saved, result, images = _fit_with_average(tmp_path, epochs=3, average_last=2)
    state = model.state_dict()
    for name in ("1.weight", "1.bias", "2.weight", "2.bias", "4.weight", "4.bias"):
        mean = (saved[1][name] + saved[2][name]) / 2
        torch.testing.assert_close(state[name], mean)
    # BatchNorm statistics were recomputed for the averaged weights: one pass, plain mean.
    with torch.no_grad():
        x, _ = _batches()(images, torch.zeros(len(images), dtype=torch.long))
        hidden = model[1](x.flatten(1))
    torch.testing.assert_close(state["2.running_mean"], hidden.mean(0), rtol=1e-5, atol=1e-5)
    assert (result.averaged_epochs, result.weights_epoch) == (2, 2)
    assert result.checkpoint == tmp_path / "averaged.pt"
    kept = load_checkpoint(result.checkpoint)["model"]
    torch.testing.assert_close(kept["1.weight"], state["1.weight"])
    # The best epoch's weights are still there under their own name.
    assert (tmp_path / "best.pt").is_file()


def test_average_last_averages_the_epochs_that_ran_when_stopping_early(tmp_path):
    # patience 0 with min_delta huge: stops after the second epoch, of 5.
    model, saved, result, _ = _fit_with_average(
        tmp_path, epochs=5, average_last=3, patience=0, min_delta=1e9
    )
    assert result.stopped_early and len(saved) == 2
    mean = (saved[0]["4.weight"] + saved[1]["4.weight"]) / 2
    torch.testing.assert_close(model.state_dict()["4.weight"], mean)
    assert result.averaged_epochs == 2


def test_average_last_rejects_ema_too_and_negative_k():
    with pytest.raises(ConfigError, match="set one"):
        TrainConfig(average_last=2, ema_decay=0.9)
    with pytest.raises(ConfigError, match=r"train\.average_last must be >= 0"):
        TrainConfig(average_last=-1)


# --- through stage=train -----------------------------------------------------------------------


@pytest.mark.slow  # two whole run_trains with MLflow: ~15 s on 2 busy cores
def test_auto_and_average_last_runs_log_and_report_what_they_did(
    tiny_cfg, image_folder, mlflow_uri, tmp_path, capsys
):
    cfg = tiny_cfg("data=folder", f"data.root={image_folder}", "finetune=auto")
    result = run_train(cfg, tmp_path / "auto")
    params = MlflowClient(mlflow_uri).get_run(result.run_id).data.params
    chosen = params["finetune.auto.strategy"]
    assert params["finetune.strategy"] == chosen  # the config logged is the chosen one
    # A few images per class: full fine-tuning keeps ImageNet's BatchNorm statistics.
    assert params["finetune.bn"] == ("eval" if chosen == "full" else "train")
    assert params["finetune.auto.images_per_class"] == str(round(len_train(params) / 3, 1))
    line = f"finetune=auto: {params['finetune.auto.reason']}"
    assert line in capsys.readouterr().out
    assert line in (tmp_path / "auto" / "report.md").read_text()

    cfg = tiny_cfg(
        "data=folder", f"data.root={image_folder}", "train.epochs=2", "train.average_last=2"
    )
    result = run_train(cfg, tmp_path / "avg")
    run = MlflowClient(mlflow_uri).get_run(result.run_id)
    assert run.data.params["train.average_last"] == "2"
    assert run.data.metrics["averaged_epochs"] == 2
    assert "tested the average of epochs 1-2 (train.average_last=2)" in capsys.readouterr().out
    assert result.fit.checkpoint.name == "averaged.pt"


@pytest.mark.parametrize("extra, cached", [((), True), (("augment.mixup_alpha=0.4",), False)])
def test_a_frozen_auto_choice_trains_the_head_on_the_probes_cached_features(
    tiny_cfg, image_folder, monkeypatch, extra, cached
):
    import pipeline.commands.finetune_auto as finetune_auto
    from pipeline.data.splits import run_splits
    from pipeline.training.distributed import DistInfo

    monkeypatch.setattr(finetune_auto, "probe_accuracy", lambda *a, **k: 0.99)  # features fit
    cfg = tiny_cfg("data=folder", f"data.root={image_folder}", "finetune=auto", *extra)
    splits = run_splits(cfg.data, cfg.seed)
    chosen, choice = finetune_auto.resolve_auto(cfg, splits, torch.device("cpu"), DistInfo())
    assert chosen.finetune.strategy == "frozen"
    assert chosen.train.cache_features is cached
    assert chosen.augment.preset == ("none" if cached else cfg.augment.preset)
    changes = choice.params()["finetune.auto.changes"]
    assert ("train.cache_features=True" in changes) is cached
    assert ("computed once" in choice.reason) is cached


def len_train(params: dict) -> int:
    return int(params["data.n_train"])
