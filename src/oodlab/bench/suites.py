"""Named benchmark suites: which data is ID, which is OOD, which model, which recipe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from oodlab.data import (
    ImageSet,
    gaussian_noise,
    holdout_classes,
    load_dataset,
    load_image_array,
    permuted_split,
    synthetic_ood_validation,
    train_val_split,
    uniform_noise,
)
from oodlab.data.corruptions import CORRUPTIONS, SEVERITIES, check_corruptions, corrupt_set
from oodlab.data.mixtures import MixtureSpec, make_mixture
from oodlab.errors import OodlabError
from oodlab.training import TrainConfig
from oodlab.training.recipes import lenet_recipe

PROTOCOLS = ("blind", "paper")

#: Seed offsets so that each synthetic set draws its own noise.
_SEED_GAUSSIAN, _SEED_UNIFORM, _SEED_VAL = 1_000, 2_000, 3_000
_SEED_SUBSET, _SEED_CORRUPT, _SEED_MIX = 5_000, 6_000, 7_000


@dataclass(frozen=True)
class Suite:
    """A benchmark definition.

    Attributes:
        name: Registry key, e.g. ``"fmnist-vs-mnist"``.
        description: One line for listings and reports.
        id_dataset: Dataset of in-distribution images.
        ood_datasets: Real-image OOD test sets, as ``{report name: (dataset, classes or None)}``.
        holdout: Classes of ``id_dataset`` removed from ID (they become an OOD test set).
        synthetic: Synthetic OOD test sets (``"gaussian"``, ``"uniform"``).
        train: Recipe of the suite's classifier.
        n_val: ID training images carved out as ID validation.
        n_ood_val: Size of the synthetic OOD validation set (blind protocol).
        corruptions: Corruptions of the ID test images used as OOD test sets, one per corruption ×
            severity, named ``"<corruption>-<severity>"`` (see :mod:`oodlab.data.corruptions`).
        n_id_test: Evaluate on a seeded subset of this many ID test images (``None``: all).
    """

    name: str
    description: str
    id_dataset: str
    ood_datasets: dict[str, str] = field(default_factory=dict)
    holdout: tuple[int, ...] = ()
    synthetic: tuple[str, ...] = ("gaussian", "uniform")
    train: TrainConfig = field(default_factory=TrainConfig)
    n_val: int = 5000
    n_ood_val: int = 2000
    corruptions: tuple[str, ...] = ()
    n_id_test: int | None = None


@dataclass
class SuiteData:
    """The images of one suite for one seed.

    ``ood_val`` is the OOD validation set every tuned detector uses under the blind protocol.
    Under the paper protocol ``paper_val`` holds, per OOD test set, the ``(id_val, ood_val)``
    pair cut from the test sets themselves, and ``id_test``/``ood_tests`` hold the rest.
    """

    suite: Suite
    seed: int
    protocol: str
    id_train: ImageSet
    id_val: ImageSet
    id_test: ImageSet
    ood_val: ImageSet
    ood_tests: dict[str, ImageSet]
    paper_val: dict[str, tuple[ImageSet, ImageSet]] = field(default_factory=dict)
    id_test_by_ood: dict[str, ImageSet] = field(default_factory=dict)

    def id_test_for(self, ood: str) -> ImageSet:
        """The ID test images evaluated against OOD set ``ood``."""
        return self.id_test_by_ood.get(ood, self.id_test)

    def validation_for(self, ood: str) -> tuple[ImageSet, ImageSet]:
        """The (ID, OOD) validation pair detectors evaluated on ``ood`` are tuned on."""
        return self.paper_val.get(ood, (self.id_val, self.ood_val))


#: MNIST / Fashion-MNIST training-set pixel statistics (the values the reference code uses).
MNIST_RECIPE = lenet_recipe(0.1307, 0.3081, epochs=3)
FMNIST_RECIPE = lenet_recipe(0.2860, 0.3530, epochs=3)
#: Digits 1–9 need a fourth epoch to pass 99% test accuracy.
MNIST_HOLDOUT_RECIPE = lenet_recipe(0.1307, 0.3081, epochs=4)


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            name="mnist-holdout0",
            description="ID MNIST digits 1-9; OOD the held-out digit 0, Gaussian and uniform noise",
            id_dataset="mnist",
            holdout=(0,),
            train=MNIST_HOLDOUT_RECIPE,
        ),
        Suite(
            name="fmnist-vs-mnist",
            description="ID Fashion-MNIST; OOD MNIST, Gaussian and uniform noise",
            id_dataset="fashion_mnist",
            ood_datasets={"mnist": "mnist"},
            train=FMNIST_RECIPE,
        ),
        Suite(
            name="mnist-vs-fmnist",
            description="ID MNIST 0-9; OOD Fashion-MNIST, Gaussian and uniform noise",
            id_dataset="mnist",
            ood_datasets={"fashion_mnist": "fashion_mnist"},
            train=MNIST_RECIPE,
        ),
        # Same ID data, split and recipe as mnist-vs-fmnist / fmnist-vs-mnist: same cached checkpoint.
        Suite(
            name="mnist-corruptions",
            description="ID MNIST 0-9 (2000 test images); OOD the same images under 9 corruptions × 5 "
            "severities",
            id_dataset="mnist",
            synthetic=(),
            train=MNIST_RECIPE,
            corruptions=CORRUPTIONS,
            n_id_test=2000,
        ),
        Suite(
            name="fmnist-corruptions",
            description="ID Fashion-MNIST (2000 test images); OOD the same images under 9 corruptions × "
            "5 severities",
            id_dataset="fashion_mnist",
            synthetic=(),
            train=FMNIST_RECIPE,
            corruptions=CORRUPTIONS,
            n_id_test=2000,
        ),
    )
}

DEFAULT_SUITES = ("mnist-holdout0", "fmnist-vs-mnist", "mnist-vs-fmnist")


def get_suite(name: str) -> Suite:
    """The suite registered as ``name``."""
    if name not in SUITES:
        raise OodlabError(f"unknown suite {name!r}; known suites: {', '.join(SUITES)}")
    return SUITES[name]


def list_suites() -> list[str]:
    """Names of the registered suites."""
    return list(SUITES)


def with_epochs(suite: Suite, epochs: int | None) -> Suite:
    """``suite`` with its training recipe's epochs replaced (``None`` keeps them)."""
    return suite if epochs is None else replace(suite, train=replace(suite.train, epochs=epochs))


