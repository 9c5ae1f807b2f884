"""Training: one seeded trainer, objectives, auxiliary outlier sets, recipes and safe checkpoints.

- :mod:`~oodlab.training.objectives`: what the trainer minimises (``cross-entropy``,
  ``outlier-exposure``, ``energy-margin``; ``bin``/``binc`` in :mod:`~oodlab.training.binary`,
  ``vib``/``viby`` in :mod:`~oodlab.training.bottleneck`), a registry like the detectors'.
- :mod:`~oodlab.training.mmce`: the MMCE calibration losses, plain and weighted
  (:func:`mmce`, :func:`mmce_weighted`); :mod:`~oodlab.training.gaussian`: closed-form KL
  divergences of diagonal Gaussians.
- :mod:`~oodlab.training.aux`: auxiliary outlier sets made from ID training images or noise.
- :mod:`~oodlab.training.recipes`: named recipes, fine-tuning steps, ensemble members and the
  :class:`Network` a method scores with.
- :mod:`~oodlab.training.trainer`: :class:`TrainConfig`, :func:`train`, :func:`fit_or_load`.
"""

from oodlab.training.aux import build_aux, check_aux, list_aux, register_aux
from oodlab.training.checkpoint import load_checkpoint, save_checkpoint
from oodlab.training.gaussian import kl_diag_gaussians, kl_standard_normal
from oodlab.training.mmce import mmce, mmce_weighted
from oodlab.training.objectives import (
    Objective,
    create_objective,
    get_objective_class,
    list_objectives,
    register_objective,
)
from oodlab.training.trainer import TrainConfig, build_model, fit_or_load, train

from oodlab.training import binary, bottleneck  # noqa: F401  # isort: skip  (register bin, binc, vib, viby)
from oodlab.training.recipes import (  # isort: skip  (recipes import the trainer)
    DEFAULT_RECIPE,
    RECIPES,
    Network,
    Recipe,
    ensemble_members,
    finetune,
    get_recipe,
    make_network,
    self_conditioned_autoencoder,
    with_recipe,
)

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "Network",
    "Objective",
    "Recipe",
    "TrainConfig",
    "build_aux",
    "build_model",
    "check_aux",
    "create_objective",
    "ensemble_members",
    "kl_diag_gaussians",
    "kl_standard_normal",
    "mmce",
    "mmce_weighted",
    "finetune",
    "fit_or_load",
    "get_objective_class",
    "get_recipe",
    "list_aux",
    "list_objectives",
    "load_checkpoint",
    "make_network",
    "register_aux",
    "register_objective",
    "save_checkpoint",
    "self_conditioned_autoencoder",
    "train",
    "with_recipe",
]
