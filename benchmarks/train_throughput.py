"""Training throughput, in one process: how close our pipeline gets to the fastest loop.

  (a) plain:    a hand-written PyTorch loop on a synthetic, device-resident float batch
                (the upper bound: no data loading, no normalisation, nothing else);
  (b) step:     our `train_one_epoch` (Batches + DeviceNormalize, AMP rules, on-device
                metrics, LR schedule) on a synthetic device-resident uint8 batch;
  (c) pipeline: our full input path: JPEG decode + albumentations (`augment=light`) in
                `ImageDataset` + `build_loader`, feeding `train_one_epoch`;
  (d) timm:     timm's own library loader (`create_dataset` + `create_loader`, its standard
                train transform) feeding the plain step of (a);
  (e) cached:   (c) with `data.cache_images=true`: the files decoded once, up front (not
                timed), then augmentation only.

Each configuration is timed `--repeats` times, interleaved (a, b, c, d, a, b, ...) so that
drift on a shared machine hits all of them alike; the JSON reports the median img/s, all
runs, the peak memory (CUDA: max allocated; CPU: peak resident set of this process, sampled,
loader workers not included) and the ratios (b)/(a), (c)/(a), (d)/(a), both as ratios of
medians and as medians of each repeat's paired ratio.

    python benchmarks/train_throughput.py --device cpu --model resnet18 --img-size 64
    python benchmarks/train_throughput.py --device cuda --model resnet50 --img-size 224 \
        --batch-size 256 --workers 15 [--compile]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from benchmarks.report import emit  # noqa: E402
from pipeline.commands.training_setup import build_training  # noqa: E402
from pipeline.compose import compose  # noqa: E402
from pipeline.data.loader import default_num_workers  # noqa: E402
from pipeline.data.sources import ImageSet, scan_class_folders  # noqa: E402
from pipeline.data.splits import Splits  # noqa: E402
from pipeline.training.loop import train_one_epoch  # noqa: E402
from pipeline.training.precision import resolve_amp, resolve_device  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "hymenoptera_data"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", help="any timm model name")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile: more)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--amp", default="auto", help="auto | bf16 | fp16 | off (our AMP rules)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models")
    p.add_argument("--workers", type=int, default=None, help="loader workers for (c) and (d)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="root/train/<class>/*.jpg")
    p.add_argument("--only", default="abcde", help="subset of configurations, e.g. ab")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return p.parse_args(argv)


# --- measuring -----------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """CUDA: max allocated bytes in the window. CPU: peak RSS of this process in the window,
    sampled every 5 ms by a thread (loader worker processes are not counted)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())


def timed(run: Callable[[int], None], steps: int, warmup: int, batch_size: int, device):
    """img/s over `steps` steps after `warmup` untimed ones, and the window's peak memory."""
    if warmup:
        run(warmup)
    synchronize(device)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        run(steps)
        synchronize(device)
        seconds = time.perf_counter() - start
    return steps * batch_size / seconds, memory.peak


