"""Auxiliary outlier sets for objectives that train on outliers (outlier exposure, energy margin).

Every set is made from the ID *training* images alone, or from noise: never from an OOD test
set, so no test OOD image (MNIST on ``fmnist-vs-mnist``, the held-out zeros on
``mnist-holdout0``) can leak into training. Each kind is one registered function
``make(x, y, n, rng) -> (n, C, H, W) float32 in [0, 1]`` taking the ID training images
(float32 in [0, 1]) and labels; :func:`build_aux` draws ``n`` images of a named set,
deterministically for a seed. ``oodlab list aux`` prints the registry.

The kinds are chosen to differ from the blind protocol's OOD *validation* set
(:func:`oodlab.data.synthetic_ood_validation`: pixel permutations, 4×4 patch shuffles, flipped
and inverted images, 9×9 box blur, 50/50 mixtures), so that what a method trains on is not
what the detectors are tuned on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, sobel

from oodlab.data.imageset import ImageSet
from oodlab.errors import OodlabError

AuxMaker = Callable[[np.ndarray, np.ndarray | None, int, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class AuxKind:
    """A registered kind of auxiliary outlier: its name, one line of description, its maker."""

    name: str
    description: str
    make: AuxMaker


_AUX: dict[str, AuxKind] = {}
#: Sets that are unions of several kinds, in equal shares.
_UNIONS: dict[str, tuple[str, tuple[str, ...]]] = {}


def register_aux(name: str, description: str) -> Callable[[AuxMaker], AuxMaker]:
    """Register a maker ``(x, y, n, rng) -> images`` as the auxiliary set ``name``."""

    def deco(fn: AuxMaker) -> AuxMaker:
        if name in _AUX or name in _UNIONS:
            raise RuntimeError(f"auxiliary set {name!r} registered twice")
        _AUX[name] = AuxKind(name, description, fn)
        return fn

    return deco


def register_aux_union(name: str, description: str, kinds: tuple[str, ...]) -> None:
    """Register ``name`` as equal shares of the registered ``kinds``."""
    if name in _AUX or name in _UNIONS:
        raise RuntimeError(f"auxiliary set {name!r} registered twice")
    _UNIONS[name] = (description, kinds)


def list_aux() -> list[tuple[str, str]]:
    """``(name, description)`` of every auxiliary set, unions last."""
    out = [(k.name, k.description) for k in sorted(_AUX.values(), key=lambda k: k.name)]
    out += [(n, f"{d} (equal shares of {', '.join(ks)})") for n, (d, ks) in sorted(_UNIONS.items())]
    return out


def check_aux(name: str) -> str:
    """``name`` if it is a registered auxiliary set, else a clear error listing them."""
    if name not in _AUX and name not in _UNIONS:
        known = ", ".join(n for n, _ in list_aux())
        raise OodlabError(f"unknown auxiliary set {name!r} (parameter aux); known: {known}")
    return name


def _float01(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)


def _pick(x: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.choice(len(x), size=n, replace=n > len(x))
    return _float01(x[idx]), idx


def _stretch(x: np.ndarray) -> np.ndarray:
    """Each image scaled to span [0, 1] (a constant image becomes 0)."""
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    return np.where(hi > lo, (x - lo) / np.maximum(hi - lo, 1e-12), 0.0).astype(np.float32)


@register_aux(
    "edges", "outlines of ID images: Sobel gradient magnitude, stretched to [0, 1] (heavy corruption)"
)
def _edges(x: np.ndarray, y: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    imgs, _ = _pick(x, n, rng)
    gx = sobel(imgs, axis=3, mode="constant")
    gy = sobel(imgs, axis=2, mode="constant")
    return _stretch(np.hypot(gx, gy))


@register_aux(
    "class-blend",
    "two ID images of different classes blended with a random weight in [0.25, 0.75] (neither class)",
)
def _class_blend(x: np.ndarray, y: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    a, ia = _pick(x, n, rng)
    ib = rng.integers(0, len(x), size=n)
    if y is not None and len(np.unique(y)) > 1:
        # Redraw partners of the same class until every pair mixes two classes.
        same = y[ib] == y[ia]
        while same.any():
            ib[same] = rng.integers(0, len(x), size=int(same.sum()))
            same = y[ib] == y[ia]
    w = rng.uniform(0.25, 0.75, size=(n, 1, 1, 1)).astype(np.float32)
    return w * a + (1 - w) * _float01(x[ib])


@register_aux(
    "quadrant-shuffle", "ID images cut into a 2×2 grid of quadrants put back in a random other order"
)
def _quadrant_shuffle(x: np.ndarray, y: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    imgs, _ = _pick(x, n, rng)
    _, c, h, w = imgs.shape
    h2, w2 = h // 2, w // 2
    quads = [imgs[:, :, :h2, :w2], imgs[:, :, :h2, w2 : 2 * w2], imgs[:, :, h2 : 2 * h2, :w2]]
    quads.append(imgs[:, :, h2 : 2 * h2, w2 : 2 * w2])
    q = np.stack(quads, axis=1)  # (n, 4, C, h2, w2)
    # A cyclic shift by 1-3 moves every quadrant.
    shift = rng.integers(1, 4, size=n)
    order = (np.arange(4)[None, :] + shift[:, None]) % 4
    q = np.take_along_axis(q, order[:, :, None, None, None], axis=1)
    out = imgs.copy()
    out[:, :, :h2, :w2], out[:, :, :h2, w2 : 2 * w2] = q[:, 0], q[:, 1]
    out[:, :, h2 : 2 * h2, :w2], out[:, :, h2 : 2 * h2, w2 : 2 * w2] = q[:, 2], q[:, 3]
    return out


@register_aux(
    "smooth-noise",
    "noise only: uniform noise smoothed by a Gaussian of σ in [1, 3] px, stretched to [0, 1], "
    "half of it thresholded into blobs",
)
def _smooth_noise(x: np.ndarray, y: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    _, c, h, w = x.shape
    out = np.empty((n, c, h, w), dtype=np.float32)
    sigmas = rng.uniform(1.0, 3.0, size=n)
    raw = rng.random((n, c, h, w), dtype=np.float32)
    for i in range(n):
        out[i] = gaussian_filter(raw[i], sigma=(0, sigmas[i], sigmas[i]), mode="wrap")
    out = _stretch(out)
    blobs = rng.random(n) < 0.5
    cut = rng.uniform(0.4, 0.7, size=(n, 1, 1, 1)).astype(np.float32)
    out[blobs] = (out[blobs] > cut[blobs]).astype(np.float32)
    return out


register_aux_union(
    "id-synthetic",
    "the default: ID-derived and noise outliers",
    ("class-blend", "edges", "quadrant-shuffle", "smooth-noise"),
)
DEFAULT_AUX = "id-synthetic"


def build_aux(name: str, id_train: ImageSet, n: int, seed: int) -> ImageSet:
    """``n`` auxiliary outliers of the set ``name``, made from ``id_train`` (or noise) for ``seed``.

    Returns:
        An unlabelled float32 :class:`ImageSet` named ``aux-<name>``, of ``id_train``'s image
        shape, in shuffled order; the same arguments give the same images.
    """
    check_aux(name)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise OodlabError(f"n_aux must be a positive integer, got {n!r}")
    if len(id_train) == 0:
        raise OodlabError(f"cannot build auxiliary outliers from the empty set {id_train.name!r}")
    rng = np.random.default_rng([seed, 0xA0C5])
    kinds = _UNIONS[name][1] if name in _UNIONS else (name,)
    shares = [n // len(kinds) + (i < n % len(kinds)) for i in range(len(kinds))]
    blocks = [_AUX[k].make(id_train.x, id_train.y, s, rng) for k, s in zip(kinds, shares, strict=True) if s]
    out = np.concatenate(blocks)[rng.permutation(n)]
    return ImageSet(f"aux-{name}", np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32))


def check_aux_set(aux: ImageSet, shape: tuple[int, int, int]) -> ImageSet:
    """A clear error naming the parameter if a user-given auxiliary set is empty or of another shape."""
    if not isinstance(aux, ImageSet):
        raise OodlabError(f"aux must be an ImageSet of outlier images, got {type(aux).__name__}")
    if len(aux) == 0:
        raise OodlabError(f"aux: the auxiliary outlier set {aux.name!r} is empty")
    if aux.shape != tuple(shape):
        raise OodlabError(
            f"aux: the auxiliary outlier set {aux.name!r} has images of shape {aux.shape}, "
            f"the training images {tuple(shape)}"
        )
    return aux


__all__ = [
    "DEFAULT_AUX",
    "AuxKind",
    "build_aux",
    "check_aux",
    "check_aux_set",
    "list_aux",
    "register_aux",
    "register_aux_union",
]
