"""A user's own images: image folders, arrays and the published CIFAR / SVHN files, found on disk.

Nothing here downloads anything: each loader reads files the user has, and a missing file is
one error line naming the file expected and where it is published.

- **Image folders** (PNG/JPEG through Pillow): ``root/<class>/*.png`` gives labelled images
  (classes in sorted order of the sub-folder names); a folder of images without sub-folders
  gives an unlabelled set. Grayscale images stay one channel unless some image of the set is
  colour (then all are RGB), or ``channels`` says otherwise. Images are resized only when
  ``resize`` is given; mixed sizes without it are an error naming two files.
- **Arrays**: ``.npy`` / ``.npz`` (see :func:`oodlab.data.arrays.load_image_array`); a ``.npy``
  file may be memory-mapped, so a set larger than memory is read batch by batch.
- **CIFAR-10/100**: the *binary* version (``cifar-10-batches-bin/``, ``cifar-100-binary/``):
  fixed-size records, read with NumPy, never unpickled.
- **SVHN**: the cropped-digits ``.mat`` files (``train_32x32.mat``, ``test_32x32.mat``), read
  with ``scipy.io.loadmat`` (label 10 means digit 0, as published).

:func:`load_data` turns one command-line data spec into an :class:`ImageSet`;
:class:`ImageFolderDataset` decodes a folder lazily for a ``torch.utils.data.DataLoader``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from oodlab.data.arrays import load_image_array
from oodlab.data.imageset import ImageSet
from oodlab.errors import OodlabError

#: File suffixes read as images (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")

Size = tuple[int, int]


def _as_size(resize: int | Sequence[int] | None) -> Size | None:
    if resize is None:
        return None
    if isinstance(resize, int):
        size = (resize, resize)
    else:
        size = tuple(int(v) for v in resize)  # type: ignore[assignment]
    if len(size) != 2 or min(size) < 1:
        raise OodlabError(f"resize takes a side or (height, width) of positive integers, got {resize!r}")
    return size  # type: ignore[return-value]


def list_image_files(root: str | os.PathLike[str]) -> tuple[list[Path], list[int] | None, list[str]]:
    """The image files under ``root``, their labels and the class names.

    Returns:
        ``(files, labels, classes)``: with class sub-folders, files of every class in sorted
        order, their label indices and the sorted class names; without, the folder's images in
        sorted order, ``None`` and ``[]``.

    Raises:
        OodlabError: ``root`` missing or not a folder, or no image in it.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise OodlabError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise OodlabError(f"{root} is not a folder of images")

    def images_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        files: list[Path] = []
        labels: list[int] = []
        classes = [d.name for d in subdirs]
        for i, d in enumerate(subdirs):
            found = images_in(d)
            files += found
            labels += [i] * len(found)
        if files:
            return files, labels, classes
    files = images_in(root)
    if not files:
        raise OodlabError(
            f"no images in {root}: expected {', '.join(IMAGE_SUFFIXES)} files, in one sub-folder per "
            "class or directly in the folder"
        )
    return files, None, []


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise OodlabError(f"{path}: not a readable PNG/JPEG image ({e})") from None
    return img


def image_to_array(img: Image.Image, channels: int, resize: Size | None = None) -> np.ndarray:
    """A Pillow image as ``uint8`` ``(C, H, W)`` with ``channels`` 1 or 3 (alpha dropped)."""
    img = img.convert("L" if channels == 1 else "RGB")
    if resize is not None and img.size != (resize[1], resize[0]):
        img = img.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _probe(files: Sequence[Path], channels: int | None, resize: Size | None) -> tuple[int, Size]:
    """Channels and size of a set of files, from their headers only (no decoding)."""
    first: tuple[Path, Size] | None = None
    colour = False
    for f in files:
        try:
            with Image.open(f) as img:
                size = (img.size[1], img.size[0])
                colour = colour or img.mode not in _GRAY_MODES
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise OodlabError(f"{f}: not a readable PNG/JPEG image ({e})") from None
        if first is None:
            first = (f, size)
        elif resize is None and size != first[1]:
            raise OodlabError(
                f"images of different sizes: {first[0]} is {first[1][1]}x{first[1][0]}, {f} is "
                f"{size[1]}x{size[0]}; pass resize (--resize HxW) to bring them to one size"
            )
    assert first is not None
    if channels is not None and channels not in (1, 3):
        raise OodlabError(f"channels must be 1 or 3, got {channels}")
    return (channels or (3 if colour else 1)), (resize or first[1])


