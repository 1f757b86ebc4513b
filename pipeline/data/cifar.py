"""`data=cifar10|cifar100`: the official "python version" archives, read without torchvision.

The archive is downloaded once into `data.root` (default `data/`), checked against the md5
published on https://www.cs.toronto.edu/~kriz/cifar.html, and read straight from the
tar.gz (nothing is extracted). The batches are pickles; they are loaded with an unpickler
that can build numpy arrays and nothing else, so a tampered archive cannot run code.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import numpy as np

from pipeline.data.sources import ImageSet
from pipeline.errors import DataError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 10  # per socket operation: offline fails fast


@dataclass(frozen=True)
class CifarArchive:
    filename: str
    url: str
    md5: str
    folder: str  # top-level folder inside the tar
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str


ARCHIVES = {
    "cifar10": CifarArchive(
        filename="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": CifarArchive(
        filename="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled numpy array needs; anything else is refused."""

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles store bytes
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def unpickle_batch(data: bytes) -> dict[str, object]:
    """A CIFAR batch pickle (written by Python 2) -> dict with str keys."""
    import io

    batch = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(batch, dict):
        raise pickle.UnpicklingError("a CIFAR batch must be a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_archive(spec: CifarArchive, root: Path) -> Path:
    """The archive in `root`, downloaded first if it is not there yet."""
    path = root / spec.filename
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    log.info("downloading %s to %s", spec.url, path)
    try:
        with urlopen(spec.url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as f:
            while chunk := response.read(1 << 20):
                f.write(chunk)
    except (URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"cannot download {spec.url} ({reason}); offline, download it elsewhere and place "
            f"it at {path}"
        ) from exc
    part.replace(path)  # only a complete download gets the real name
    return path


def read_archive(path: Path, spec: CifarArchive) -> tuple[ImageSet, ImageSet]:
    """Train and test ImageSets (uint8 32x32 RGB arrays) from an official-layout tar.gz."""
    wanted = {f"{spec.folder}/{name}": name for name in (*spec.train, *spec.test, spec.meta)}
    found: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # one pass: a gzip stream is slow to seek in
                if member.name in wanted and member.isfile():
                    data = tar.extractfile(member)
                    assert data is not None  # None only for members that are not files
                    found[wanted[member.name]] = unpickle_batch(data.read())
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise DataError(f"cannot read {path}: {exc}; delete it and download it again") from exc
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise DataError(f"{path} lacks {', '.join(f'{spec.folder}/{m}' for m in missing)}")
    names = [
        n.decode() if isinstance(n, bytes) else str(n) for n in found[spec.meta][spec.names_key]
    ]

    def images(batches: tuple[str, ...], split: str) -> ImageSet:
        data = np.concatenate([np.asarray(found[b]["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(found[b][spec.label_key]) for b in batches])
        # Rows hold the R, G and B planes; one contiguous copy so every image is too.
        hwc = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ids = [f"{spec.folder}/{split}/{i}" for i in range(len(hwc))]
        return ImageSet(list(hwc), labels.astype(np.int64), names, ids)

    return images(spec.train, "train"), images(spec.test, "test")


def load_cifar(name: str, root: Path, *, verify: bool = True) -> tuple[ImageSet, ImageSet]:
    """Fetch (if needed), check and read CIFAR-10/100; `verify=False` skips the md5 check."""
    spec = ARCHIVES[name]
    path = fetch_archive(spec, root)
    if verify and (actual := md5sum(path)) != spec.md5:
        raise DataError(
            f"checksum mismatch for {path}: md5 {actual}, expected {spec.md5}; "
            f"delete it and download it again"
        )
    return read_archive(path, spec)
