"""What our training step adds to a plain loop, per step, measured piece by piece.

On a busy shared CPU the end-to-end (b)/(a) ratio of `train_throughput.py` swings by tens
of percent between runs; the pieces our step adds are small enough to time in isolation
with many repetitions: on-device normalisation (uint8 NHWC -> float NCHW), the per-step LR
schedule, and the on-device loss/accuracy sums. Their total over the plain step's time is
the overhead bound, independent of drift.

    python benchmarks/step_overhead.py --device cpu --model resnet18 --img-size 64 --batch-size 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import emit  # noqa: E402
from pipeline.data.loader import DeviceNormalize  # noqa: E402
from pipeline.training.batches import Batches  # noqa: E402
from pipeline.training.optim import OptimConfig, build_optimizer  # noqa: E402
from pipeline.training.precision import resolve_device  # noqa: E402
from pipeline.training.sched import SchedConfig, build_schedule  # noqa: E402


def per_call_ms(fn, device: torch.device, n: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / n * 1e3


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="plain steps timed")
    p.add_argument("--calls", type=int, default=500, help="calls per small piece timed")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    channels_last = device.type == "cuda"
    bs, size = args.batch_size, args.img_size

    model = timm.create_model(args.model, pretrained=False, num_classes=2).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(bs, 3, size, size, device=device)
    y = torch.randint(0, 2, (bs,), device=device)

    def plain_step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    batches = Batches(
        DeviceNormalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).to(device),
        device,
        channels_last,
    )
    images = torch.randint(0, 256, (bs, size, size, 3), dtype=torch.uint8, device=device)
    our_optimizer = build_optimizer(model, OptimConfig(name="sgd"))
    schedule = build_schedule(
        our_optimizer, SchedConfig(name="cosine", warmup_epochs=0.0), 1, 10**9
    )
    logits = torch.randn(bs, 2, device=device)
    loss = torch.ones((), device=device)
    sums = [torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long)]

    def metric_sums() -> None:
        sums[0] += loss.detach() * bs
        sums[1] += (logits.detach().argmax(1) == y).sum()

    pieces = {
        "normalize_ms": per_call_ms(lambda: batches(images, y), device, args.calls),
        "schedule_ms": per_call_ms(schedule.step_batch, device, args.calls),
        "metric_sums_ms": per_call_ms(metric_sums, device, args.calls),
    }
    plain_ms = per_call_ms(plain_step, device, args.steps, warmup=2)
    added = sum(pieces.values())
    report = {
        "benchmark": "step_overhead",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
        "img_size": size,
        "batch_size": bs,
        "plain_step_ms": round(plain_ms, 3),
        **{k: round(v, 4) for k, v in pieces.items()},
        "added_ms": round(added, 4),
        "implied_b_over_a": round(plain_ms / (plain_ms + added), 4),
    }
    return emit(report, args.out)


if __name__ == "__main__":
    main()
