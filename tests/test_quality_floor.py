"""Quality floor on real data: a detector that silently falls to chance fails the build.

A small Caffe-style LeNet (``lenet-caffe``) is trained from scratch on a subset of real
Fashion-MNIST (about 11 s of CPU time; the whole module about 40 s). Every feature and logit
detector is fitted on it the blind way (tuned on ID validation + the synthetic OOD validation
set built from it, never on MNIST), and each must separate Fashion-MNIST test images from MNIST
test images with an AUROC above its floor. The floors sit a few points below what these
detectors reach here (measured values in the comments of ``FLOORS``) and far above chance
(0.5), so a sign flip, a wrong tap, a broken covariance or a collapsed ensemble weight fails,
while the spread between seeds and machines does not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oodlab.data import ImageSet, load_dataset, synthetic_ood_validation
from oodlab.data.sources import find_fashion_mnist_dir, find_mnist_source
from oodlab.detectors import create_detector
from oodlab.errors import OodlabError
from oodlab.metrics import auroc
from oodlab.training import TrainConfig, train


def _have_data() -> bool:
    try:
        find_mnist_source()
        find_fashion_mnist_dir()
    except OodlabError:
        return False
    return True


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _have_data(), reason="real MNIST / Fashion-MNIST not set up (run 'make data')"),
]

N_TRAIN, N_VAL, N_OOD_VAL, N_TEST = 12_000, 1_000, 1_000, 2_000

#: Detector (with the settings used here) → AUROC floor on Fashion-MNIST (ID) vs MNIST (OOD).
#: Comments: the AUROC measured on this set-up (2026-11-30, x86-64, torch 2.13 CPU, one thread).
FLOORS: dict[str, tuple[dict[str, object], float]] = {
    "msp": ({}, 0.60),  # 0.681
    "energy": ({}, 0.75),  # 0.808
    "maxlogit": ({}, 0.75),  # 0.794
    "temperature": ({}, 0.65),  # 0.737
    "odin": ({"temperature": 1000.0, "noise": 0.0014}, 0.65),  # 0.735
    "mahalanobis": ({"noise": 0.0}, 0.97),  # 0.998
    "mahalanobis-ensemble": ({"noise": 0.0}, 0.93),  # 0.959 (combination judged on every kind)
    "knn": ({}, 0.95),  # 0.991
    "vim": ({}, 0.97),  # 0.999
    "react": ({}, 0.85),  # 0.945
    "fssd-ensemble": ({}, 0.70),  # 0.827 (combination judged on every kind)
}


def _subset(images: ImageSet, n: int, seed: int, name: str) -> ImageSet:
    pick = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
    return images.subset(pick, name=name)


@pytest.fixture(scope="module")
def real_setup() -> dict[str, object]:
    """A lenet-caffe trained 2 epochs on 12,000 Fashion-MNIST images, and the evaluation sets."""
    fmnist = load_dataset("fashion_mnist", "train")
    pick = np.random.default_rng(0).permutation(len(fmnist))
    id_train = fmnist.subset(pick[:N_TRAIN], name="fashion_mnist")
    id_val = fmnist.subset(pick[N_TRAIN : N_TRAIN + N_VAL], name="fashion_mnist-val")
    cfg = TrainConfig(
        model="lenet-caffe",
        model_kwargs={"mean": 0.2860, "std": 0.3530},
        optimizer="adam",
        lr=1e-3,
        schedule="none",
        epochs=2,
        batch_size=128,
        seed=0,
    )
    torch.manual_seed(0)
    model, _ = train(cfg, id_train, progress=False)
    return {
        "model": model,
        "id_train": id_train,
        "id_val": id_val,
        "ood_val": synthetic_ood_validation(id_val, N_OOD_VAL, seed=1),
        "id_test": _subset(load_dataset("fashion_mnist", "test"), N_TEST, 2, "fashion_mnist"),
        "ood_test": _subset(load_dataset("mnist", "test"), N_TEST, 3, "mnist"),
    }


def test_classifier_learned(real_setup: dict[str, object]) -> None:
    model, id_test = real_setup["model"], real_setup["id_test"]
    with torch.no_grad():
        pred = model(id_test.tensor()).argmax(1).numpy()  # type: ignore[operator,union-attr]
    assert (pred == id_test.y).mean() > 0.80  # type: ignore[union-attr]


@pytest.mark.parametrize("name", list(FLOORS))
def test_detector_above_floor(real_setup: dict[str, object], name: str) -> None:
    params, floor = FLOORS[name]
    s = real_setup
    det = create_detector(name, **params).fit(
        s["model"],  # type: ignore[arg-type]
        s["id_train"],  # type: ignore[arg-type]
        id_val=s["id_val"],  # type: ignore[arg-type]
        ood_val=s["ood_val"],  # type: ignore[arg-type]
    )
    value = auroc(det.score_set(s["id_test"]).numpy(), det.score_set(s["ood_test"]).numpy())  # type: ignore[arg-type]
    assert value >= floor, f"{name}: AUROC {value:.4f} on Fashion-MNIST vs MNIST, floor {floor}"
