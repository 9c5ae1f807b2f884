"""Shared fixtures: a tiny, quickly trained classifier on an easy synthetic problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oodlab.data import ImageSet
from oodlab.training import TrainConfig, train

SIZE = 12  # LeNet needs at least 6×6; 12×12 keeps every test fast
N_CLASSES = 3
#: The tiny LeNet's recipe (trains in about a second); methods that train build on it.
TINY_RECIPE = TrainConfig(
    model="lenet", optimizer="adam", lr=1e-3, schedule="none", epochs=2, batch_size=32, seed=0
)


def pattern_images(n: int, seed: int) -> ImageSet:
    """ID images: a bright 4×4 square whose position encodes the class, plus faint noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    x = rng.uniform(0.0, 0.15, (n, 1, SIZE, SIZE)).astype(np.float32)
    for c in range(N_CLASSES):
        r = 1 + 3 * c
        x[y == c, :, r : r + 4, r : r + 4] += 0.8
    return ImageSet("patterns", np.clip(x, 0, 1), y)


def dark_images(n: int, seed: int, name: str = "dark") -> ImageSet:
    """Easy OOD images: nearly black with faint noise (no pattern at all)."""
    rng = np.random.default_rng(seed)
    return ImageSet(name, rng.uniform(0.0, 0.1, (n, 1, SIZE, SIZE)).astype(np.float32))


@pytest.fixture(scope="session")
def tiny_setup() -> dict[str, object]:
    """A LeNet trained for a second on 600 pattern images, with ID/OOD train, val and test sets."""
    torch.manual_seed(0)
    id_train = pattern_images(600, seed=0)
    model, _ = train(TINY_RECIPE, id_train, progress=False)
    return {
        "model": model,
        "id_train": id_train,
        "id_val": pattern_images(120, seed=1),
        "ood_val": dark_images(120, seed=2, name="dark-val"),
        "id_test": pattern_images(150, seed=3),
        "ood_test": dark_images(150, seed=4),
    }
