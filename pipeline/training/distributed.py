"""DistributedDataParallel under `torchrun`: one process per GPU (or CPU process with gloo).

`torchrun --nproc_per_node 4 -m pipeline ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without
them every helper here is a no-op, so single-process code paths stay exactly as they were.
Rank 0 alone logs, talks to MLflow and writes checkpoints; metrics are reduced across ranks.
`data.batch_size` is per process: the global batch is batch_size x world_size.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from pipeline.errors import ConfigError
from pipeline.models.classifier import Classifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """What torchrun (or any launcher setting the same variables) asked for."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group torchrun set up: nccl on CUDA, gloo on CPU."""
    info = env_info()
    if not info.enabled or dist.is_initialized():
        return info
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    log.info("rank %d/%d joined (%s)", info.rank, info.world_size, dist.get_backend())
    return info


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """Each rank drives its own GPU."""
    if info.enabled and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def shard_sampler(dataset: Any, info: DistInfo, *, train: bool, seed: int) -> Sampler | None:
    """Train: a DistributedSampler (reshuffled per epoch by `set_epoch`). Eval: a strided
    shard without padding, so gathered predictions count each image exactly once."""
    if not info.enabled:
        return None
    if train:
        return DistributedSampler(
            dataset,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
    return StridedShard(len(dataset), info.rank, info.world_size)


class StridedShard(Sampler[int]):
    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool) -> nn.Module:
    """DDP-wrap for training (call after building the optimizer on the plain model)."""
    if not info.enabled:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn=true needs CUDA devices (SyncBatchNorm is GPU-only)")
        # Keeps the Parameter objects, so an optimizer built before stays valid.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if isinstance(model, Classifier):
            model.refresh_frozen()  # the frozen-norm list must point at the new modules
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def rewrap(model: DistributedDataParallel) -> DistributedDataParallel:
    """A new DDP wrapper over the same module, registering the parameters trainable now."""
    return DistributedDataParallel(model.module, device_ids=model.device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# --- reductions (no-ops in a single process) ---------------------------------------------------


def reduce_sums(
    loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sum the per-rank training sums, so every rank reports the global mean."""
    if not active():
        return loss_sum, correct, seen
    packed = torch.stack(
        [
            loss_sum.double(),
            correct.double(),
            torch.tensor(float(seen)).to(loss_sum.device).double(),
        ]
    )
    dist.all_reduce(packed)
    return packed[0], packed[1], int(packed[2].item())


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on one (keeps ranks in step on a skip or a stop)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_predictions(
    mean_loss: float, probs: np.ndarray, targets: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Each rank evaluated its shard; return the whole set's loss, probabilities and targets."""
    if not active():
        return mean_loss, probs, targets
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (mean_loss * len(targets), probs, targets))
    n = sum(len(t) for _, _, t in parts)
    return (
        sum(loss for loss, _, _ in parts) / max(n, 1),
        np.concatenate([p for _, p, _ in parts]),
        np.concatenate([t for _, _, t in parts]),
    )


def broadcast_model(model: nn.Module) -> None:
    """Copy rank 0's weights (e.g. the restored best epoch) to every rank."""
    if not active():
        return
    for tensor in unwrap(model).state_dict().values():
        dist.broadcast(tensor, src=0)


def is_main() -> bool:
    """Rank 0, or the only process."""
    return not active() or dist.get_rank() == 0