def load_image_folder(
    root: str | os.PathLike[str],
    name: str | None = None,
    *,
    resize: int | Sequence[int] | None = None,
    channels: int | None = None,
) -> ImageSet:
    """All PNG/JPEG images under ``root`` as one ``uint8`` :class:`ImageSet` (see the module doc).

    Args:
        root: A folder with one sub-folder per class, or a folder of images.
        name: Name of the set; default the folder's name.
        resize: Side or ``(height, width)`` every image is resized to (bilinear); default none.
        channels: 1 (grayscale) or 3 (RGB); default 1 unless some image is colour.

    Raises:
        OodlabError: Missing folder, no images, an unreadable file, or mixed sizes without ``resize``.
    """
    files, labels, _ = list_image_files(root)
    c, size = _probe(files, channels, _as_size(resize))
    x = np.empty((len(files), c, *size), dtype=np.uint8)
    for i, f in enumerate(files):
        with _open(f) as img:
            x[i] = image_to_array(img, c, size)
    return ImageSet(
        name or Path(root).expanduser().resolve().name, x, None if labels is None else np.array(labels)
    )


class ImageFolderDataset(torch.utils.data.Dataset):
    """An image folder decoded one file at a time, for a ``DataLoader`` over data larger than memory.

    Items are ``(image, label)``: a float32 ``(C, H, W)`` tensor in [0, 1] (as
    :meth:`ImageSet.tensor` gives) and the class index (``-1`` for an unlabelled folder). Channels
    and size are fixed up front from the files' headers, exactly as :func:`load_image_folder`
    fixes them, so both give the same pixels.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        resize: int | Sequence[int] | None = None,
        channels: int | None = None,
    ) -> None:
        self.files, labels, self.classes = list_image_files(root)
        self.labels = labels if labels is not None else [-1] * len(self.files)
        self.channels, self.size = _probe(self.files, channels, _as_size(resize))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with _open(self.files[i]) as img:
            a = image_to_array(img, self.channels, self.size)
        return torch.from_numpy(a.astype(np.float32) / np.float32(255.0)), self.labels[i]


# -- CIFAR-10/100 (binary version) and SVHN (.mat) --------------------------------------------

_CIFAR_FILES = {
    ("cifar10", "train"): [f"data_batch_{i}.bin" for i in range(1, 6)],
    ("cifar10", "test"): ["test_batch.bin"],
    ("cifar100", "train"): ["train.bin"],
    ("cifar100", "test"): ["test.bin"],
}
_CIFAR_DIRS = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary"}


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise OodlabError(f"split must be 'train' or 'test', got {split!r}")


def load_cifar(root: str | os.PathLike[str], which: str = "cifar10", split: str = "test") -> ImageSet:
    """CIFAR-10 or CIFAR-100 from the published *binary* files under ``root``.

    ``root`` is the extracted folder (``cifar-10-batches-bin`` / ``cifar-100-binary``) or its
    parent. CIFAR-10 records are 1 label byte + 3072 pixel bytes; CIFAR-100 records are a coarse
    and a fine label byte + 3072; the fine label is used.

    Returns:
        ``uint8`` images ``(N, 3, 32, 32)`` with labels.

    Raises:
        OodlabError: A missing file (named, with where the archive is published) or a file whose
            size is not a whole number of records.
    """
    if which not in _CIFAR_DIRS:
        raise OodlabError(f"unknown CIFAR variant {which!r}; expected cifar10 or cifar100")
    _check_split(split)
    base = Path(root).expanduser()
    if (base / _CIFAR_DIRS[which]).is_dir():
        base = base / _CIFAR_DIRS[which]
    url = _CIFAR10_URL if which == "cifar10" else _CIFAR100_URL
    n_label = 1 if which == "cifar10" else 2
    record = n_label + 3072
    xs, ys = [], []
    for fname in _CIFAR_FILES[(which, split)]:
        f = base / fname
        if not f.is_file():
            raise OodlabError(
                f"{which} {split} file {f} is missing; extract the binary version ({url}) into {base}"
            )
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise OodlabError(f"{f} is not a {which} binary file ({raw.size} bytes, records of {record})")
        rows = raw.reshape(-1, record)
        ys.append(rows[:, n_label - 1].astype(np.int64))
        xs.append(rows[:, n_label:].reshape(-1, 3, 32, 32))
    return ImageSet(f"{which}-{split}", np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys))


def load_svhn(root: str | os.PathLike[str], split: str = "test") -> ImageSet:
    """SVHN (cropped digits) from ``train_32x32.mat`` / ``test_32x32.mat`` under ``root``
    (a folder, or the ``.mat`` file itself). Label 10 is mapped to digit 0.

    Returns:
        ``uint8`` images ``(N, 3, 32, 32)`` with labels 0-9.
    """
    import scipy.io

    _check_split(split)
    p = Path(root).expanduser()
    f = p if p.is_file() else p / f"{split}_32x32.mat"
    if not f.is_file():
        raise OodlabError(f"SVHN {split} file {f} is missing; download {split}_32x32.mat from {_SVHN_URL}")
    try:
        mat = scipy.io.loadmat(f)
        x, y = mat["X"], mat["y"]
    except (OSError, ValueError, KeyError, NotImplementedError, TypeError) as e:
        raise OodlabError(f"{f} is not an SVHN .mat file with arrays X and y ({e})") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise OodlabError(f"{f}: X has shape {x.shape} and dtype {x.dtype}, expected (32, 32, 3, N) uint8")
    labels = np.asarray(y, dtype=np.int64).reshape(-1) % 10
    if len(labels) != x.shape[3]:
        raise OodlabError(f"{f}: {x.shape[3]} images but {len(labels)} labels")
    return ImageSet(f"svhn-{split}", np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels)


#: Data spec prefixes of :func:`load_data`.
KINDS = ("folder", "npy", "cifar10", "cifar100", "svhn")


def load_data(
    spec: str | os.PathLike[str],
    name: str | None = None,
    *,
    resize: int | Sequence[int] | None = None,
    channels: int | None = None,
    mmap: bool = False,
) -> ImageSet:
    """One data spec → an :class:`ImageSet`.

    Specs: a folder of images (``photos/``), a ``.npy``/``.npz`` file, or ``KIND:SPLIT:PATH``
    for the published formats: ``cifar10:test:data/cifar-10-batches-bin``,
    ``cifar100:train:data/``, ``svhn:test:data/svhn``.

    Args:
        spec: The spec.
        name: Name of the set (default from the path).
        resize: Resize folder images to this side or ``(height, width)``.
        channels: Force 1 or 3 channels for folder images.
        mmap: Memory-map a ``.npy`` file instead of reading it (streams batch by batch).
    """
    s = str(spec)
    kind, _, rest = s.partition(":")
    if kind in ("cifar10", "cifar100", "svhn") and rest:
        split, sep, path = rest.partition(":")
        if not sep:
            raise OodlabError(f"data spec {s!r}: expected {kind}:SPLIT:PATH, e.g. {kind}:test:data/")
        ds = load_cifar(path, kind, split) if kind != "svhn" else load_svhn(path, split)
        return ImageSet(name, ds.x, ds.y) if name else ds
    p = Path(s).expanduser()
    if p.is_dir():
        return load_image_folder(p, name, resize=resize, channels=channels)
    if p.suffix.lower() == ".npy" and mmap and p.is_file():
        try:
            x = np.load(p, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise OodlabError(f"{p}: is not a readable .npy file ({e})") from None
        if x.ndim == 4 and x.shape[1] in (1, 3) and x.dtype in (np.uint8, np.float32):
            return ImageSet(name or p.stem, x)
        # Another layout or type needs converting, which reads it all anyway.
    if p.suffix.lower() in (".npy", ".npz"):
        return load_image_array(p, name=name)
    if not p.exists():
        raise OodlabError(
            f"data {s!r} not found: give a folder of images, a .npy/.npz file, or KIND:SPLIT:PATH "
            f"with KIND one of cifar10, cifar100, svhn"
        )
    raise OodlabError(f"data {s!r}: a {p.suffix or 'file'} is not a data set; give a folder, .npy or .npz")
