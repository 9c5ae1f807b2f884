"""Image corruptions for covariate-shift OOD sets, in NumPy/SciPy (``scipy.ndimage``).

Each corruption takes images ``(N, C, H, W)`` (``uint8`` in [0, 255] or ``float32`` in [0, 1]), a
severity 1-5 and a seed, and returns ``float32`` images in [0, 1] of the same shape. Spatial
parameters (blur width, displacement sizes) scale with the image size, relative to 28×28, so
the same severity means about the same on MNIST and on 32×32 colour images. Severities follow
the spirit of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019), re-tuned for small grey images.

The same ``(images, name, severity, seed)`` always gives the same output; each corruption ×
severity draws from its own generator, so selecting a subset of corruptions changes nothing.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    >>> corrupt(x, "blur", 3, seed=0).shape
    (4, 1, 28, 28)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

from oodlab.data.imageset import ImageSet
from oodlab.errors import OodlabError

__all__ = ["CORRUPTIONS", "SEVERITIES", "check_corruptions", "corrupt", "corrupt_set", "describe_corruption"]

SEVERITIES = (1, 2, 3, 4, 5)

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _scale(x: np.ndarray) -> float:
    """Image size relative to 28 pixels (the mean of height and width)."""
    return (x.shape[2] + x.shape[3]) / 56.0


def _gaussian_noise(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[s - 1]
    return x + rng.normal(0.0, sigma, x.shape).astype(np.float32)


def _shot_noise(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    lam = (60.0, 25.0, 12.0, 5.0, 3.0)[s - 1]
    return (rng.poisson(x * lam) / lam).astype(np.float32)


def _blur(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.5, 0.8, 1.1, 1.5, 2.0)[s - 1] * _scale(x)
    return ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="nearest")


def _contrast(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[s - 1]
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * c + mean


def _brightness(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    return x + (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1]


def _sample(x: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Bilinear samples of images ``x`` ``(N, C, H, W)`` at rows ``r`` and columns ``c`` ``(N, H', W')``
    (0 outside the image), as ``(N, C, H', W')``. One vectorised pass over every image."""
    n, _, h, w = x.shape
    r0, c0 = np.floor(r).astype(np.int64), np.floor(c).astype(np.int64)
    fr, fc = (r - r0).astype(np.float32), (c - c0).astype(np.float32)
    out = np.zeros((n, x.shape[1], *r.shape[1:]), np.float32)
    img = np.arange(n)[:, None, None]
    for dr, dc, weight in (
        (0, 0, (1 - fr) * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 0, fr * (1 - fc)),
        (1, 1, fr * fc),
    ):
        rr, cc = r0 + dr, c0 + dc
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        values = x[img, :, np.clip(rr, 0, h - 1), np.clip(cc, 0, w - 1)]  # (N, H', W', C)
        out += np.moveaxis(values, -1, 1) * (weight * inside)[:, None]
    return out


