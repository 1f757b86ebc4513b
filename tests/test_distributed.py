"""DDP on CPU with gloo: two processes at batch B train exactly like one process at 2B."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DistributedSampler, TensorDataset

from pipeline.data.loader import DeviceNormalize, build_loader
from pipeline.errors import ConfigError
from pipeline.training import distributed
from pipeline.training.batches import Batches
from pipeline.training.config import EarlyStoppingConfig, TrainConfig
from pipeline.training.loop import fit
from pipeline.training.optim import transfer_state
from pipeline.training.sched import SchedConfig, build_schedule

N_TRAIN, N_VAL, EPOCHS = 256, 60, 2


def _data() -> tuple[TensorDataset, TensorDataset]:
    """Random 8x8 uint8 images; the label is which quarter of the image is brightest."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N_TRAIN + N_VAL, 8, 8, 3), dtype=torch.uint8, generator=g)
    grey = images.float().mean(-1)
    quarters = [grey[:, r : r + 4, c : c + 4].mean((1, 2)) for r in (0, 4) for c in (0, 4)]
    labels = torch.stack(quarters, 1).argmax(1)
    return (
        TensorDataset(images[:N_TRAIN], labels[:N_TRAIN]),
        TensorDataset(images[N_TRAIN:], labels[N_TRAIN:]),
    )


def _train(
    rank: int, world_size: int, port: int, batch_size: int, out: str, unfreeze: bool = False
) -> None:
    """One rank of a run (or the only process when world_size=1). `unfreeze`: the first
    layer starts frozen and is unfrozen at epoch 2, as finetune=gradual does."""
    if world_size > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_RANK=str(rank),
        )
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu")
    checkpoints = Path(out) / f"ckpt-{world_size}-{rank}"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 4))
    train_set, val_set = _data()
    # One process uses the same sampler with one replica: the same permutation, so batch k
    # of the single process is the union of batch k on both ranks.
    sampler = distributed.shard_sampler(train_set, info, train=True, seed=0) or (
        DistributedSampler(train_set, num_replicas=1, rank=0, seed=0, drop_last=True)
    )
    train = build_loader(train_set, batch_size, train=True, num_workers=0, seed=0, sampler=sampler)
    val = build_loader(
        val_set,
        16,
        train=False,
        num_workers=0,
        seed=0,
        sampler=distributed.shard_sampler(val_set, info, train=False, seed=0),
    )
    model[1].requires_grad_(not unfreeze)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9
    )
    schedule = build_schedule(
        optimizer, SchedConfig(name="cosine", warmup_epochs=0.0), EPOCHS, len(train)
    )

    def unfreeze_first_layer(epoch: int):
        if epoch != 1:
            return None
        model[1].requires_grad_(True)
        new = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        transfer_state(optimizer, new)
        return new, schedule.rebind(new)

    cpu = torch.device("cpu")
    batches = Batches(DeviceNormalize((0.5,) * 3, (0.25,) * 3), cpu, False)
    cfg = TrainConfig(epochs=EPOCHS, device="cpu", early_stopping=EarlyStoppingConfig(patience=10))
    result = fit(
        distributed.wrap_model(model, info, cpu, sync_bn=False),
        train,
        val,
        optimizer,
        schedule,
        cfg,
        batches,
        checkpoint_dir=checkpoints,
        on_epoch_start=unfreeze_first_layer if unfreeze else None,
    )
    try:  # SyncBatchNorm is GPU-only: on CPU the option fails with one line
        distributed.wrap_model(nn.Sequential(nn.BatchNorm1d(4)), info, cpu, sync_bn=True)
        sync_bn_error = ""
    except ConfigError as exc:
        sync_bn_error = str(exc)
    if rank == 0:
        torch.save(
            {
                "state": model.state_dict(),
                "history": result.history,
                "sync_bn_error": sync_bn_error,
                "rank0_checkpoints": sorted(p.name for p in checkpoints.iterdir()),
                "rank1_checkpoints_exist": (Path(out) / f"ckpt-{world_size}-1").exists(),
            },
            Path(out) / f"world{world_size}{'-unfreeze' if unfreeze else ''}.pt",
        )
    distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # spawns two fresh Python processes (~10-20 s on a busy 2-core box)
