"""data=csv, data=cifar10/cifar100 (fake archives in the official layout), folder errors."""

import hashlib
import io
import pickle
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest

from pipeline.compose import compose
from pipeline.data.cifar import ARCHIVES, load_cifar, read_archive, unpickle_batch
from pipeline.data.config import DataConfig
from pipeline.data.splits import build_splits, run_splits
from pipeline.errors import ConfigError, DataError
from tests.conftest import write_image_folder


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_csv_with_split_column_keeps_it_and_resolves_paths_relative_to_the_csv(tmp_path):
    images = write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=6)
    rows = ["path,label,split"]
    for name in ("cat", "dog"):
        for i in range(6):
            split = "train" if i < 4 else "test"
            rows.append(f"imgs/{name}/img {i}.png,{name},{split}")
    csv_path = _csv(tmp_path / "labels.csv", rows)
    splits = build_splits(DataConfig(name="csv", root=str(csv_path), val_fraction=0.25), seed=0)
    assert splits.class_names == ["cat", "dog"]
    assert splits.sizes() == {"train": 6, "val": 2, "test": 4}  # val carved from train
    assert all(i.endswith(("img 4.png", "img 5.png")) for i in splits.test.ids)
    assert Path(splits.train.items[0]).is_file() and str(images) in splits.train.items[0]


def test_csv_split_cells_left_empty_join_train(tmp_path):
    # docs/data.md: "empty cells join train"; before, a manifest that marked only val and
    # test stopped with "the split column names no train rows".
    write_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=6)
    rows = ["path,label,split"]
    for name in ("cat", "dog"):
        for i in range(6):
            split = {4: "val", 5: "test"}.get(i, "")
            rows.append(f"imgs/{name}/img {i}.png,{name},{split}")
    csv_path = _csv(tmp_path / "labels.csv", rows)
    splits = build_splits(DataConfig(name="csv", root=str(csv_path)), seed=0)
    assert splits.sizes() == {"train": 8, "val": 2, "test": 2}


def test_csv_without_split_column_is_split_stratified(tmp_path):
    write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=10)
    rows = ["label,path"] + [f"{c},imgs/{c}/img {i}.png" for c in "ab" for i in range(10)]
    cfg = DataConfig(name="csv", root=str(_csv(tmp_path / "m.csv", rows)))
    splits = build_splits(cfg, seed=3)
    assert splits.sizes() == {"train": 12, "val": 4, "test": 4}
    assert splits.test.class_counts() == {"a": 2, "b": 2}


def test_csv_labels_pointing_to_missing_files_list_the_first_few(tmp_path):
    write_image_folder(tmp_path / "imgs", classes=("a",), per_class=2)
    rows = ["path,label", "imgs/a/img 0.png,a"] + [f"gone/{i}.png,a" for i in range(8)]
    cfg = DataConfig(name="csv", root=str(_csv(tmp_path / "m.csv", rows)))
    with pytest.raises(DataError) as err:
        build_splits(cfg, seed=0)
    message = str(err.value)
    assert "\n" not in message
    assert "8 file(s)" in message and "gone/0.png" in message and "gone/4.png" in message
    assert "gone/5.png" not in message and "(and 3 more)" in message


def test_csv_listing_an_image_twice_is_refused(tmp_path):
    # Listed twice, an image could land in train and in test: a leak no metric would show.
    write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6)
    rows = ["path,label"] + [f"imgs/{c}/img {i}.png,{c}" for c in "ab" for i in range(6)]
    cfg = DataConfig(name="csv", root=str(_csv(tmp_path / "m.csv", [*rows, rows[3]])))
    with pytest.raises(
        DataError, match=r"line 14: imgs/a/img 2.png is listed again \(first on line 4\)"
    ):
        build_splits(cfg, seed=0)


def test_one_class_and_empty_splits_fail_in_one_line(tmp_path):
    one = write_image_folder(tmp_path / "one", classes=("a",), per_class=6)
    with pytest.raises(DataError, match=r"found 1 class \['a'\]; a classifier needs 2 or more"):
        run_splits(DataConfig(name="folder", root=str(one)), seed=0)
    two = write_image_folder(tmp_path / "two", classes=("a", "b"), per_class=2)  # 0.2 x 2 -> 0
    with pytest.raises(DataError, match="the val and test split is empty") as err:
        run_splits(DataConfig(name="folder", root=str(two)), seed=0)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="the val split is empty"):
        run_splits(DataConfig(name="digits", val_fraction=0.0), seed=0)
    # K-fold pools train+val before it deals the folds: no val fraction is needed there.
    fold = run_splits(DataConfig(name="digits", val_fraction=0.0, kfold=3, fold=0), seed=0)
    assert min(fold.sizes().values()) > 300


