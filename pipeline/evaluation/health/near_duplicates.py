"""Near-duplicates: pairs of images whose backbone features point the same way.

Cosine similarity of every pair, computed a block of rows at a time: memory is
block x N, never N x N, and time is O(N^2) (benchmarks/inspect_scale.py projects it)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# A threshold too low for the data (digits, CIFAR: many look-alikes) would list a good part
# of all N^2/2 pairs: keep the most similar ones only, and say so.
MAX_PAIRS = 100_000


def near_duplicate_pairs(
    features: torch.Tensor, threshold: float, block_size: int = 2048
) -> tuple[list[tuple[int, int, float]], float]:
    """(i, j, cosine) for every pair i < j with cosine >= threshold, most similar first, and
    the highest cosine of any pair (how close the set came to the threshold)."""
    x = torch.nn.functional.normalize(features.float(), dim=1)
    found: list[tuple[int, int, float]] = []
    closest = -1.0
    capped = False
    for start in range(0, len(x), block_size):
        rows = x[start : start + block_size]
        sims = rows @ x[start:].T  # this block against itself and every later row
        # j > i only: the lower triangle and the diagonal repeat or pair an image with itself.
        sims = torch.triu(sims, diagonal=1)
        if sims.shape[1] > 1:
            closest = max(closest, float(sims.max()))
        i, j = torch.nonzero(sims >= threshold, as_tuple=True)
        values = sims[i, j]
        found += zip((i + start).tolist(), (j + start).tolist(), values.tolist(), strict=True)
        if len(found) > MAX_PAIRS:
            found = sorted(found, key=lambda p: -p[2])[:MAX_PAIRS]
            capped = True
    if capped:
        log.warning(
            "over %d near-duplicate pairs at cosine >= %s: kept the %d most similar; raise "
            "inspect.near_dup_threshold",
            MAX_PAIRS,
            threshold,
            MAX_PAIRS,
        )
    return sorted(found, key=lambda p: -p[2]), closest
