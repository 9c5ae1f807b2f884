"""Synthetic image sets: noise OOD *test* sets, and an OOD *validation* set made from ID images.

The noise sets (:func:`gaussian_noise`, :func:`uniform_noise`) are classic "far-OOD" test sets.
:func:`synthetic_ood_validation` is for tuning detector hyper-parameters without looking at any real
OOD test data: it is built only from in-distribution validation images, and deliberately contains no
noise images so that tuning on it does not leak the noise test sets.

All functions are deterministic for a given ``seed`` (``numpy.random.default_rng``) and return
``float32`` images in [0, 1] without labels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.ndimage import uniform_filter

from oodlab.data.imageset import ImageSet
from oodlab.errors import OodlabError

__all__ = [
    "NEAR_OOD_KINDS",
    "OOD_VALIDATION_TRANSFORMS",
    "gaussian_noise",
    "near_ood_kinds",
    "synthetic_ood_validation",
    "uniform_noise",
]


def _check_n_shape(n: int, shape: Sequence[int]) -> tuple[int, int, int]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise OodlabError(f"number of images must be a positive integer, got {n!r}")
    dims = tuple(int(d) for d in shape)
    if len(dims) != 3 or min(dims) < 1:
        raise OodlabError(f"image shape must be (C, H, W) with positive sizes, got {tuple(shape)}")
    return dims[0], dims[1], dims[2]


def gaussian_noise(n: int, shape: Sequence[int], seed: int, name: str = "gaussian") -> ImageSet:
    """``n`` images of Gaussian noise: each pixel ``N(0.5, 1)`` independently, clipped to [0, 1].

    Args:
        n: Number of images.
        shape: ``(C, H, W)`` of one image.
        seed: Seed of the generator.
        name: Name of the returned set.

    Returns:
        Unlabelled ``float32`` images. About 31% of pixels are clipped to 0 and 31% to 1.
    """
    c, h, w = _check_n_shape(n, shape)
    rng = np.random.default_rng(seed)
    x = rng.normal(0.5, 1.0, size=(n, c, h, w))
    return ImageSet(name, np.clip(x, 0.0, 1.0).astype(np.float32))


def uniform_noise(n: int, shape: Sequence[int], seed: int, name: str = "uniform") -> ImageSet:
    """``n`` images of uniform noise: each pixel ``U[0, 1]`` independently.

    Args:
        n: Number of images.
        shape: ``(C, H, W)`` of one image.
        seed: Seed of the generator.
        name: Name of the returned set.

    Returns:
        Unlabelled ``float32`` images.
    """
    c, h, w = _check_n_shape(n, shape)
    rng = np.random.default_rng(seed)
    return ImageSet(name, rng.random(size=(n, c, h, w), dtype=np.float32))


# ------------------------------------------------------------------------------- OOD validation transforms
# Each takes float32 images (k, C, H, W) in [0, 1], their labels (or None) and a generator.


def _pixel_permute(x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Shuffle pixel positions, with a different random permutation for each image.

    Keeps each image's intensity histogram exactly (so a detector cannot flag it from brightness or
    ink amount alone) while destroying all spatial structure. All channels move together.
    """
    k, c, h, w = x.shape
    perm = np.argsort(rng.random((k, h * w)), axis=1)
    flat = x.reshape(k, c, h * w)
    return np.take_along_axis(flat, perm[:, None, :], axis=2).reshape(k, c, h, w)


