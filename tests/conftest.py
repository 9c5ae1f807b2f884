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


def _train_tiny_resnet(id_train: ImageSet) -> torch.nn.Module:
    """oodlab's built-in ResNet at its smallest (one block per stage, width 8), one quick epoch."""
    import torch.nn.functional as F

    from oodlab.models.resnet import ResNet

    torch.manual_seed(0)
    model = ResNet((1, 1, 1, 1), num_classes=N_CLASSES, in_channels=1, image_size=SIZE, width=0.125)
    x, y = id_train.tensor(), id_train.labels()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for idx in torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).split(32):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def wrapped_models(tiny_setup: dict) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """``{kind: (built-in model, the same network written plainly and wrapped)}``.

    ``sequential``: the tiny LeNet as a plain ``nn.Sequential``; ``resnet``: a tiny built-in
    ResNet as a torchvision-style ResNet. Each pair computes the same function.
    """
    from oodlab.models.wrap import wrap
    from tests.tvstyle import resnet_from_builtin, sequential_from_lenet

    lenet = tiny_setup["model"]
    seq = wrap(
        sequential_from_lenet(lenet), taps={"conv1": "1", "conv2": "3"}, mean=0.5, std=0.5, image_size=SIZE
    )
    resnet = _train_tiny_resnet(pattern_images(320, seed=5))
    # The built-in ResNet's taps, by the torchvision names (the stem's output is its ReLU's).
    taps = {"stem": "relu", **{f"layer{i}": f"layer{i}" for i in range(1, 5)}}
    tv = wrap(resnet_from_builtin(resnet), taps=taps, mean=0.5, std=0.5, image_size=SIZE)
    return {"sequential": (lenet, seq), "resnet": (resnet, tv)}