def test_csv_row_without_a_path_names_its_line(tmp_path):
    cfg = DataConfig(
        name="csv", root=str(_csv(tmp_path / "m.csv", ["path,label", "x.png,a", ",b"]))
    )
    with pytest.raises(DataError, match=r"m\.csv line 3: empty path$"):
        build_splits(cfg, seed=0)


def test_csv_without_path_column_fails_in_one_line(tmp_path):
    cfg = DataConfig(name="csv", root=str(_csv(tmp_path / "m.csv", ["file,label", "x.png,a"])))
    with pytest.raises(DataError, match="path and label columns"):
        build_splits(cfg, seed=0)


def test_missing_root_and_empty_class_folder_name_the_path(tmp_path):
    with pytest.raises(DataError, match=f"data.root not found: {tmp_path / 'nope'}$"):
        build_splits(DataConfig(name="folder", root=str(tmp_path / "nope")), seed=0)
    (tmp_path / "labels.csv").write_text("path,label\n")
    with pytest.raises(DataError, match=r"data\.root is a file, not a folder"):
        build_splits(DataConfig(name="folder", root=str(tmp_path / "labels.csv")), seed=0)
    with pytest.raises(ConfigError, match=r"data=folder needs data\.root="):  # not "???"
        build_splits(compose(["data=folder"]).data, seed=0)
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=f"class folder has no images: {root / 'empty'}$"):
        build_splits(DataConfig(name="folder", root=str(root)), seed=0)


def test_a_class_folder_in_val_that_train_lacks_is_refused(tmp_path):
    # Its images would be dropped without a word, and the test score would cover fewer classes.
    write_image_folder(tmp_path / "imgs" / "train", classes=("ant", "bee"), per_class=4)
    write_image_folder(tmp_path / "imgs" / "val", classes=("ant", "bee", "wasp"), per_class=2)
    with pytest.raises(DataError, match=r"class folder .*val/wasp has no counterpart in the train"):
        build_splits(DataConfig(name="folder", root=str(tmp_path / "imgs")), seed=0)


def _rows_for(tmp_path: Path, classes: str = "ab", per_class: int = 6) -> list[str]:
    write_image_folder(tmp_path / "imgs", classes=tuple(classes), per_class=per_class)
    return [f"imgs/{c}/img {i}.png,{c}" for c in classes for i in range(per_class)]


def test_csv_in_utf16_with_a_byte_order_mark_is_read(tmp_path):
    rows = ["path,label", *_rows_for(tmp_path)]
    for encoding in ("utf-16", "utf-8-sig"):  # utf-16 writes a BOM; so does Excel's UTF-8
        (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding=encoding)
        splits = build_splits(DataConfig(name="csv", root=str(tmp_path / "m.csv")), seed=0)
        assert sum(splits.sizes().values()) == 12, encoding


def test_csv_not_in_utf8_names_the_line_and_the_encoding_expected(tmp_path):
    rows = ["path,label", *_rows_for(tmp_path)]
    rows[5] = rows[5].replace(",a", ",abeille é")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n", encoding="latin-1")
    cfg = DataConfig(name="csv", root=str(tmp_path / "m.csv"))
    with pytest.raises(DataError, match=r"m\.csv line 6: byte 0xe9 is not UTF-8; save it as UTF-8"):
        build_splits(cfg, seed=0)
    # UTF-16 without a byte-order mark decodes as UTF-8 full of NUL characters
    (tmp_path / "m.csv").write_bytes("\n".join(rows).encode("utf-16-le"))
    with pytest.raises(DataError, match=r"m\.csv line 1: .*UTF-16 without a byte-order mark"):
        build_splits(cfg, seed=0)


