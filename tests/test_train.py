import json
import logging
import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.commands.train import run_train
from pipeline.data.augment import build_eval_transform
from pipeline.data.loader import DeviceNormalize, ImageDataset, build_loader
from pipeline.data.splits import build_splits
from pipeline.errors import ConfigError, TrainingError
from pipeline.models.classifier import build_model
from pipeline.training.batches import Batches
from pipeline.training.config import EarlyStoppingConfig, TrainConfig
from pipeline.training.early_stopping import EarlyStopping
from pipeline.training.finetune import apply_finetune
from pipeline.training.loop import fit
from pipeline.training.optim import build_optimizer, l1_norm, penalised_weights
from pipeline.training.sched import SchedConfig, build_schedule, lr_factor

EPOCH_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "lr")
TEST_METRICS = ("test/acc", "test/f1_macro", "test/loss")
ARTIFACTS = (
    "config.yaml",
    "splits.csv",
    "confusion_matrix.png",
    "learning_curves.png",
    "classification_report.txt",
    "classification_report.json",
    "checkpoints/best.pt",
)


def _artifact_paths(client, run_id, path=""):
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            yield from _artifact_paths(client, run_id, item.path)
        else:
            yield item.path


def test_one_epoch_run_logs_metrics_params_and_artifacts(tiny_cfg, mlflow_uri, tmp_path):
    cfg = tiny_cfg("train.epochs=2")
    result = run_train(cfg, tmp_path / "out")
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    # Per-epoch metrics, one value per epoch.
    for name in EPOCH_METRICS:
        history = client.get_metric_history(result.run_id, name)
        assert [m.step for m in history] == [0, 1], name
        assert all(math.isfinite(m.value) for m in history)
    assert 0 <= run.data.metrics["val/acc"] <= 1
    assert run.data.metrics["lr"] > 0
    for name in TEST_METRICS:
        assert name in run.data.metrics
    assert 0 <= run.data.metrics["test/acc"] <= 1 and run.data.metrics["test/loss"] > 0
    assert run.data.metrics["test/acc"] == pytest.approx(result.test_metrics["test/acc"])
    # The flattened config and derived facts as params.
    params = run.data.params
    assert params["backbone.name"] == "test_efficientnet"
    assert params["optim.lr"] == str(cfg.optim.lr)
    assert params["train.early_stopping.patience"] == "3"
    assert params["weights_source"] == "scratch"
    assert params["data.n_train"] == "1079" and params["data.n_test"] == "359"
    # Artifacts.
    logged = set(_artifact_paths(client, result.run_id))
    assert set(ARTIFACTS) <= logged, logged
    report = json.loads((tmp_path / "out" / "classification_report.json").read_text())
    assert set(report) >= {"0", "9", "macro avg", "weighted avg", "accuracy"}
    assert report["accuracy"] == pytest.approx(result.test_metrics["test/acc"])
    assert (tmp_path / "out" / "splits.csv").read_text().count("\n") == 1797 + 1


