"""Recipes: named ways to make a suite's network, and the steps methods add to them.

A :class:`Recipe` (``oodlab list recipes``, ``oodlab bench --recipe``) turns a suite's own
:class:`~oodlab.training.TrainConfig` into another network's; :func:`with_recipe` applies one
to anything with a ``train`` recipe (a :class:`~oodlab.bench.Suite`).

Methods that train build on the suite's (base) recipe:

- :func:`finetune`: a cached fine-tuning step that starts from the base network's cached
  checkpoint and trains it further with another objective (outlier exposure, energy margin)
  on an auxiliary outlier set; by default one epoch of SGD (Nesterov, momentum 0.9, lr 0.01,
  cosine) with as many auxiliary images per step as ID images, so that it costs less than the
  base training (3-4 epochs of ID images alone).
- :func:`ensemble_members`: ``M`` copies of the base recipe that differ only in their seed;
  member 0 is the base network itself, member ``j`` uses seed ``seed + 10000·j``, so an
  ensemble of 3 reuses the first three members of an ensemble of 5 from the checkpoint cache.
- :func:`self_conditioned_autoencoder`: the HSCAE network, an autoencoder trained beside the
  base network, which it keeps frozen and is conditioned on.
- :class:`Network`: what a method scores with, one recipe or several members, and
  :func:`make_network`, which loads or trains each of them once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from oodlab.data.imageset import ImageSet
from oodlab.errors import OodlabError
from oodlab.models.ensemble import EnsembleModel
from oodlab.training.trainer import TrainConfig, fit_or_load


def lenet_recipe(mean: float, std: float, epochs: int) -> TrainConfig:
    """The FSSD reference's LeNet recipe (Adadelta lr 1.0, ×0.7 per epoch, batch 64), shortened.

    Inputs are standardised with the ID training set's pixel mean and std (inside the model),
    as the reference code does; this converges faster than mapping pixels to [−1, 1].
    """
    return TrainConfig(
        model="lenet",
        model_kwargs={"mean": mean, "std": std},
        optimizer="adadelta",
        lr=1.0,
        schedule="step",
        gamma=0.7,
        epochs=epochs,
        batch_size=64,
    )


def _input_stats(base: TrainConfig) -> dict[str, object]:
    """The input normalisation of ``base`` (the other model arguments belong to its network)."""
    return {k: v for k, v in base.model_kwargs.items() if k in ("mean", "std")}


def _lenet5(base: TrainConfig) -> TrainConfig:
    return replace(base, model="lenet5", model_kwargs=_input_stats(base), epochs=5)


def _resnet18(base: TrainConfig) -> TrainConfig:
    return replace(
        base,
        model="resnet18",
        model_kwargs={**_input_stats(base), "width": 0.25},
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="cosine",
        epochs=3,
        batch_size=128,
    )


def _lenet_caffe(base: TrainConfig) -> TrainConfig:
    return replace(
        base,
        model="lenet-caffe",
        model_kwargs=_input_stats(base),
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        schedule="none",
        epochs=5,
        batch_size=128,
    )


@dataclass(frozen=True)
class Recipe:
    """A named way to train a suite's classifier (``oodlab bench --recipe``).

    ``make`` turns the suite's own recipe into this one; it keeps the suite's input statistics
    (``mean``/``std`` in ``model_kwargs``) and the seed, and sets everything else.
    """

    name: str
    description: str
    make: Callable[[TrainConfig], TrainConfig]


#: The suite's own recipe is ``lenet``; the others swap in another network and its recipe.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "lenet",
            "the suites' LeNet of the FSSD paper (1.2M parameters, dropout), Adadelta lr 1.0 ×0.7 per "
            "epoch, batch 64, 3 epochs (4 on mnist-holdout0)",
            lambda base: base,
        ),
        Recipe(
            "lenet5",
            "LeNet-5 (62k parameters, no dropout), the same Adadelta schedule, 5 epochs",
            _lenet5,
        ),
        Recipe(
            "resnet18",
            "CIFAR-style ResNet-18 at width 0.25 (stage widths 16-128, BatchNorm, 0.7M parameters), "
            "SGD Nesterov lr 0.1 momentum 0.9, weight decay 5e-4, cosine, batch 128, 3 epochs",
            _resnet18,
        ),
        Recipe(
            "lenet-caffe",
            "Caffe's MNIST LeNet (conv 20 and 50 5x5, fc 500; 431k parameters, no dropout), Adam lr 1e-3, "
            "batch 128, 5 epochs, no weight decay or schedule",
            _lenet_caffe,
        ),
    )
}
DEFAULT_RECIPE = "lenet"


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``."""
    if name not in RECIPES:
        raise OodlabError(f"unknown recipe {name!r}; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]


def with_recipe(obj: Any, recipe: str) -> Any:
    """``obj`` (a suite, or any frozen dataclass with a ``train`` recipe) trained by the named recipe.

    ``"lenet"`` keeps the suite's own recipe.
    """
    return replace(obj, train=get_recipe(recipe).make(obj.train))


#: Seed offset between ensemble members (member 0 is the base network).
MEMBER_SEED_STRIDE = 10_000


def ensemble_members(base: TrainConfig, members: int) -> list[TrainConfig]:
    """``members`` recipes equal to ``base`` but for the seed; member 0 is ``base`` itself."""
    if isinstance(members, bool) or not isinstance(members, int) or members < 2:
        raise OodlabError(
            f"members must be an integer >= 2 (an ensemble of one is the base model), got {members!r}"
        )
    return [replace(base, seed=base.seed + MEMBER_SEED_STRIDE * j) for j in range(members)]


def finetune(
    base: TrainConfig,
    objective: str,
    objective_params: dict[str, Any] | None = None,
    *,
    aux: str | None = None,
    n_aux: int = 20_000,
    epochs: int = 1,
    lr: float = 0.01,
) -> TrainConfig:
    """A fine-tuning step: ``base``'s network trained ``epochs`` more with ``objective``.

    SGD with Nesterov momentum 0.9 and a cosine schedule from ``lr``, ``base``'s batch size and
    weight decay; ``aux`` names the auxiliary outlier set (as many per step as ID images).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise OodlabError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(lr, int | float) or not lr > 0:
        raise OodlabError(f"lr must be positive, got {lr!r}")
    return replace(
        base,
        objective=objective,
        objective_params=dict(objective_params or {}),
        aux=aux,
        n_aux=n_aux,
        aux_batch_size=None,
        init_from=base,
        optimizer="sgd",
        lr=float(lr),
        momentum=0.9,
        nesterov=True,
        schedule="cosine",
        epochs=epochs,
    )


def self_conditioned_autoencoder(
    base: TrainConfig,
    *,
    latent_dim: int = 8,
    width: int = 8,
    temperature: float = 2.0,
    epochs: int = 4,
    lr: float = 2e-3,
    batch_size: int = 128,
) -> TrainConfig:
    """The HSCAE network's recipe: ``base``'s classifier, frozen, and an autoencoder conditioned on it.

    The model is :class:`~oodlab.models.autoencoder.SelfConditionedAutoencoder` (``"hscae"``)
    around ``base``'s network, which is loaded (or trained) from the cache and never updated;
    the autoencoder minimises the reconstruction MSE with Adam (cosine schedule from ``lr``,
    batch 128) for ``epochs`` epochs over the ID training images, seeded by ``base.seed``.
    """
    return TrainConfig(
        model="hscae",
        model_kwargs={
            "classifier": {"model": base.model, "kwargs": dict(base.model_kwargs)},
            "latent_dim": latent_dim,
            "width": width,
            "temperature": float(temperature),
        },
        optimizer="adam",
        lr=float(lr),
        schedule="cosine",
        epochs=epochs,
        batch_size=batch_size,
        seed=base.seed,
        objective="reconstruction",
        classifier=base,
    )


@dataclass(frozen=True)
class Network:
    """How a method's network is made: one recipe, or several members combined by mean softmax."""

    members: tuple[TrainConfig, ...]

    def __post_init__(self) -> None:
        if not self.members:
            raise OodlabError("a network needs at least one recipe")

    @classmethod
    def single(cls, cfg: TrainConfig) -> Network:
        return cls((cfg,))

    def identity(self) -> list[dict[str, Any]]:
        """What makes the network (each member's recipe), for cache keys and reports."""
        return [m.identity() for m in self.members]

    def describe(self) -> str:
        """One line for reports: objective, auxiliary set, fine-tuning, members."""
        first = self.members[0]
        parts = [first.model]
        if first.objective != "cross-entropy":
            params = ", ".join(f"{k}={v}" for k, v in sorted(first.objective_params.items()))
            parts.append(f"{first.objective}({params})" if params else first.objective)
        if first.aux is not None:
            parts.append(f"aux {first.aux} (n={first.n_aux})")
        if first.init_from is not None:
            parts.append(f"fine-tuned {first.epochs} epoch(s) from the base network")
        if first.classifier is not None:
            kw = {k: v for k, v in first.model_kwargs.items() if k != "classifier"}
            parts.append(
                f"{', '.join(f'{k}={v}' for k, v in sorted(kw.items()))}, {first.epochs} epoch(s), "
                f"beside the frozen base {first.classifier.model}"
            )
        if len(self.members) > 1:
            parts.append(f"{len(self.members)} members, mean softmax")
        return ", ".join(parts)


def make_network(
    net: Network,
    data: ImageSet,
    *,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    device: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load or train every member of ``net`` on ``data`` (each cached on its own), on ``device``
    (:func:`oodlab.device.resolve_device`; ``None``: the CPU).

    Returns:
        The network (the model itself, or an :class:`~oodlab.models.ensemble.EnsembleModel`
        of the members) in eval mode, and a summary: checkpoints, whether all were cached,
        total training seconds of the members (fine-tuning steps count their own seconds;
        ``base_train_seconds`` is the base network's), and the auxiliary set used.
    """
    models: list[nn.Module] = []
    metas: list[dict[str, Any]] = []
    for i, cfg in enumerate(net.members):
        model, meta = fit_or_load(cfg, data, checkpoint_dir=checkpoint_dir, progress=progress, device=device)
        if log is not None and len(net.members) > 1:
            log(f"member {i + 1}/{len(net.members)} {'loaded from cache' if meta['cached'] else 'trained'}")
        models.append(model)
        metas.append(meta)
    summary: dict[str, Any] = {
        "network": net.describe(),
        "checkpoints": [m["path"] for m in metas],
        "cached": all(m["cached"] for m in metas),
        "train_seconds": round(sum(float(m["stats"]["train_seconds"]) for m in metas), 2),
        "aux": metas[0].get("aux"),
        "objective": metas[0]["stats"].get("objective"),
    }
    if "init_from" in metas[0]:
        summary["base_train_seconds"] = metas[0]["init_from"]["train_seconds"]
    if len(models) == 1:
        return models[0], summary
    return EnsembleModel(models).eval(), summary


__all__ = [
    "DEFAULT_RECIPE",
    "MEMBER_SEED_STRIDE",
    "RECIPES",
    "Network",
    "Recipe",
    "ensemble_members",
    "finetune",
    "get_recipe",
    "lenet_recipe",
    "make_network",
    "self_conditioned_autoencoder",
    "with_recipe",
]