def test_two_gloo_ranks_match_one_process_with_double_batch(tmp_path):
    _train(0, 1, 0, 64, str(tmp_path))
    mp.spawn(_train, args=(2, _free_port(), 32, str(tmp_path)), nprocs=2, join=True)
    single = torch.load(tmp_path / "world1.pt", weights_only=True)
    ddp = torch.load(tmp_path / "world2.pt", weights_only=True)
    for name, value in single["state"].items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    for one, two in zip(single["history"], ddp["history"], strict=True):
        for key in ("train/loss", "train/acc", "val/loss", "val/acc", "lr"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
    assert single["history"][-1]["train/acc"] > 0.3  # it learned something (chance is 0.25)
    # Rank 0 alone writes checkpoints.
    assert ddp["rank0_checkpoints"] == ["best.pt", "last.pt"]
    assert not ddp["rank1_checkpoints_exist"]
    assert ddp["sync_bn_error"].startswith("train.sync_bn=true needs CUDA")


def test_helpers_are_noops_in_one_process():
    import numpy as np

    assert not distributed.active() and distributed.is_main()
    model = nn.Linear(2, 2)
    assert distributed.wrap_model(model, distributed.DistInfo(), torch.device("cpu"), True) is model
    loss, correct = torch.tensor(3.0), torch.tensor(2)
    assert distributed.reduce_sums(loss, correct, 4) == (loss, correct, 4)
    probs, targets = np.ones((3, 2)), np.arange(3)
    assert distributed.gather_predictions(0.5, probs, targets)[0] == 0.5
    shard = distributed.StridedShard(5, rank=1, world_size=2)
    assert list(shard) == [1, 3] and len(shard) == 2


@pytest.mark.slow  # torchrun + two full pipeline processes (~40 s on a busy 2-core box)
def test_torchrun_two_ranks_log_one_run_from_rank_zero(image_folder, mlflow_uri, tmp_path):
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(_free_port()), "-m", "pipeline"]
    command += [
        "data=folder",
        f"data.root={image_folder}",
        "data.batch_size=4",
        "data.num_workers=0",
        "backbone.name=test_efficientnet",
        "backbone.pretrained=false",
        "backbone.img_size=32",
        "train.epochs=1",
        "train.threads=1",
        f"tracking.uri={mlflow_uri}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
        "tracking.experiment=tests",
        "tracking.run_name=torchrun",
        f"hydra.run.dir={out}",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Rank 0 alone prints the start block (with the resume command) and the end summary.
    assert proc.stdout.count("\nresume   ") == 1
    assert proc.stdout.count(": test/loss ") == 1
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id],
        filter_string="tags.mlflow.runName = 'torchrun'",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["world_size"] == "2"
    assert 0 <= runs[0].data.metrics["test/acc"] <= 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.slow
def test_layers_unfrozen_mid_run_are_averaged_across_ranks(tmp_path):
    # DDP only averages the parameters that were trainable when it wrapped the model.
    _train(0, 1, 0, 64, str(tmp_path), True)
    mp.spawn(_train, args=(2, _free_port(), 32, str(tmp_path), True), nprocs=2, join=True)
    single = torch.load(tmp_path / "world1-unfreeze.pt", weights_only=True)
    ddp = torch.load(tmp_path / "world2-unfreeze.pt", weights_only=True)
    assert not torch.equal(single["state"]["1.weight"], _initial_first_layer())  # it trained
    for name, value in single["state"].items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def _initial_first_layer() -> torch.Tensor:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 32))[1].weight.detach()
