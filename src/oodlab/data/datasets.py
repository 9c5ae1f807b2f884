"""A tiny registry of the real image data sets oodlab knows: ``mnist`` and ``fashion_mnist``.

>>> from oodlab.data import load_dataset
>>> train = load_dataset("mnist", "train")   # ImageSet "mnist", uint8 (60000, 1, 28, 28), labels 0..9

Loaded splits are kept in memory for the life of the process (keyed on ``(name, split)``); call
:func:`clear_cache` after changing ``$OODLAB_DATA`` or ``$OODLAB_CACHE`` in-process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from oodlab.data import sources
from oodlab.data.imageset import ImageSet
from oodlab.errors import OodlabError

__all__ = ["SPLITS", "DatasetInfo", "clear_cache", "dataset_info", "list_datasets", "load_dataset"]

#: The splits every registered data set has.
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a registered data set without loading it.

    Attributes:
        name: Canonical name (also the name of the loaded :class:`ImageSet`).
        shape: Shape of one image, ``(C, H, W)``.
        num_classes: Number of classes (labels are ``0 .. num_classes - 1``).
        class_names: Human-readable class names, index = label.
        sizes: Number of images per split.
        aliases: Other accepted spellings.
    """

    name: str
    shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    sizes: dict[str, int]
    aliases: tuple[str, ...] = ()


_REGISTRY: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        shape=(1, 28, 28),
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        sizes={"train": 60_000, "test": 10_000},
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        shape=(1, 28, 28),
        num_classes=10,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        sizes={"train": 60_000, "test": 10_000},
        aliases=("fmnist",),
    ),
}
_ALIASES: dict[str, str] = {
    alias: info.name for info in _REGISTRY.values() for alias in (info.name, *info.aliases)
}


def list_datasets() -> list[str]:
    """Canonical names of the registered data sets, sorted."""
    return sorted(_REGISTRY)


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in _ALIASES:
        known = ", ".join(
            f"{n} (alias {', '.join(i.aliases)})" if i.aliases else n for n, i in sorted(_REGISTRY.items())
        )
        raise OodlabError(f"unknown data set {name!r}; known: {known}")
    return _ALIASES[key]


def dataset_info(name: str) -> DatasetInfo:
    """Metadata of a registered data set (accepts aliases, e.g. ``"fmnist"``).

    Raises:
        OodlabError: If the name is unknown.
    """
    return _REGISTRY[_canonical(name)]


def load_dataset(name: str, split: str) -> ImageSet:
    """Load one split of a registered data set.

    Args:
        name: ``"mnist"`` or ``"fashion_mnist"`` (alias ``"fmnist"``; case and ``-``/``_`` are ignored).
        split: ``"train"`` or ``"test"``.

    Returns:
        An :class:`ImageSet` named after the data set (``"mnist"``, ``"fashion_mnist"``) with ``uint8``
        images ``(N, 1, 28, 28)`` and ``int64`` labels. The same object is returned on later calls.

    Raises:
        OodlabError: If the name or split is unknown, or the data is missing or corrupt (see
            :mod:`oodlab.data.sources`).
    """
    canonical = _canonical(name)
    if split not in SPLITS:
        raise OodlabError(f"unknown split {split!r} for data set {canonical!r}; known: {', '.join(SPLITS)}")
    return _load_cached(canonical, split)


@functools.lru_cache(maxsize=16)
def _load_cached(name: str, split: str) -> ImageSet:
    x, y = sources.load_arrays(name, split)
    return ImageSet(name, x, y)


def clear_cache() -> None:
    """Forget the splits loaded in this process (the on-disk cache is untouched)."""
    _load_cached.cache_clear()
