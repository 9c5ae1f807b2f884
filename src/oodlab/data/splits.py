"""Splitting image sets: held-out classes, train/validation, and seeded consecutive chunks.

All random splits use ``numpy.random.default_rng(seed)`` and are deterministic for a given seed.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from oodlab.data.imageset import ImageSet
from oodlab.errors import OodlabError

__all__ = ["holdout_classes", "permuted_split", "train_val_split"]


def holdout_classes(ds: ImageSet, holdout: Sequence[int]) -> tuple[ImageSet, ImageSet]:
    """Split a labelled set into the kept classes and the held-out classes.

    Label mapping: the kept original classes, sorted ascending, are relabelled ``0 .. K-1`` in that
    order, i.e. new label ``j`` is original class ``sorted(kept)[j]``. For MNIST with
    ``holdout=[5, 6]``: 0-4 stay 0-4, 7 -> 5, 8 -> 6, 9 -> 7. The held-out set keeps the original labels.
    Image order within each part follows ``ds``.

    Args:
        ds: A labelled image set.
        holdout: Original class labels to hold out; each must occur in ``ds`` (duplicates are ignored).

    Returns:
        ``(kept, held_out)``, named ``"<name>-kept"`` and ``"<name>-heldout"``.

    Raises:
        OodlabError: If ``ds`` has no labels, ``holdout`` is empty, names a class not in ``ds``, or holds
            out every class.
    """
    if ds.y is None:
        raise OodlabError(f"cannot hold out classes of {ds.name!r}: it has no labels")
    held = sorted({int(c) for c in holdout})
    if not held:
        raise OodlabError(f"holdout for {ds.name!r} is empty; name at least one class to hold out")
    classes = np.unique(ds.y)
    missing = sorted(set(held) - {int(c) for c in classes})
    if missing:
        raise OodlabError(
            f"cannot hold out classes {missing} of {ds.name!r}: its classes are {[int(c) for c in classes]}"
        )
    kept_classes = np.array([c for c in classes if int(c) not in held], dtype=np.int64)
    if len(kept_classes) == 0:
        raise OodlabError(f"holding out {held} leaves no classes of {ds.name!r}")
    is_held = np.isin(ds.y, held)
    kept = ds.subset(np.flatnonzero(~is_held), name=f"{ds.name}-kept")
    remapped = np.searchsorted(kept_classes, kept.y).astype(np.int64)
    kept = ImageSet(kept.name, kept.x, remapped)
    held_out = ds.subset(np.flatnonzero(is_held), name=f"{ds.name}-heldout")
    return kept, held_out


def train_val_split(ds: ImageSet, n_val: int | float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split off a random validation set (not stratified).

    Args:
        ds: The set to split.
        n_val: Validation size: an integer count in ``[1, len(ds) - 1]``, or a fraction in ``(0, 1)``
            (rounded to the nearest count, at least 1 and at most ``len(ds) - 1``).
        seed: Seed of the permutation.

    Returns:
        ``(train, val)``, named ``"<name>-train"`` and ``"<name>-val"``; together they hold every image
        of ``ds`` exactly once. Each part keeps the original relative order of its images.

    Raises:
        OodlabError: If ``n_val`` is not a valid size for ``ds``.
    """
    n = len(ds)
    if isinstance(n_val, bool) or not isinstance(n_val, numbers.Real):
        raise OodlabError(f"n_val must be an integer count or a fraction in (0, 1), got {n_val!r}")
    if isinstance(n_val, numbers.Integral):
        count = int(n_val)
        if not 1 <= count <= n - 1:
            raise OodlabError(f"n_val={count} is not in [1, {n - 1}] for {ds.name!r} of {n} images")
    else:
        frac = float(n_val)
        if not 0.0 < frac < 1.0:
            raise OodlabError(f"fractional n_val must be in (0, 1), got {n_val!r}")
        if n < 2:
            raise OodlabError(f"cannot split {ds.name!r} of {n} images into train and validation")
        count = min(max(round(frac * n), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(perm[:count]), np.sort(perm[count:])
    return ds.subset(train_idx, name=f"{ds.name}-train"), ds.subset(val_idx, name=f"{ds.name}-val")


def permuted_split(ds: ImageSet, sizes: Sequence[int], seed: int) -> list[ImageSet]:
    """Permute with ``seed`` and cut into consecutive chunks of ``sizes``, plus one chunk with the rest.

    Used by the "paper" protocol, e.g. ``permuted_split(test, [500, 500], seed)`` gives 500 / 500 / rest.

    Args:
        ds: The set to split.
        sizes: Non-negative chunk sizes; their sum must not exceed ``len(ds)``.
        seed: Seed of the permutation.

    Returns:
        ``len(sizes) + 1`` sets named ``"<name>-part<i>"``; the last holds the remaining images (it is
        empty if ``sum(sizes) == len(ds)``). Images within a chunk are in permuted order.

    Raises:
        OodlabError: If a size is negative or not an integer, or the sizes add up to more than ``len(ds)``.
    """
    counts = []
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise OodlabError(f"split sizes must be non-negative integers, got {list(sizes)}")
        counts.append(int(s))
    if sum(counts) > len(ds):
        raise OodlabError(
            f"split sizes {counts} add up to {sum(counts)}, more than the {len(ds)} images of {ds.name!r}"
        )
    perm = np.random.default_rng(seed).permutation(len(ds))
    bounds = np.cumsum([0, *counts])
    chunks = [perm[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)] + [perm[bounds[-1] :]]
    return [ds.subset(idx, name=f"{ds.name}-part{i}") for i, idx in enumerate(chunks)]
