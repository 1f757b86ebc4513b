"""What the post-hoc toggles give on a data set: temperature scaling and each `eval.tta` mode.

Per seed, one `stage=train` (with the pipeline overrides after `--`) trains the model; its
checkpoint then scores the val and test splits on every TTA view once (the image and its
mirror, the five crops and their mirrors: 12 views), and each mode reads its views from
those. For each mode the temperature is fitted on val, as `eval.calibrate=temperature` does,
and the test split's accuracy, NLL and ECE are reported before and after it. The summary has
the mean and standard deviation over seeds and the mean paired difference to `eval.tta=none`.

    python benchmarks/posthoc_gains.py --seeds 0 1 2 --out benchmarks/results/posthoc.json -- \
        data=folder data.root=../shared/data/hymenoptera_data finetune=frozen \
        train.cache_features=true augment=none
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("none", "flip", "five_crop", "five_crop_flip")


def _views(logits_flip, logits_crops, mode: str):
    """A mode's (V, N, C) logits from the 2 flip views and the 10 five-crop(+mirror) views."""
    return {
        "none": logits_flip[:1],
        "flip": logits_flip,
        "five_crop": logits_crops[:5],
        "five_crop_flip": logits_crops,
    }[mode]


def score_modes(trained, threads: int) -> dict[str, dict[str, float]]:
    import torch

    from pipeline.data.loader import ImageDataset, build_loader
    from pipeline.evaluation.calibration import calibration_metrics, fit_temperature
    from pipeline.evaluation.evaluate import predict_logits, probs_from_logits
    from pipeline.training.precision import resolve_amp

    torch.set_num_threads(threads)
    splits, cfg = trained.splits(), trained.cfg
    amp = resolve_amp(cfg.train.amp, trained.device)
    logits = {}
    for split in ("val", "test"):
        loader = build_loader(
            ImageDataset(getattr(splits, split), trained.eval_transform, trained.decode_size),
            cfg.data.eval_batch_size or 2 * cfg.data.batch_size,
            train=False,
            num_workers=cfg.data.num_workers,
            seed=cfg.seed,
        )
        flip, targets = predict_logits(trained.model, loader, trained.batches(), amp, "flip")
        crops, _ = predict_logits(trained.model, loader, trained.batches(), amp, "five_crop_flip")
        logits[split] = (flip, crops, targets)
    results = {}
    for mode in MODES:
        val = _views(*logits["val"][:2], mode)
        test, targets = _views(*logits["test"][:2], mode), logits["test"][2]
        temperature = fit_temperature(val, logits["val"][2])
        probs = probs_from_logits(test)
        results[mode] = {
            "test/acc": float((probs.argmax(1) == targets).float().mean()),
            "calibration/temperature": temperature,
            **calibration_metrics("test", test, targets, temperature),
        }
    return results


def summarize(per_seed: dict[int, dict[str, dict[str, float]]]) -> dict:
    seeds = sorted(per_seed)
    summary: dict = {}
    for mode in MODES:
        keys = per_seed[seeds[0]][mode]
        summary[mode] = {}
        for key in keys:
            values = np.array([per_seed[s][mode][key] for s in seeds])
            base = np.array([per_seed[s]["none"][key] for s in seeds])
            summary[mode][key] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(seeds) > 1 else 0.0,
                "mean_diff_vs_none": float((values - base).mean()),
            }
    return summary


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(own)

    from pipeline.commands.train import run_train
    from pipeline.commands.trained_run import load_trained
    from pipeline.compose import compose

    per_seed = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            run_overrides = [
                *overrides,
                f"seed={seed}",
                f"train.threads={args.threads}",
                "tracking.enabled=false",
            ]
            out = Path(tmp) / f"seed{seed}"
            result = run_train(compose(run_overrides), out)
            checkpoint = f"checkpoint={result.fit.checkpoint}"
            trained = load_trained(compose([*run_overrides, "stage=evaluate", checkpoint]), out)
            per_seed[seed] = score_modes(trained, args.threads)
    report = {
        "overrides": overrides,
        "seeds": args.seeds,
        "per_seed": per_seed,
        "summary": summarize(per_seed),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
