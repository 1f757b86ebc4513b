"""The on-disk feature cache (`data.feature_cache`): where frozen-backbone features live and
how they are keyed, so stage=inspect, baseline, screen, finetune=auto's probe and
`train.cache_features` run the backbone over an image once, not once per stage.

One file per namespace, `<dir>/<model>-<size>px-<digest>.pt` = {"keys", "features" (N, D)
float32, "seconds", "computed"}. The namespace digest covers everything a feature depends on
besides the image: the backbone's weights and buffers (every state_dict tensor's bytes), its
architecture and pooling (`repr`), the eval transform (size, crop, interpolation, mean, std),
the AMP dtype and the device type. An item's key is, for a file, its absolute path, size,
mtime and ctime (as make decides, plus ctime, which a copy that keeps mtime still changes);
for an in-memory array (digits, CIFAR), a digest of its bytes and shape. So any subset of
images hits: inspect reads every split at once, the baseline one split at a time.

A cache is only ever a shortcut: an unreadable file is ignored with a warning and rewritten,
a failed write is a warning, and writes are atomic (tmp file + os.replace), so a reader never
sees half a file. Two processes writing one namespace at once may drop each other's new
entries (each merges what it finds on disk just before writing); those are recomputed later.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.data.sources import ImageSet
from pipeline.models.backbone import InputSpec
from pipeline.training.features import image_features

log = logging.getLogger(__name__)

# Raise it when what a feature means changes without any key changing (the eval transform's
# code, the pooled output): every old file then sits in another namespace, unused.
FORMAT = 1


def namespace(
    backbone: nn.Module,
    spec: InputSpec,
    crop_pct: float,
    amp_dtype: torch.dtype | None,
    device: torch.device,
) -> str:
    """The file name (without .pt) of the features this backbone and transform produce."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(repr(backbone).encode())
    for name, tensor in backbone.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {flat.dtype} {tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())  # raw bytes, any dtype (bf16 too)
    transform = (spec.img_size, crop_pct, spec.interpolation, tuple(spec.mean), tuple(spec.std))
    digest.update(repr((transform, str(amp_dtype), device.type, FORMAT)).encode())
    return f"{type(backbone).__name__.lower()}-{spec.img_size}px-{digest.hexdigest()}"


def item_key(item: np.ndarray | str) -> str | None:
    """What identifies one image's pixels; None when a file cannot be stat'ed (never cached:
    reading it fails or skips as it would without the cache)."""
    if isinstance(item, str):
        path = os.path.abspath(item)
        try:
            st = os.stat(path)
        except OSError:
            return None
        return f"file:{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    array = np.ascontiguousarray(item)
    digest = hashlib.blake2b(array.data, digest_size=16)
    digest.update(f"{array.dtype} {array.shape}".encode())
    return f"array:{digest.hexdigest()}"


