"""Loading user-supplied images from ``.npy`` / ``.npz`` files, with one clear error per problem."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from oodlab.data.imageset import ImageSet
from oodlab.errors import OodlabError

__all__ = ["load_image_array"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_IMAGE_KEYS = ("x", "images")
_LABEL_KEYS = ("y", "labels")
_FLOAT_TOL = 1e-6
_HINT = "save images with numpy.save/numpy.savez as a numeric array"


def _fail(path: Path, msg: str) -> OodlabError:
    return OodlabError(f"{path}: {msg}")


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise _fail(path, f"is not a readable .npz file ({e})") from e
    with npz:
        keys = list(npz.files)
        image_key = next((k for k in _IMAGE_KEYS if k in keys), None)
        if image_key is None:
            if len(keys) != 1:
                raise _fail(
                    path,
                    f"cannot tell which array holds the images: keys are {keys or 'none'}; "
                    "name it 'x' or 'images' (labels, if any, 'y' or 'labels')",
                )
            image_key = keys[0]
        label_key = next((k for k in _LABEL_KEYS if k in keys and k != image_key), None)
        x = _read_member(path, npz, image_key)
        y = None if label_key is None else _read_member(path, npz, label_key)
    return x, y


def _read_member(path: Path, npz: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            msg = f"array {key!r} holds pickled Python objects, which are not loaded; {_HINT}"
            raise _fail(path, msg) from e
        raise _fail(path, f"array {key!r} is unreadable ({e})") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise _fail(path, f"array {key!r} is unreadable ({e})") from e


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise _fail(path, f"holds pickled Python objects, which are not loaded; {_HINT}") from e
        raise _fail(path, f"is not a readable .npy file ({e})") from e
    except (OSError, EOFError) as e:
        raise _fail(path, f"is not a readable .npy file ({e})") from e


def _to_nchw(path: Path, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4:
        if x.shape[1] in (1, 3):
            return x
        if x.shape[3] in (1, 3):
            return x.transpose(0, 3, 1, 2)
        raise _fail(
            path,
            f"images of shape {x.shape} have {x.shape[1]} channels as (N, C, H, W) "
            f"or {x.shape[3]} as (N, H, W, C); expected 1 or 3",
        )
    raise _fail(
        path,
        f"expected images of shape (N, H, W), (N, C, H, W) or (N, H, W, C), got {x.ndim}-D array {x.shape}",
    )


def _check_dtype(path: Path, x: np.ndarray) -> np.ndarray:
    kind = x.dtype.kind
    if x.dtype == np.uint8:
        return x
    if kind == "f":
        if not np.all(np.isfinite(x)):
            raise _fail(path, f"images contain {int(np.sum(~np.isfinite(x)))} NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < -_FLOAT_TOL or hi > 1 + _FLOAT_TOL:
            raise _fail(
                path,
                f"float images range over [{lo:g}, {hi:g}], but float images must be in [0, 1] "
                "(divide by 255, or save as uint8)",
            )
        return np.clip(x, 0.0, 1.0).astype(np.float32)
    if kind in "iu":
        what = f"{x.dtype} integers"
        fix = "save them as uint8 (0-255) or as floats in [0, 1]"
    elif kind == "b":
        what, fix = "booleans", "save them as uint8 (0/255) or as floats in [0, 1]"
    else:
        what, fix = f"dtype {x.dtype}", "images must be uint8 or floats in [0, 1]"
    raise _fail(path, f"images are {what}; {fix}")


def _check_labels(path: Path, y: np.ndarray, n: int) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise _fail(path, f"labels must be integers, got dtype {y.dtype}")
    if y.shape != (n,):
        raise _fail(path, f"labels have shape {y.shape}, expected ({n},) to match {n} images")
    if n and int(y.min()) < 0:
        raise _fail(path, f"labels must be non-negative, found {int(y.min())}")
    return y.astype(np.int64)


def load_image_array(
    path: str | os.PathLike[str],
    name: str | None = None,
    expect_shape: tuple[int, int, int] | None = None,
) -> ImageSet:
    """Load user images from a ``.npy`` or ``.npz`` file (never unpickling anything).

    Accepted:

    * ``.npy``: the image array. ``.npz``: images under key ``x`` or ``images`` (or the only array in the
      file); optional integer labels under ``y`` or ``labels``.
    * Layouts: ``(N, H, W)`` (a channel axis is added), ``(N, C, H, W)`` with ``C`` in {1, 3}, or
      channel-last ``(N, H, W, C)`` when the last axis is 1 or 3 and the second is not (it is transposed to
      ``(N, C, H, W)``; when both are 1 or 3, channel-first is assumed).
    * Types: ``uint8`` (any values, read as pixels 0-255), or floats (``float16/32/64``) in [0, 1]
      (converted to ``float32``; values up to 1e-6 outside are clipped).

    Args:
        path: The file.
        name: Name of the returned set; defaults to the file name without suffix.
        expect_shape: If given, the required ``(C, H, W)`` of one image (e.g. the model's input shape).

    Returns:
        An :class:`ImageSet` of ``uint8`` or ``float32`` images, with ``int64`` labels when present.

    Raises:
        OodlabError: One line naming the file and the problem: missing file, not ``.npy``/``.npz``,
            pickled object arrays, empty array, wrong number of dims or channels, wrong dtype (bool,
            integers other than uint8, complex, strings), NaN/inf, floats outside [0, 1], image shape
            different from ``expect_shape``, or labels that do not match.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise OodlabError(f"image file {p} does not exist")
    if not p.is_file():
        raise OodlabError(f"image file {p} is not a regular file")
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise _fail(p, f"unsupported file type {suffix or '(no suffix)'!r}; save images as .npy or .npz")
    try:
        with open(p, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise _fail(p, f"cannot read it ({e.strerror or e})") from e
    if suffix == ".npy" and not head.startswith(_NPY_MAGIC):
        raise _fail(p, f"is not a .npy file (no NumPy header); {_HINT}")
    if suffix == ".npz" and not head.startswith(_ZIP_MAGICS):
        raise _fail(p, f"is not a .npz file (not a zip archive); {_HINT}")

    x, y = (_load_npy(p), None) if suffix == ".npy" else _load_npz(p)
    if x.dtype.hasobject:  # pragma: no cover - np.load refuses these first; kept as a guard
        raise _fail(p, f"holds pickled Python objects, which are not loaded; {_HINT}")
    if x.size == 0:
        raise _fail(p, f"image array is empty (shape {x.shape})")
    x = _check_dtype(p, _to_nchw(p, x))
    shape = tuple(int(d) for d in x.shape[1:])
    if expect_shape is not None and shape != tuple(expect_shape):
        raise _fail(p, f"images have shape (C, H, W) = {shape}, expected {tuple(expect_shape)}")
    labels = None if y is None else _check_labels(p, y, len(x))
    return ImageSet(name or p.stem, np.ascontiguousarray(x), labels)
