"""The layer study: per-layer OOD scores of ReLU and log-softmax residual networks.

(Module under construction: the networks come first so they can be trained.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from oodlab.data.imageset import ImageSet
from oodlab.data.splits import permuted_split
from oodlab.errors import OodlabError
from oodlab.training import TrainConfig
from oodlab.training.objectives import _check_nonneg
from oodlab.training.recipes import get_recipe

#: Entropy weights λ of the log-softmax networks the study compares with the ReLU one.
DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, 1e-2)
#: The residual network the study trains (a recipe of :mod:`oodlab.training.recipes`).
DEFAULT_RECIPE = "resnet18"


@dataclass(frozen=True)
class LayerStudyConfig:
    """The size of a layer study (small enough for two CPU cores by default).

    Attributes:
        lambdas: Entropy weights λ of the log-softmax networks.
        recipe: Residual-network recipe (``oodlab list recipes``) the networks follow.
        width: Width multiplier of the networks (overrides the recipe's).
        epochs: Training epochs (overrides the recipe's; ``None`` keeps it).
        n_train: Train on a seeded subset of this many ID training images (``None``: all).
        n_fit: ID training images the per-layer Mahalanobis Gaussians are fitted on.
        n_eval: Images per ID/OOD test set and per validation set (seeded subsets).
    """

    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    recipe: str = DEFAULT_RECIPE
    width: float = 0.125
    epochs: int | None = 1
    n_train: int | None = 12_800
    n_fit: int = 5000
    n_eval: int = 2000


def subsample(images: ImageSet, n: int | None, seed: int) -> ImageSet:
    """A seeded subset of ``n`` images of ``images`` (all of them if ``n`` is ``None`` or larger)."""
    if n is None or n >= len(images):
        return images
    part = permuted_split(images, [n], seed)[0]
    return ImageSet(images.name, part.x, part.y)


def layer_networks(base: TrainConfig, cfg: LayerStudyConfig | None = None) -> dict[str, TrainConfig]:
    """The study's networks, by label: ``relu``, then ``logsoftmax λ=<λ>`` for each λ.

    Each is ``cfg.recipe`` applied to the suite's ``base`` recipe (same optimiser, schedule and
    seed), at ``cfg.width`` for ``cfg.epochs``; the log-softmax ones set
    ``activation="logsoftmax"`` and train with the ``entropy-min`` objective at weight λ.
    """
    cfg = cfg or LayerStudyConfig()
    lams = [_check_nonneg("lam", lam, "entropy-min") for lam in cfg.lambdas]
    relu = get_recipe(cfg.recipe).make(base)
    if relu.model not in ("resnet18", "resnet34"):
        raise OodlabError(
            f"the layer study needs a residual network; recipe {cfg.recipe!r} trains {relu.model}"
        )
    relu = replace(
        relu,
        model_kwargs={**relu.model_kwargs, "width": cfg.width},
        epochs=relu.epochs if cfg.epochs is None else cfg.epochs,
    )
    nets = {"relu": relu}
    for lam in lams:
        nets[f"logsoftmax λ={lam:g}"] = replace(
            relu,
            model_kwargs={**relu.model_kwargs, "activation": "logsoftmax"},
            objective="entropy-min",
            objective_params={"lam": lam},
        )
    return nets