def test_csv_field_over_the_csv_modules_limit_names_its_line(tmp_path):
    rows = ["path,label", *_rows_for(tmp_path)]
    rows[3] = f"{'x' * 200_000}.png,a"
    cfg = DataConfig(name="csv", root=str(_csv(tmp_path / "m.csv", rows)))
    with pytest.raises(DataError, match=r"m\.csv line 4: field larger than field limit") as err:
        build_splits(cfg, seed=0)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_csv_with_a_column_named_twice_is_refused(tmp_path):
    # csv.DictReader keeps the last of two "label" columns without a word.
    rows = ["path,label,Label", *(f"{row},b" for row in _rows_for(tmp_path))]
    cfg = DataConfig(name="csv", root=str(_csv(tmp_path / "m.csv", rows)))
    with pytest.raises(DataError, match=r"m\.csv: column 'label' appears twice in the header"):
        build_splits(cfg, seed=0)


# --- CIFAR ----------------------------------------------------------------------------------


def _batch(n: int, label_key: str, classes: int, seed: int) -> bytes:
    """A batch pickled like the official ones: a dict with bytes keys, protocol 2."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(classes, size=n).tolist()
    data = np.zeros((n, 3072), dtype=np.uint8)
    for i, label in enumerate(labels):  # red plane = label, so the decode can be checked
        data[i, :1024] = label
        data[i, 1024:2048] = 200
    batch = {b"batch_label": b"fake", label_key.encode(): labels, b"data": data}
    return pickle.dumps(batch, protocol=2)


def make_fake_cifar(root: Path, name: str, n: int = 12) -> Path:
    spec = ARCHIVES[name]
    classes = 10 if name == "cifar10" else 100
    names = [f"class{i}".encode() for i in range(classes)]
    members = {spec.meta: pickle.dumps({spec.names_key.encode(): names}, protocol=2)}
    for i, batch in enumerate((*spec.train, *spec.test)):
        members[batch] = _batch(n, spec.label_key, classes, seed=i)
    root.mkdir(parents=True, exist_ok=True)
    path = root / spec.filename
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(f"{spec.folder}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_fake_cifar_archive_reads_as_rgb_images(tmp_path, name):
    path = make_fake_cifar(tmp_path, name)
    train, test = load_cifar(name, tmp_path, verify=False)
    n_train = 12 * len(ARCHIVES[name].train)
    assert len(train) == n_train and len(test) == 12
    assert len(train.class_names) == (10 if name == "cifar10" else 100)
    assert train.class_names[3] == "class3"
    image = train.items[5]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.flags.c_contiguous
    assert (image[..., 0] == train.labels[5]).all() and (image[..., 1] == 200).all()
    assert path.is_file()


def test_cifar_through_the_config_uses_the_official_test_batch(tmp_path, monkeypatch):
    make_fake_cifar(tmp_path, "cifar10")
    fake = ARCHIVES["cifar10"]
    md5 = hashlib.md5((tmp_path / fake.filename).read_bytes()).hexdigest()
    monkeypatch.setitem(ARCHIVES, "cifar10", type(fake)(**{**fake.__dict__, "md5": md5}))
    cfg = compose(["data=cifar10", f"data.root={tmp_path}"])
    splits = build_splits(cfg.data, seed=0)
    sizes = splits.sizes()
    assert sizes["train"] + sizes["val"] == 60 and 4 <= sizes["val"] <= 9  # 10%, per class
    assert sizes["test"] == 12
    assert all(i.startswith("cifar-10-batches-py/test/") for i in splits.test.ids)


def test_cifar_checksum_mismatch_fails_in_one_line(tmp_path):
    path = make_fake_cifar(tmp_path, "cifar10")
    with pytest.raises(DataError, match=f"checksum mismatch for {path}: md5 .*, expected c58f"):
        load_cifar("cifar10", tmp_path)


def test_cifar_offline_names_the_file_to_place(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("pipeline.data.cifar.urlopen", offline)
    with pytest.raises(DataError) as err:
        load_cifar("cifar100", tmp_path / "data")
    message = str(err.value)
    assert "\n" not in message
    assert f"place it at {tmp_path / 'data' / 'cifar-100-python.tar.gz'}" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert not list((tmp_path / "data").iterdir())  # no half-written archive left behind


def test_cifar_unpickler_refuses_anything_but_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(
        pickle.UnpicklingError, match=r"refusing to load (__builtin__|builtins)\.print"
    ):
        unpickle_batch(pickle.dumps({b"data": Evil()}, protocol=2))
    spec = ARCHIVES["cifar10"]
    path = tmp_path / spec.filename
    with tarfile.open(path, "w:gz") as tar:
        data = pickle.dumps({b"data": Evil()}, protocol=2)
        info = tarfile.TarInfo(f"{spec.folder}/{spec.meta}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="refusing to load"):
        read_archive(path, spec)
