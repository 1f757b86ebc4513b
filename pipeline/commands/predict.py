"""stage=predict: label new images with a trained run; writes predictions.csv.

`input=` is one image or a folder (searched recursively). Files that are not images, or that
do not decode, are skipped with one line each; the rest are predicted in batches.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from pipeline.commands.trained_run import applied_temperature, load_trained
from pipeline.config import RunConfig
from pipeline.data.decode import read_images
from pipeline.data.sources import list_images
from pipeline.errors import ConfigError, DataError
from pipeline.evaluation.evaluate import check_tta, tta_probs
from pipeline.training.precision import resolve_amp

SHOWN_ROWS = 20


def _short(path: Path, width: int = 40) -> str:
    text = str(path)
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def run_predict(cfg: RunConfig, out_dir: Path) -> Path:
    if not cfg.input:
        raise ConfigError("stage=predict needs input=<image file or folder>")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, skipped = list_images(cfg.input)
    trained = load_trained(cfg, out_dir)
    check_tta(cfg.eval.tta, trained.cfg.augment.hflip)
    temperature = applied_temperature(cfg.eval.calibrate, trained)
    loaded, unreadable = read_images(paths, trained.decode_size)
    for path, reason in skipped + unreadable:
        print(f"skipped {path}: {reason}")
    if not loaded:
        raise DataError(f"no readable images in {cfg.input}")

    names = trained.class_names
    k = min(cfg.eval.topk, len(names))
    amp_dtype = resolve_amp(trained.cfg.train.amp, trained.device)
    batch_size = trained.cfg.data.eval_batch_size or 2 * trained.cfg.data.batch_size
    chunk_probs = []
    for start in range(0, len(loaded), batch_size):
        chunk = [trained.preprocess(image) for _, image in loaded[start : start + batch_size]]
        x = trained.to_input(torch.stack(chunk))
        chunk_probs.append(
            tta_probs(trained.model, x, cfg.eval.tta, amp_dtype, temperature).cpu().numpy()
        )
    probs = np.concatenate(chunk_probs)
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]

    csv_path = out_dir / "predictions.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["path"] + [col for i in range(1, k + 1) for col in (f"label_{i}", f"prob_{i}")]
        )
        for (path, _), p, idx in zip(loaded, probs, top, strict=True):
            writer.writerow([str(path)] + [v for j in idx for v in (names[j], f"{p[j]:.6f}")])

    shown = min(3, k)
    header = f"{'image':<40}  " + "  ".join(f"{'top' + str(i + 1):<18}" for i in range(shown))
    print(header)
    for (path, _), p, idx in list(zip(loaded, probs, top, strict=True))[:SHOWN_ROWS]:
        cells = "  ".join(f"{names[j][:11]:<11} {p[j]:.4f}"[:18].ljust(18) for j in idx[:shown])
        print(f"{_short(path):<40}  {cells}")
    if len(loaded) > SHOWN_ROWS:
        print(f"... {len(loaded) - SHOWN_ROWS} more")
    if temperature != 1:
        print(f"probabilities calibrated at the run's temperature {temperature:.3f}")
    print(
        f"wrote {len(loaded)} predictions to {csv_path} ({len(skipped) + len(unreadable)} skipped)"
    )
    return csv_path
