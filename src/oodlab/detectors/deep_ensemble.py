"""Deep ensemble: M independently seeded networks, scored by the MSP of their mean softmax."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from oodlab.data.imageset import ImageSet
from oodlab.detectors._registry import register_detector
from oodlab.detectors._training import check_int
from oodlab.detectors.base import SHARED_PASS, trains
from oodlab.detectors.logits import MSP
from oodlab.errors import OodlabError
from oodlab.models.ensemble import EnsembleModel
from oodlab.training.recipes import Network, ensemble_members
from oodlab.training.trainer import TrainConfig


@register_detector("deep-ensemble")
class DeepEnsemble(MSP):
    """Deep ensemble: MSP of the mean softmax of ``members`` networks.

    ``score(x) = log max_i (1/M) Σ_m softmax(f_m(x))_i`` over ``M = members`` (default 5)
    copies of the suite's base recipe that differ only in their seed (member 0 is the base
    network; member ``j`` uses seed ``seed + 10000·j``). Each member is trained and cached on
    its own, so ``members=3`` reuses three of the five; training costs M × one network, and
    scoring M forward passes.

    The network it scores is an :class:`~oodlab.models.ensemble.EnsembleModel`, whose output is
    the log of the mean softmax; so the post-hoc detectors that read only softmax probabilities
    run on the ensemble too (``msp`` is this score, ``misp``, ``entropy``, ``temperature``,
    ``odin``), while ``energy`` and ``maxlogit`` are constant on it and feature-space detectors
    need one member's taps.

    Returns:
        ``(N,)`` float64, at most 0; higher = more in-distribution.

    References:
        Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty
        Estimation using Deep Ensembles", NeurIPS 2017.
    """

    capabilities = trains(SHARED_PASS)
    quick_params: ClassVar[dict[str, Any]] = {"members": 2}

    def __init__(self, members: int = 5) -> None:
        self.members = check_int("deep-ensemble", "members", members, 2)

    def network(self, base: TrainConfig) -> Network:
        return Network(tuple(ensemble_members(base, self.members)))

    def _fit(
        self, model: nn.Module, id_train: ImageSet, id_val: ImageSet | None, ood_val: ImageSet | None
    ) -> None:
        if not isinstance(model, EnsembleModel) or len(model.members) != self.members:
            got = len(model.members) if isinstance(model, EnsembleModel) else 1
            raise OodlabError(
                f"detector 'deep-ensemble' (members={self.members}) scores an ensemble of {self.members} "
                f"networks, got {got}; build it with make_network(det.network(recipe), id_train)"
            )


__all__ = ["DeepEnsemble"]