def with_corruptions(suite: Suite, corruptions: list[str] | None) -> Suite:
    """``suite`` restricted to ``corruptions`` if it is a corruption suite (``None`` keeps all)."""
    if corruptions is None or not suite.corruptions:
        return suite
    return replace(suite, corruptions=tuple(check_corruptions(corruptions)))


def ood_set_names(
    suite: Suite, extra_ood: Sequence[str] = (), mixtures: Sequence[MixtureSpec] = ()
) -> list[str]:
    """Names of the OOD test sets ``build_suite`` makes for ``suite``, in report order."""
    names: list[str] = []
    if suite.holdout:
        names.append(f"{suite.id_dataset}-{'-'.join(map(str, suite.holdout))}")
    names += list(suite.ood_datasets)
    names += [f"{c}-{s}" for c in suite.corruptions for s in SEVERITIES]
    names += [s for s in ("gaussian", "uniform") if s in suite.synthetic]
    names += list(extra_ood)
    names += [m.name for m in mixtures]
    return names


def check_mixtures(suite: Suite, mixtures: Sequence[MixtureSpec], extra_ood: Sequence[str] = ()) -> None:
    """A clear error if a mixture's name clashes or it mixes a set that ``suite`` lacks."""
    own = ood_set_names(suite, extra_ood)
    seen: set[str] = set()
    for m in mixtures:
        if m.name in own or m.name in seen:
            raise OodlabError(f"--mixture name {m.name!r} clashes with another OOD set of suite {suite.name}")
        seen.add(m.name)
        for part in (m.near, m.far):
            if part not in own:
                raise OodlabError(
                    f"--mixture {m.name}: suite {suite.name} has no OOD test set {part!r}; "
                    f"its OOD test sets: {', '.join(own)}"
                )