def _random_derangement(m: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``range(m)`` that moves every element (``m >= 2``)."""
    while True:
        p = rng.permutation(m)
        if not np.any(p == np.arange(m)):
            return p


def _patch_shuffle(
    x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator, grid: int = 4
) -> np.ndarray:
    """Cut each image into a ``grid x grid`` array of patches and move every patch elsewhere.

    Local statistics (stroke width, texture, edges) stay those of ID images, but the global shape is
    scrambled, so these are "near-OOD": hard examples that look locally ID. The permutation is a
    derangement so no patch stays in place. When ``H`` or ``W`` is not a multiple of ``grid`` the last
    rows/columns are left where they are.
    """
    k, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    out = x.copy()
    if ph == 0 or pw == 0:
        return _pixel_permute(x, y, rng)
    core = x[:, :, : ph * grid, : pw * grid].reshape(k, c, grid, ph, grid, pw)
    patches = core.transpose(0, 2, 4, 1, 3, 5).reshape(k, grid * grid, c, ph, pw)
    order = np.stack([_random_derangement(grid * grid, rng) for _ in range(k)])
    shuffled = np.take_along_axis(patches, order[:, :, None, None, None], axis=1)
    shuffled = shuffled.reshape(k, grid, grid, c, ph, pw).transpose(0, 3, 1, 4, 2, 5)
    out[:, :, : ph * grid, : pw * grid] = shuffled.reshape(k, c, ph * grid, pw * grid)
    return out


def _flip_invert(x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Flip upside down and invert intensities (``1 - x``).

    Inversion turns a dark background bright, a strong covariate shift in low-level statistics; the
    flip also makes the content semantically wrong (an upside-down 7 is no digit).
    """
    return 1.0 - x[:, :, ::-1, :]


def _box_blur(x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator, size: int = 9) -> np.ndarray:
    """Heavy ``size x size`` mean filter over each channel (reflecting edges).

    Removes all fine detail, leaving low-frequency blobs with ID-like overall brightness and position:
    OOD by missing high-frequency content.
    """
    return uniform_filter(x, size=(1, 1, size, size), mode="reflect")


def _partners(y: np.ndarray | None, k: int, rng: np.random.Generator) -> np.ndarray:
    """For each of ``k`` images another one's index, of a different label where labels allow."""
    partner = rng.integers(0, k - 1, size=k)
    partner += partner >= np.arange(k)  # any index but self
    if y is not None and len(np.unique(y)) > 1:
        by_label = {int(label): np.flatnonzero(y != label) for label in np.unique(y)}
        bad = y[partner] == y
        partner[bad] = [rng.choice(by_label[int(label)]) for label in y[bad]]
    return partner


def _mixture(x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Average each image with another one of a different label: ``0.5 * a + 0.5 * b``.

    Superimposes two classes, so the result is ambiguous between them and belongs to neither
    (semantic near-OOD). Without labels (or with a single class) the partner is just another image.
    """
    if len(x) == 1:
        return x.copy()
    return 0.5 * x + 0.5 * x[_partners(y, len(x), rng)]


def _chimera(x: np.ndarray, y: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Join one half of each image to the other half of an image of a different class.

    The cut is horizontal or vertical (at random per image) through the middle. Every stroke and
    texture is an ID one and the ink is where ID ink is, but the whole is no class: a class-
    conditional near-OOD image whose oddness only the later, semantic layers can see. Without
    labels (or with a single class) the partner is just another image.
    """
    k, _, h, w = x.shape
    if k == 1:
        return x.copy()
    other = x[_partners(y, k, rng)]
    out = x.copy()
    vertical = rng.random(k) < 0.5
    out[vertical, :, :, w // 2 :] = other[vertical, :, :, w // 2 :]
    out[~vertical, :, h // 2 :, :] = other[~vertical, :, h // 2 :, :]
    return out


#: The transforms of :func:`synthetic_ood_validation`, in order, by name.
OOD_VALIDATION_TRANSFORMS: dict[
    str, Callable[[np.ndarray, np.ndarray | None, np.random.Generator], np.ndarray]
] = {
    "pixel_permute": _pixel_permute,
    "patch_shuffle": _patch_shuffle,
    "flip_invert": _flip_invert,
    "box_blur": _box_blur,
    "mixture": _mixture,
    "chimera": _chimera,
}


#: The near-OOD kinds: ID-like strokes and textures in a shape no class has. They are what a
#: semantic OOD set of the same modality (another dataset of digits or garments, a held-out class)
#: looks like to a network; the other kinds are low-level shifts (histogram, orientation, blur,
#: superposition) that an early layer flags whatever the content. See :func:`near_ood_kinds`.
NEAR_OOD_KINDS: tuple[str, ...] = ("patch_shuffle", "chimera")


def near_ood_kinds(ood_val: ImageSet) -> np.ndarray | None:
    """Boolean mask of the near-OOD images of a set from :func:`synthetic_ood_validation`.

    ``None`` when ``ood_val`` carries no kind labels (any other OOD validation set, e.g. the paper
    protocol's real images) or holds no near-OOD image.
    """
    if ood_val.y is None:
        return None
    names = list(OOD_VALIDATION_TRANSFORMS)
    near = [names.index(k) for k in NEAR_OOD_KINDS]
    mask = np.isin(ood_val.y, near)
    return mask if mask.any() else None


def _as_float01(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return np.asarray(x, dtype=np.float32)


def synthetic_ood_validation(id_val: ImageSet, n: int, seed: int, name: str = "synthetic-val") -> ImageSet:
    """An OOD *validation* set made only from ID validation images, for tuning detectors.

    ``n`` images in equal shares (the first ``n % 6`` transforms get one extra) of:

    * ``pixel_permute``: pixels shuffled by a random permutation per image (same histogram, no structure);
    * ``patch_shuffle``: a 4x4 grid of patches put in a random order with no patch in place (ID-like local
      texture, wrong global shape);
    * ``flip_invert``: upside-down and inverted, ``1 - flipud(x)`` (bright background, wrong orientation);
    * ``box_blur``: 9x9 mean filter (no fine detail);
    * ``mixture``: ``0.5 * a + 0.5 * b`` for two images of different labels (two classes at once; random
      pairs if ``id_val`` is unlabelled);
    * ``chimera``: one half (top or left) of an image joined to the other half of an image of another
      class (ID strokes, no class; random pairs if ``id_val`` is unlabelled).

    The first four are low-level shifts that early layers see; the last two are semantic near-OOD
    that only later layers see. The labels of the result say which transform made each image (the
    index into :data:`OOD_VALIDATION_TRANSFORMS`), so a detector can judge itself on every kind.

    Source images are drawn at random from ``id_val`` (without replacement while there are enough).
    There are deliberately no Gaussian or uniform noise images: those are OOD *test* sets. The result is
    shuffled so any prefix holds roughly equal shares. A degenerate input image (e.g. constant) may come
    out unchanged by some transforms; real images do not.

    Args:
        id_val: In-distribution validation images (``uint8`` or ``float32``), labels optional.
        n: Number of images to make.
        seed: Seed; the same ``(id_val, n, seed)`` always gives the same images.
        name: Name of the returned set.

    Returns:
        ``float32`` images in [0, 1] of ``id_val``'s image shape, labelled with their transform's index.

    Raises:
        OodlabError: If ``id_val`` is empty or ``n`` is not positive.
    """
    _check_n_shape(n, id_val.shape)
    if len(id_val) == 0:
        raise OodlabError(f"cannot build a synthetic OOD validation set from the empty set {id_val.name!r}")
    rng = np.random.default_rng(seed)
    kinds = list(OOD_VALIDATION_TRANSFORMS.values())
    shares = [n // len(kinds) + (i < n % len(kinds)) for i in range(len(kinds))]
    blocks, kind = [], []
    for i, (transform, k) in enumerate(zip(kinds, shares, strict=True)):
        if k == 0:
            continue
        idx = rng.choice(len(id_val), size=k, replace=k > len(id_val))
        x = _as_float01(id_val.x[idx])
        y = None if id_val.y is None else id_val.y[idx]
        blocks.append(transform(x, y, rng))
        kind.append(np.full(k, i))
    order = rng.permutation(n)
    out = np.concatenate(blocks)[order]
    return ImageSet(
        name, np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32), np.concatenate(kind)[order]
    )