def test_split_is_stratified_seeded_and_disjoint(tiny_cfg):
    cfg = tiny_cfg()
    a, b = build_splits(cfg.data, seed=1), build_splits(cfg.data, seed=1)
    assert a.train.ids == b.train.ids
    ids = [set(part.ids) for part in (a.train, a.val, a.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == 1797
    assert build_splits(cfg.data, seed=2).test.ids != a.test.ids
    counts = torch.bincount(torch.from_numpy(a.test.labels))
    assert counts.min() >= 34 and counts.max() <= 38  # 20% of ~180 per class


def test_failed_run_is_marked_failed_with_the_error(tiny_cfg, mlflow_uri, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise TrainingError("training loss is nan: lower optim.lr or set train.grad_clip")

    monkeypatch.setattr("pipeline.commands.train.fit", explode)
    with pytest.raises(TrainingError):
        run_train(tiny_cfg("tracking.run_name=will-fail"), tmp_path / "out")
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id],
        filter_string="tags.mlflow.runName = 'will-fail'",
    )
    assert runs[0].info.status == "FAILED"
    assert "training loss is nan" in runs[0].data.tags["error"]


def _tiny_setup(cfg, folder=None):
    """Model, loaders and optimizer for direct calls to `fit`."""
    splits = build_splits(cfg.data, cfg.seed)
    model, spec, _ = build_model(cfg.backbone, cfg.head, len(splits.class_names))
    apply_finetune(model, cfg.finetune)
    tf = build_eval_transform(spec.img_size, 1.0, spec.interpolation)
    train = build_loader(
        ImageDataset(splits.train.subset(torch.arange(256).numpy()), tf),
        64,
        train=True,
        num_workers=0,
        seed=0,
    )
    val = build_loader(ImageDataset(splits.val, tf), 128, train=False, num_workers=0, seed=0)
    batches = Batches(DeviceNormalize(spec.mean, spec.std), torch.device("cpu"), False)
    return model, train, val, batches


def test_early_stopping_stops_after_patience_bad_epochs_like_keras():
    stopper = EarlyStopping(EarlyStoppingConfig(patience=2, min_delta=0.1))
    improved = [stopper.step(v, e) for e, v in enumerate([1.0, 0.95, 0.85, 0.8])]
    assert improved == [True, False, True, False]
    assert stopper.best == 0.85 and stopper.best_epoch == 2 and not stopper.should_stop
    stopper.step(0.8, 4)  # the 2nd epoch in a row not better by > min_delta: patience used up
    assert stopper.should_stop and stopper.bad_epochs == 2
    high = EarlyStopping(EarlyStoppingConfig(mode="max", patience=0))
    assert high.step(0.5, 0) and not high.should_stop  # an improving epoch never stops
    assert not high.step(0.5, 1) and high.should_stop


def test_fit_stops_when_val_loss_stalls_and_restores_best(tiny_cfg, tmp_path, caplog):
    cfg = tiny_cfg(
        "optim.lr=1e-12", "optim.weight_decay=0", "sched=constant", "sched.warmup_epochs=0"
    )
    model, train, val, batches = _tiny_setup(cfg)
    optimizer = build_optimizer(model, cfg.optim)
    schedule = build_schedule(optimizer, cfg.sched, 10, len(train))
    snapshot = {}
    caplog.set_level(logging.INFO, logger="pipeline.training")

    def spoil_after_first_epoch(epoch, metrics):
        # After epoch 1 is saved as best, wreck the head: later epochs cannot improve on it.
        if epoch == 0:
            snapshot.update({k: v.clone() for k, v in model.state_dict().items()})
            with torch.no_grad():
                model.head[-1].weight.normal_(0, 5.0)

    train_cfg = TrainConfig(epochs=10, early_stopping=EarlyStoppingConfig(patience=1))
    result = fit(
        model,
        train,
        val,
        optimizer,
        schedule,
        train_cfg,
        batches,
        tmp_path,
        spoil_after_first_epoch,
    )
    assert result.stopped_early and len(result.history) == 2  # best, then 1 bad epoch: patience 1
    assert "val/loss did not improve by > 0 for 1 epochs (best" in caplog.text
    assert result.best_epoch == 0
    assert result.history[1]["val/loss"] > result.history[0]["val/loss"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, snapshot[key], rtol=0, atol=0, msg=key)


def test_lr_metric_is_the_lr_the_epoch_trained_at(tiny_cfg, tmp_path):
    # A step schedule that decays tenfold at every epoch boundary: epoch 1 trains at 1e-2,
    # epoch 2 at 1e-3; the LR after an epoch (1e-3, 1e-4) is not what it used.
    cfg = tiny_cfg(
        "optim.lr=1e-2", "sched=step", "sched.step_epochs=1", "sched.gamma=0.1",
        "sched.warmup_epochs=0",
    )  # fmt: skip
    model, train, val, batches = _tiny_setup(cfg)
    optimizer = build_optimizer(model, cfg.optim)
    schedule = build_schedule(optimizer, cfg.sched, 2, len(train))
    result = fit(model, train, val, optimizer, schedule, TrainConfig(epochs=2), batches, tmp_path)
    assert [epoch["lr"] for epoch in result.history] == pytest.approx([1e-2, 1e-3])


def test_frozen_backbone_is_bit_identical_after_training(tiny_cfg, tmp_path):
    cfg = tiny_cfg("finetune=frozen", "head=mlp")
    model, train, val, batches = _tiny_setup(cfg)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # BN stats included
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    optimizer = build_optimizer(model, cfg.optim)
    assert all(name.startswith("head/") for name in (g["name"] for g in optimizer.param_groups))
    schedule = build_schedule(optimizer, cfg.sched, 2, len(train))
    fit(model, train, val, optimizer, schedule, TrainConfig(epochs=2), batches, tmp_path)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    model.train()
    assert not model.backbone.training and model.head.training


def test_schedules_warm_up_and_decay():
    cos = SchedConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.0)
    assert lr_factor(cos, 0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(cos, 9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(cos, 100, 100, 10) == pytest.approx(0.0)
    step = SchedConfig(name="step", warmup_epochs=0, step_epochs=2, gamma=0.5)
    assert [lr_factor(step, e * 10, 100, 10) for e in (0, 1, 2, 4)] == [1.0, 1.0, 0.5, 0.25]
    exp = SchedConfig(name="exponential", warmup_epochs=0, gamma=0.9)
    assert lr_factor(exp, 20, 100, 10) == pytest.approx(0.81)


def test_onecycle_matches_torch_peaks_at_lr_and_ends_at_lr_over_both_divisors():
    cfg = SchedConfig(
        name="onecycle", warmup_epochs=0, pct_start=0.25, div_factor=10, final_div_factor=100
    )
    total, lr = 40, 0.5
    factors = [lr_factor(cfg, s, total, 10) for s in range(total)]
    # torch's own OneCycleLR, step for step
    param = torch.nn.Parameter(torch.zeros(1))
    reference = torch.optim.lr_scheduler.OneCycleLR(
        torch.optim.SGD([param], lr=lr), max_lr=lr, total_steps=total, pct_start=0.25,
        div_factor=10, final_div_factor=100, anneal_strategy="cos", cycle_momentum=False,
    )  # fmt: skip
    lrs = []
    for _ in range(total):
        lrs.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    assert [f * lr for f in factors] == pytest.approx(lrs)
    assert max(factors) == pytest.approx(1.0) and factors.index(max(factors)) == 9  # 25% in
    assert factors[0] == pytest.approx(1 / 10)
    assert factors[-1] == pytest.approx(1 / 10 / 100)  # torch: peak / div / final_div


def test_onecycle_refuses_a_warmup_and_its_conf_option_composes(tiny_cfg):
    with pytest.raises(ConfigError, match="its rise is sched"):
        SchedConfig(name="onecycle", warmup_epochs=1)
    cfg = tiny_cfg("sched=onecycle")
    assert cfg.sched.name == "onecycle" and cfg.sched.warmup_epochs == 0


def test_onecycle_resumes_at_the_same_lr(tiny_cfg, tmp_path):
    cfg = tiny_cfg("sched=onecycle", "optim.lr=1e-2")
    model, train, val, batches = _tiny_setup(cfg)
    optimizer = build_optimizer(model, cfg.optim)
    schedule = build_schedule(optimizer, cfg.sched, 3, len(train))
    fit(model, train, val, optimizer, schedule, TrainConfig(epochs=1), batches, tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    # as TrainingParts.load_state_dict restores it: the optimizer (its LRs), then the schedule
    optimizer_again = build_optimizer(model, cfg.optim)
    again = build_schedule(optimizer_again, cfg.sched, 3, len(train))
    optimizer_again.load_state_dict(state["optimizer"])
    again.load_state_dict(state["schedule"])
    for each in (schedule, again):
        each.step_batch()
    lrs = [g["lr"] for g in optimizer_again.param_groups]
    assert lrs == pytest.approx([g["lr"] for g in optimizer.param_groups])
    steps = len(train)  # one epoch done: the next step is len(train) + 1 of 3 epochs
    assert lrs[0] == pytest.approx(1e-2 * lr_factor(cfg.sched, steps + 1, 3 * steps, steps))


def test_l1_penalty_shrinks_the_weights_and_is_logged_only_when_on(tiny_cfg, tmp_path):
    sums, logged = {}, {}
    for l1 in (0.0, 1e-2):
        cfg = tiny_cfg(
            "optim.lr=1e-2", "sched=constant", "sched.warmup_epochs=0", "optim.weight_decay=0"
        )
        torch.manual_seed(0)
        model, train, val, batches = _tiny_setup(cfg)
        optimizer = build_optimizer(model, cfg.optim)
        weights = penalised_weights(optimizer)
        assert weights and all(w.ndim > 1 for w in weights)  # no biases or norm scales
        schedule = build_schedule(optimizer, cfg.sched, 1, len(train))
        result = fit(
            model, train, val, optimizer, schedule, TrainConfig(epochs=1), batches,
            tmp_path / str(l1), l1=l1,
        )  # fmt: skip
        sums[l1] = float(l1_norm(weights).detach())
        logged[l1] = result.history[0].get("train/l1")
    assert logged[0.0] is None and logged[1e-2] > 0
    assert sums[1e-2] < 0.9 * sums[0.0]


def test_l1_of_a_still_model_equals_l1_times_sum_of_abs_weights(tiny_cfg, tmp_path):
    cfg = tiny_cfg("optim.lr=1e-12", "sched=constant", "sched.warmup_epochs=0")
    model, train, val, batches = _tiny_setup(cfg)
    optimizer = build_optimizer(model, cfg.optim)
    expected = 0.01 * float(l1_norm(penalised_weights(optimizer)).detach())
    schedule = build_schedule(optimizer, cfg.sched, 1, len(train))
    result = fit(
        model, train, val, optimizer, schedule, TrainConfig(epochs=1), batches, tmp_path, l1=0.01
    )
    assert result.history[0]["train/l1"] == pytest.approx(expected, rel=1e-4)