def _paper_sizes(n: int) -> tuple[int, int]:
    """The paper protocol's (weights, hyperparameters) split sizes: 500/500, or n/6 each for small sets."""
    return (500, 500) if n >= 3000 else (n // 6, n // 6)


def build_suite(
    suite: Suite,
    seed: int = 0,
    protocol: str = "blind",
    extra_ood: dict[str, Path] | None = None,
    mixtures: Sequence[MixtureSpec] = (),
) -> SuiteData:
    """Load and split the images of ``suite`` for ``seed`` under ``protocol``.

    Args:
        suite: The suite.
        seed: Fixes the validation carve-out, the synthetic sets and the paper-protocol splits.
        protocol: ``"blind"`` (tune on ID validation + synthetic OOD validation) or ``"paper"``
            (tune on 500 + 500 images cut from each test set, as the FSSD reference code does).
        extra_ood: User OOD test sets, ``{name: path to .npy/.npz}``.
        mixtures: Near/far mixtures of the OOD test sets, added as further OOD test sets.
    """
    if protocol not in PROTOCOLS:
        raise OodlabError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    train_all = load_dataset(suite.id_dataset, "train")
    test_all = load_dataset(suite.id_dataset, "test")
    ood_tests: dict[str, ImageSet] = {}
    if suite.holdout:
        train_all, _ = holdout_classes(train_all, suite.holdout)
        test_all, held = holdout_classes(test_all, suite.holdout)
        ood_tests[f"{suite.id_dataset}-{'-'.join(map(str, suite.holdout))}"] = held
    id_train, id_val = train_val_split(train_all, suite.n_val, seed)
    id_train = ImageSet(suite.id_dataset, id_train.x, id_train.y)
    id_val = ImageSet(f"{suite.id_dataset}-val", id_val.x, id_val.y)
    id_test = ImageSet(suite.id_dataset, test_all.x, test_all.y)
    if suite.n_id_test is not None and suite.n_id_test < len(id_test):
        pick = np.sort(
            np.random.default_rng(seed + _SEED_SUBSET).choice(len(id_test), suite.n_id_test, False)
        )
        id_test = id_test.subset(pick)
    for report_name, dataset in suite.ood_datasets.items():
        ood = load_dataset(dataset, "test")
        ood_tests[report_name] = ImageSet(report_name, ood.x, None)
    for c in suite.corruptions:
        for sev in SEVERITIES:
            ood_tests[f"{c}-{sev}"] = corrupt_set(id_test, c, sev, seed + _SEED_CORRUPT)
    n_test, shape = len(id_test), id_test.shape
    if "gaussian" in suite.synthetic:
        ood_tests["gaussian"] = gaussian_noise(n_test, shape, seed + _SEED_GAUSSIAN)
    if "uniform" in suite.synthetic:
        ood_tests["uniform"] = uniform_noise(n_test, shape, seed + _SEED_UNIFORM)
    for name, path in (extra_ood or {}).items():
        if name in ood_tests:
            raise OodlabError(f"--ood-npy name {name!r} clashes with the suite's OOD set of that name")
        ood_tests[name] = load_image_array(path, name=name, expect_shape=shape)
    check_mixtures(suite, list(mixtures), list(extra_ood or {}))
    for m in mixtures:
        ood_tests[m.name] = make_mixture(m, ood_tests[m.near], ood_tests[m.far], seed + _SEED_MIX)
    ood_val = synthetic_ood_validation(id_val, suite.n_ood_val, seed + _SEED_VAL)
    data = SuiteData(suite, seed, protocol, id_train, id_val, id_test, ood_val, ood_tests)
    if protocol == "paper":
        _cut_paper_validation(data)
    return data


def _cut_paper_validation(data: SuiteData) -> None:
    """Split every (ID test, OOD test) pair 500/500/rest; tune on the first 1000, test on the rest."""
    id_a, id_b = _paper_sizes(len(data.id_test))
    for name, ood in list(data.ood_tests.items()):
        ood_a, ood_b = _paper_sizes(len(ood))
        id_fit, id_tune, id_rest = permuted_split(data.id_test, (id_a, id_b), data.seed)
        ood_fit, ood_tune, ood_rest = permuted_split(ood, (ood_a, ood_b), data.seed)
        # Detectors split validation in halves themselves (weights on the first, hyperparameters
        # on the second), so the pair keeps the reference's 500/500 order.
        id_val = ImageSet(f"{data.id_test.name}-test[:{id_a + id_b}]", _cat(id_fit, id_tune).x)
        ood_val = ImageSet(f"{name}-test[:{ood_a + ood_b}]", _cat(ood_fit, ood_tune).x)
        data.paper_val[name] = (id_val, ood_val)
        data.id_test_by_ood[name] = id_rest
        data.ood_tests[name] = ImageSet(name, ood_rest.x, ood_rest.y)


def _cat(a: ImageSet, b: ImageSet) -> ImageSet:
    return ImageSet(a.name, np.concatenate([a.x, b.x]))
