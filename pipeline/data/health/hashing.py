"""Content hashes of images, cheap enough for every training run.

Files are hashed by their bytes, not their decoded pixels: no decoding (hashing 400 JPEGs
takes milliseconds where decoding them takes seconds), and a file copied into two split
folders, the usual way test images leak into training, has the very same bytes. A re-encoded
or resized copy hashes differently; that is the near-duplicate check's job. Arrays (digits,
CIFAR) are hashed by shape, dtype and pixels.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHUNK = 1 << 20


def content_hash(item: np.ndarray | str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(item, str):
        with open(item, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    else:
        array = np.ascontiguousarray(item)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def content_hashes(items: Sequence[np.ndarray | str], workers: int | None = None) -> list[str]:
    """One hash per item, in order. Threads: hashlib and file reads release the GIL."""
    workers = workers or min(8, os.cpu_count() or 1)
    if len(items) < 64 or workers == 1:
        return [content_hash(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(content_hash, items, chunksize=64))
