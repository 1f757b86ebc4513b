"""What reliability costs per epoch and per step: writing last.pt, and the NaN/inf guard.

    python benchmarks/reliability_overhead.py [--backbone tf_efficientnet_lite0] [--steps 200]

Prints JSON: the size and write time of a full training-state checkpoint (model, AdamW
state, RNG states) for the backbone, and the time per call of `LossGuard.bad_step` for
`nan_policy=stop` (device flag, no sync) and `skip` (one sync per step) on this machine's
device. Random init, no data: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from pipeline.models.backbone import BackboneConfig
from pipeline.models.classifier import build_model
from pipeline.models.head import HeadConfig
from pipeline.repro import rng_state
from pipeline.training.checkpoint import save_atomic
from pipeline.training.config import EarlyStoppingConfig
from pipeline.training.early_stopping import EarlyStopping
from pipeline.training.guards import LossGuard
from pipeline.training.optim import OptimConfig, build_optimizer
from pipeline.training.sched import SchedConfig, build_schedule
from pipeline.training.state import TrainingParts


def checkpoint_cost(backbone: str, repeats: int) -> dict:
    model, _, _ = build_model(BackboneConfig(name=backbone, pretrained=False), HeadConfig(), 10)
    optimizer = build_optimizer(model, OptimConfig())
    # One step so AdamW holds its two moment buffers per parameter, as in a real checkpoint.
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    schedule = build_schedule(optimizer, SchedConfig(), 10, 100)
    parts = TrainingParts(model, optimizer, schedule, None, EarlyStopping(EarlyStoppingConfig()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            state = parts.state_dict(epoch=0, history=[])
            save_atomic(state, path)
            times.append(time.perf_counter() - tic)
        size = path.stat().st_size
    return {
        "backbone": backbone,
        "params": sum(p.numel() for p in model.parameters()),
        "last_pt_mb": round(size / 2**20, 1),
        "write_s_median": round(sorted(times)[len(times) // 2], 3),
        "rng_state_keys": sorted(rng_state()),
    }


def guard_cost(policy: str, steps: int, device: torch.device) -> float:
    guard = LossGuard(policy, check_every=50, first_step=0, device=device)
    loss = torch.tensor(1.0, device=device)
    for _ in range(10):
        guard.bad_step(loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(steps):
        guard.bad_step(loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - tic) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "device": str(device),
        "torch": torch.__version__,
        "checkpoint": checkpoint_cost(args.backbone, args.repeats),
        "guard_us_per_step": {
            policy: round(guard_cost(policy, args.steps, device) * 1e6, 1)
            for policy in ("stop", "skip")
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