class Repeat:
    """A 'loader' that yields the same device-resident batch n times (synthetic data)."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.n):
            yield self.batch


class Take:
    """The first n batches of a loader, re-iterated over epochs as needed."""

    def __init__(self, loader: Iterable, n: int):
        self.loader, self.n = loader, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        left = self.n
        while left:
            for batch in self.loader:
                yield batch
                left -= 1
                if not left:
                    return


# --- the four configurations ---------------------------------------------------------------


def plain_step(model, optimizer, device, amp_dtype, scaler):
    """The loop everyone writes: forward under autocast, backward, step."""

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    return step


def our_config(args, workers: int):
    """The run config these flags stand for: an image folder, augment=light, SGD, cosine."""
    return compose(
        [
            "data=folder",
            f"data.root={args.data}",
            f"backbone.name={args.model}",
            "backbone.pretrained=false",
            f"backbone.img_size={args.img_size}",
            "augment=light",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={workers}",
            "optim=sgd",
            "optim.lr=1e-3",
            "optim.weight_decay=1e-4",
            "sched=cosine",
            f"train.amp={args.amp}",
            "seed=0",
        ]
    )


def build(args) -> tuple[dict[str, Callable[[int], None]], torch.device, torch.dtype | None, int]:
    """The timed callables (each runs n steps), keyed by configuration name."""
    device = resolve_device(args.device)
    amp_dtype = resolve_amp(args.amp, device)
    channels_last = device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    use_scaler = amp_dtype == torch.float16 and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None  # as fit does
    bs, size, classes = args.batch_size, args.img_size, 2  # ants / bees

    # (a) and (d): a plain timm model and a plain optimizer.
    plain = timm.create_model(args.model, pretrained=False, num_classes=classes)
    plain = plain.to(device, memory_format=memory_format)
    plain_opt = torch.optim.SGD(
        plain.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    if args.compile:
        plain.compile()
    step = plain_step(plain, plain_opt, device, amp_dtype, scaler)
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, classes, (bs,), device=device)

    def run_plain(n: int) -> None:
        plain.train()
        for _ in range(n):
            step(x, y)

    # (b), (c) and (e): stage=train's own setup (commands.training_setup): model, optimizer
    # groups, schedule, loader and on-device normalisation, from the config these flags say.
    workers = default_num_workers() if args.workers is None else args.workers
    train_root = args.data / "train"
    if any(c in args.only for c in "cde") and not train_root.is_dir():
        raise SystemExit(f"error: no image folder at {train_root} (pass --data)")
    # A small folder (ants/bees: 244 images) is listed several times over, so that every
    # batch is full (no odd last batch, no recompiles) even at GPU batch sizes. Every image
    # is still decoded from its file each time it is drawn. (b) alone needs no files.
    if any(c in args.only for c in "cde"):
        images, _ = scan_class_folders(train_root)
    else:
        images = ImageSet([np.zeros((size, size, 3), np.uint8)] * bs, np.arange(bs) % 2, ["a", "b"])
    pool_repeat = max(1, math.ceil(8 * bs / len(images)))
    pool = ImageSet(
        list(images.items) * pool_repeat, np.tile(images.labels, pool_repeat), images.class_names
    )
    splits = Splits(train=pool, val=pool, test=pool)  # only train is loaded
    cfg = our_config(args, workers)
    ours = build_training(cfg, splits, device, parts=("train",))
    if args.compile:
        ours.train_model.compile()  # what fit does for train.compile=true
    train_cfg = dataclasses.replace(cfg.train, progress=False)
    uint8_batch = (
        torch.randint(0, 256, (bs, size, size, 3), dtype=torch.uint8, device=device),
        torch.randint(0, classes, (bs,), device=device),
    )

    def run_ours(loader) -> None:
        train_one_epoch(
            ours.train_model,
            loader,
            ours.batches,
            ours.optimizer,
            ours.schedule,
            train_cfg,
            amp_dtype,
            scaler,
            False,
        )

    runs = {
        "a_plain_synthetic": run_plain,
        "b_step_synthetic": lambda n: run_ours(Repeat(uint8_batch, n)),
    }
    if "c" in args.only:
        jpeg_loader = ours.loaders["train"]
        runs["c_pipeline_jpeg"] = lambda n: run_ours(Take(jpeg_loader, n))
    if "e" in args.only:  # data.cache_images=true: decoded once here, not timed
        cached = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_images=True))
        cached_loader = build_training(cached, splits, device, parts=("train",)).loaders["train"]
        runs["e_pipeline_cached"] = lambda n: run_ours(Take(cached_loader, n))
    if "d" in args.only:
        from timm.data import create_dataset, create_loader

        timm_data = create_dataset("", root=str(train_root), is_training=True)
        timm_data.reader.samples = timm_data.reader.samples * pool_repeat
        timm_loader = create_loader(
            timm_data,
            input_size=(3, size, size),
            batch_size=bs,
            is_training=True,
            interpolation=ours.spec.interpolation,
            mean=ours.spec.mean,
            std=ours.spec.std,
            crop_pct=ours.spec.crop_pct,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            device=device,
            use_prefetcher=device.type == "cuda",  # timm's GPU path: normalise on the device
            persistent_workers=workers > 0,
        )

        def run_timm(n: int) -> None:
            plain.train()
            for images, labels in Take(timm_loader, n):
                images = images.to(device, non_blocking=True)
                step(images.contiguous(memory_format=memory_format), labels.to(device))

        runs["d_timm_loader_jpeg"] = run_timm

    keep = {"a": "a_plain", "b": "b_step", "c": "c_pipeline", "d": "d_timm", "e": "e_pipeline"}
    wanted = tuple(keep[k] for k in args.only)
    return (
        {name: run for name, run in runs.items() if name.startswith(wanted)},
        device,
        amp_dtype,
        workers,
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs, device, amp_dtype, workers = build(args)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as fit does; the plain loop gets it too
    warmup = args.warmup + (10 if args.compile else 0)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, int] = dict.fromkeys(runs, 0)
    for _ in range(args.repeats):
        for name, run in runs.items():
            rate, peak = timed(run, args.steps, warmup, args.batch_size, device)
            samples[name].append(rate)
            peaks[name] = max(peaks[name], peak)
    median = {name: statistics.median(rates) for name, rates in samples.items()}
    upper = median.get("a_plain_synthetic")
    report = {
        "benchmark": "train_throughput",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
        "compile": args.compile,
        "workers": workers,
        "images": str(args.data / "train"),
        "memory": "cuda max allocated" if device.type == "cuda" else "peak RSS of this process",
        "results": {
            name: {
                "img_per_s": round(median[name], 2),
                "img_per_s_runs": [round(r, 2) for r in samples[name]],
                "peak_mem_mb": round(peaks[name] / 2**20, 1),
            }
            for name in runs
        },
        "ratios": {
            f"{name[0]}/a": round(median[name] / upper, 3)
            for name in runs
            if upper and not name.startswith("a_")
        },
        # Each repeat's rate over the (a) run right before it, median over repeats: drift
        # slower than one round cancels out, which the ratio of medians does not do.
        "paired_ratios": {
            f"{name[0]}/a": round(
                statistics.median(
                    r / a for r, a in zip(samples[name], samples["a_plain_synthetic"], strict=True)
                ),
                3,
            )
            for name in runs
            if upper and not name.startswith("a_")
        },
    }
    return emit(report, args.out)


if __name__ == "__main__":
    main()