class FeatureStore:
    """One namespace's features, loaded whole; `save` writes it back atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.keys: list[str] = []
        self.features: torch.Tensor | None = None
        self.seconds, self.computed = 0.0, 0  # backbone time spent on the stored entries
        self._seen = self._stat()  # the file as read: a change means another writer
        stored = self._read()
        if stored is not None:
            self.keys, self.features = stored["keys"], stored["features"]
            self.seconds, self.computed = stored["seconds"], stored["computed"]
        self.index = {key: row for row, key in enumerate(self.keys)}

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def _read(self) -> dict | None:
        if self._seen is None:
            return None
        try:
            stored = torch.load(self.path, map_location="cpu", weights_only=True)
            keys, features = stored["keys"], stored["features"]
            if not (
                isinstance(features, torch.Tensor)
                and features.dtype == torch.float32
                and features.ndim == 2
                and isinstance(keys, list)
                and len(keys) == len(features)
            ):
                raise ValueError("not a keys/features pair of equal length")
            return {
                "keys": keys,
                "features": features,
                "seconds": float(stored.get("seconds", 0.0)),
                "computed": int(stored.get("computed", 0)),
            }
        except Exception as exc:  # any unreadable cache is only a cache: recompute
            log.warning(
                "ignoring unreadable feature cache %s (%s): it will be rewritten",
                self.path,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return None

    def rows(self, keys: list[str | None]) -> list[int | None]:
        return [self.index.get(key) if key is not None else None for key in keys]

    def add(self, keys: list[str], features: torch.Tensor, seconds: float, computed: int) -> None:
        """Append the rows of keys not stored yet; `seconds` of backbone time made `computed`
        of them (0 for rows taken over from another writer's file)."""
        new = []
        for row, key in enumerate(keys):
            if key not in self.index:
                self.index[key] = len(self.keys)
                self.keys.append(key)
                new.append(row)
        if new:
            added = features[torch.tensor(new, dtype=torch.long)].float().contiguous()
            self.features = added if self.features is None else torch.cat([self.features, added])
        self.seconds, self.computed = self.seconds + seconds, self.computed + computed

    def _merge_concurrent(self) -> None:
        """Keep what another process wrote since this one read the file."""
        if self._stat() == self._seen:
            return
        other = FeatureStore(self.path)
        if other.features is not None:
            self.add(other.keys, other.features, 0.0, 0)

    def save(self) -> None:
        self._merge_concurrent()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            state = {"keys": self.keys, "features": self.features}
            torch.save(state | {"seconds": self.seconds, "computed": self.computed}, tmp)
            os.replace(tmp, self.path)
        # A full disk or a read-only folder costs the cache, not the run (torch's zip writer
        # reports a failed write as a RuntimeError).
        except (OSError, RuntimeError) as exc:
            with contextlib.suppress(OSError):  # not there, or no folder to be in
                tmp.unlink()
            log.warning("feature cache not saved to %s: %s", self.path, exc)
            return
        self._seen = self._stat()


@dataclass
class CachedFeatures:
    features: torch.Tensor  # (N, D) float32 on the CPU, in the images' order
    from_cache: int  # how many of the N rows were read, not computed
    path: Path | None  # the namespace file; None with the cache off
    seconds_per_image: float  # backbone time per computed image (stored history if none now)


def cached_image_features(
    cache_dir: str | Path | None,
    backbone: nn.Module,
    spec: InputSpec,
    images: ImageSet,
    batch_size: int,
    num_workers: int | None,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    crop_pct: float | None = None,
) -> CachedFeatures:
    """`image_features` of `images`, the rows already in the cache read from it and only
    the rest computed (then added). `cache_dir` None: no cache, everything computed."""
    crop_pct = crop_pct or spec.crop_pct
    if cache_dir is None or not len(images):
        start = time.perf_counter()
        every = image_features(
            backbone, spec, images, batch_size, num_workers, device, amp_dtype, crop_pct
        )
        seconds = (time.perf_counter() - start) / max(len(images), 1)
        return CachedFeatures(every, 0, None, seconds)

    store = FeatureStore(
        Path(cache_dir) / f"{namespace(backbone, spec, crop_pct, amp_dtype, device)}.pt"
    )
    keys = [item_key(item) for item in images.items]
    rows = store.rows(keys)
    missing = [i for i, row in enumerate(rows) if row is None]
    hits = len(images) - len(missing)
    features: torch.Tensor | None = None
    if hits:
        assert store.features is not None  # rows were found in it
        found = torch.tensor([row for row in rows if row is not None], dtype=torch.long)
        stored = store.features[found]
        features = torch.empty(len(images), stored.shape[1], dtype=torch.float32)
        hit = torch.tensor([row is not None for row in rows])
        features[hit] = stored
    seconds_per_image = store.seconds / store.computed if store.computed else float("nan")
    if missing:
        start = time.perf_counter()
        computed = image_features(
            backbone,
            spec,
            images.subset(np.asarray(missing)),
            batch_size,
            num_workers,
            device,
            amp_dtype,
            crop_pct,
        )
        seconds = time.perf_counter() - start
        seconds_per_image = seconds / len(missing)
        if features is None:
            features = computed
        else:
            features[torch.tensor(missing, dtype=torch.long)] = computed
        keep = [j for j, i in enumerate(missing) if keys[i] is not None]
        if keep:
            store.add(
                [keys[missing[j]] for j in keep],  # type: ignore[misc]  # None left out
                computed[torch.tensor(keep, dtype=torch.long)],
                seconds * len(keep) / len(missing),
                len(keep),
            )
            store.save()
    log.info("features: %d of %d from the cache %s", hits, len(images), store.path)
    assert features is not None  # images is not empty: hits or computed rows
    return CachedFeatures(features, hits, store.path, seconds_per_image)
