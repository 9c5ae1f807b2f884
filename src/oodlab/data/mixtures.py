"""Near/far mixture OOD sets: a share of one OOD set mixed with the rest from another.

A mixture is written ``NAME=NEAR+FAR:P``: ``P`` is the share of images taken from ``NEAR``
(e.g. ``mix=mnist-0+gaussian:0.3`` is 30% held-out digits and 70% Gaussian noise).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from oodlab.data.imageset import ImageSet
from oodlab.errors import OodlabError

__all__ = ["MixtureSpec", "make_mixture", "mixture_index", "parse_mixture"]


@dataclass(frozen=True)
class MixtureSpec:
    """``name`` is ``near_fraction`` of ``near`` and the rest of ``far``."""

    name: str
    near: str
    far: str
    near_fraction: float

    def __str__(self) -> str:
        return f"{self.name}={self.near}+{self.far}:{self.near_fraction:g}"


def parse_mixture(text: str) -> MixtureSpec:
    """Parse ``NAME=NEAR+FAR:P`` (``0 < P < 1``); a clear error for anything else."""
    usage = f"--mixture takes NAME=NEAR+FAR:P (P = share of NEAR, between 0 and 1), got {text!r}"
    name, eq, rest = text.partition("=")
    sets, colon, frac = rest.rpartition(":")
    near, plus, far = sets.partition("+")
    name, near, far, frac = name.strip(), near.strip(), far.strip(), frac.strip()
    if not (eq and colon and plus and name and near and far and frac):
        raise OodlabError(usage)
    try:
        p = float(frac)
    except ValueError:
        raise OodlabError(usage) from None
    if not 0.0 < p < 1.0:
        raise OodlabError(f"--mixture {name}: the share of {near!r} must be between 0 and 1, got {frac}")
    if near == far:
        raise OodlabError(f"--mixture {name}: near and far are the same set {near!r}")
    return MixtureSpec(name, near, far, p)


def _as_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x


def mixture_index(
    spec: MixtureSpec, n_near: int, n_far: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which images a mixture draws: ``(near_idx, far_idx, order)``.

    ``n = min(n_near, n_far)``; ``round(spec.near_fraction · n)`` sorted indices into the near set
    and the rest into the far set (without replacement, seeded by ``seed`` and the mixture's
    name), then ``order``, a permutation of the ``n`` concatenated images. Per-image scores of
    the near and far sets mixed by these indices are the scores of :func:`make_mixture`'s set.
    """
    n = min(n_near, n_far)
    k = int(round(spec.near_fraction * n))
    rng = np.random.default_rng([int(seed), zlib.crc32(spec.name.encode())])
    a = np.sort(rng.choice(n_near, k, replace=False))
    b = np.sort(rng.choice(n_far, n - k, replace=False))
    return a, b, rng.permutation(n)


def make_mixture(spec: MixtureSpec, near: ImageSet, far: ImageSet, seed: int) -> ImageSet:
    """Draw ``spec.near_fraction`` of ``n = min(len(near), len(far))`` images from ``near``, the
    rest from ``far`` (without replacement, seeded), shuffled together into one unlabelled set."""
    if near.shape != far.shape:
        raise OodlabError(
            f"mixture {spec.name}: {spec.near!r} images are {near.shape} but {spec.far!r} are {far.shape}"
        )
    ia, ib, order = mixture_index(spec, len(near), len(far), seed)
    a, b = near.x[ia], far.x[ib]
    x = np.concatenate([_as_float(a), _as_float(b)])
    if near.x.dtype == far.x.dtype == np.uint8:
        x = np.concatenate([a, b])
    return ImageSet(spec.name, np.ascontiguousarray(x[order]))
