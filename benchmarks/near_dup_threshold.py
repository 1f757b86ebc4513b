"""Where to put inspect.near_dup_threshold: backbone cosine of copies vs different photos.

Embeds every image of a folder (the ants/bees set by default) with the frozen backbone as
stage=inspect does, plus `--copies` of them re-saved three ways (JPEG quality 90; 0.8x and
quality 85; 0.6x and quality 75), and prints the highest cosine between two different
originals next to each edit's min/median cosine to its original.

    python benchmarks/near_dup_threshold.py [--data DIR] [--copies 20] [--out FILE]
        [extra Hydra overrides, e.g. backbone.img_size=96]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from benchmarks.report import emit  # noqa: E402
from pipeline.compose import compose  # noqa: E402
from pipeline.data.sources import IMAGE_EXTENSIONS, ImageSet  # noqa: E402
from pipeline.models.backbone import create_backbone  # noqa: E402
from pipeline.training.features import image_features  # noqa: E402
from pipeline.training.precision import resolve_device  # noqa: E402

EDITS = {"q90": (1.0, 90), "0.8x_q85": (0.8, 85), "0.6x_q75": (0.6, 75)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared/data/hymenoptera_data")
    p.add_argument("--copies", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = compose(["data.num_workers=0", *args.overrides])
    originals = sorted(
        str(p) for p in args.data.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS - {".gif"}
    )
    chosen = originals[:: max(1, len(originals) // args.copies)][: args.copies]
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for edit, (scale, quality) in EDITS.items():
            for i, path in enumerate(chosen):
                image = Image.open(path).convert("RGB")
                size = (round(image.width * scale), round(image.height * scale))
                copy = Path(tmp) / f"{edit}_{i}.jpg"
                image.resize(size, Image.Resampling.BILINEAR).save(copy, quality=quality)
                copies.append(str(copy))
        items = originals + copies
        backbone, spec, _ = create_backbone(cfg.backbone, global_pool=cfg.head.pool)
        features = image_features(
            backbone,
            spec,
            ImageSet(items, np.zeros(len(items), dtype=np.int64), ["all"]),
            cfg.data.eval_batch_size or 2 * cfg.data.batch_size,
            0,
            resolve_device(cfg.train.device),
        )
    x = torch.nn.functional.normalize(features, dim=1)
    n, k = len(originals), len(chosen)
    sims = x @ x.T
    distinct = torch.triu(sims[:n, :n], diagonal=1)
    top = sorted(distinct.flatten().tolist())[-5:]
    index = [originals.index(p) for p in chosen]
    edits = {}
    for e, edit in enumerate(EDITS):
        to_original = [float(sims[index[i], n + e * k + i]) for i in range(k)]
        edits[edit] = {
            "min": round(min(to_original), 3),
            "median": round(float(np.median(to_original)), 3),
            "max": round(max(to_original), 3),
        }
    return emit(
        {
            "benchmark": "near_dup_threshold",
            "data": str(args.data),
            "images": n,
            "copies_per_edit": k,
            "backbone": cfg.backbone.name,
            "img_size": spec.img_size,
            "distinct_top5": [round(t, 3) for t in top],
            "copy_to_original": edits,
            "loadavg": os.getloadavg(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