def _grid(n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    return np.broadcast_to(rows, (n, h, w)), np.broadcast_to(cols, (n, h, w))


def _pixelate(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    factor = (0.8, 0.65, 0.5, 0.4, 0.3)[s - 1]
    n, _, h, w = x.shape
    mh, mw = max(1, round(h * factor)), max(1, round(w * factor))
    # Down-sample (bilinear at the small pixels' centres), then blow up with nearest neighbours.
    r, c = _grid(n, mh, mw)
    small = _sample(x, (r + 0.5) * h / mh - 0.5, (c + 0.5) * w / mw - 0.5)
    rows = np.minimum(np.arange(h) * mh // h, mh - 1)
    cols = np.minimum(np.arange(w) * mw // w, mw - 1)
    return small[:, :, rows][:, :, :, cols]


def _rotate(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Rotate about the image centre by ±angle (random sign per image); 0 fills the corners."""
    angle = np.deg2rad((15.0, 30.0, 45.0, 60.0, 90.0)[s - 1])
    n, _, h, w = x.shape
    theta = np.where(rng.random(n) < 0.5, angle, -angle)[:, None, None]
    r, c = _grid(n, h, w)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    dy, dx = r - cy, c - cx
    cos, sin = np.cos(theta), np.sin(theta)
    return _sample(x, cy + cos * dy - sin * dx, cx + sin * dy + cos * dx)


def _elastic(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """Simard et al. (2003): smoothed random displacement fields, one per image."""
    k = _scale(x)
    alpha = (10.0, 20.0, 30.0, 40.0, 55.0)[s - 1] * k
    sigma = 4.0 * k
    n, _, h, w = x.shape
    dy, dx = (
        ndimage.gaussian_filter(rng.uniform(-1, 1, (n, h, w)), sigma=(0, sigma, sigma), mode="constant")
        * alpha
        for _ in range(2)
    )
    r, c = _grid(n, h, w)
    return _sample(x, r + dy, c + dx)


def _invert(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    a = (0.6, 0.7, 0.8, 0.9, 1.0)[s - 1]
    return (1.0 - a) * x + a * (1.0 - x)


#: name → (function, one-line description). Order is the report order.
_CORRUPTIONS: dict[str, tuple[Corruption, str]] = {
    "gaussian_noise": (_gaussian_noise, "additive Gaussian noise, sigma 0.08-0.38"),
    "shot_noise": (_shot_noise, "Poisson (shot) noise, 60 down to 3 photons per unit intensity"),
    "blur": (_blur, "Gaussian blur, sigma 0.5-2.0 px (at 28 px)"),
    "contrast": (_contrast, "contrast scaled about each image's mean by 0.4 down to 0.05"),
    "brightness": (_brightness, "brightness raised by 0.1-0.5"),
    "pixelate": (_pixelate, "down-sampled to 80%-30% of the size and blown up again"),
    "rotate": (_rotate, "rotated by ±15° to ±90° (random sign per image)"),
    "elastic": (_elastic, "elastic deformation (smoothed random displacement fields)"),
    "invert": (_invert, "blended towards the negative image, 60%-100%"),
}

CORRUPTIONS: tuple[str, ...] = tuple(_CORRUPTIONS)


def describe_corruption(name: str) -> str:
    """One line saying what corruption ``name`` does."""
    check_corruptions([name])
    return _CORRUPTIONS[name][1]


def check_corruptions(names: Sequence[str]) -> list[str]:
    """``names`` as a list, or a clear error naming the first unknown one and the known ones."""
    out = list(names)
    for n in out:
        if n not in _CORRUPTIONS:
            raise OodlabError(f"unknown corruption {n!r}; known corruptions: {', '.join(CORRUPTIONS)}")
    if not out:
        raise OodlabError("no corruptions named; name at least one of: " + ", ".join(CORRUPTIONS))
    return out


def _as_float(x: np.ndarray) -> np.ndarray:
    if x.ndim != 4:
        raise OodlabError(f"corruptions need (N, C, H, W) images, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if x.dtype != np.float32:
        raise OodlabError(f"corruptions need uint8 or float32 images, got {x.dtype}")
    return np.array(x, dtype=np.float32)


def corrupt(x: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt images ``x`` with corruption ``name`` at ``severity``.

    Args:
        x: ``(N, C, H, W)`` images, ``uint8`` in [0, 255] or ``float32`` in [0, 1].
        name: One of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (strong).
        seed: Seed of the random parts (noise, rotation signs, displacement fields).

    Returns:
        ``float32`` images in [0, 1], shape of ``x``; ``x`` is not modified.
    """
    check_corruptions([name])
    if severity not in SEVERITIES:
        raise OodlabError(f"corruption severity must be one of 1-5, got {severity!r}")
    fn = _CORRUPTIONS[name][0]
    rng = np.random.default_rng([int(seed), CORRUPTIONS.index(name), int(severity)])
    out = fn(_as_float(x), severity, rng)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def corrupt_set(images: ImageSet, name: str, severity: int, seed: int) -> ImageSet:
    """``images`` corrupted, as an unlabelled set named ``"<name>-<severity>"`` (e.g. ``"blur-3"``)."""
    return ImageSet(f"{name}-{severity}", corrupt(images.x, name, severity, seed))
