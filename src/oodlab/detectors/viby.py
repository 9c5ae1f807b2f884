"""VIBY: a bottleneck network with one learned prior per class; two scores, VIBY-I and VIBY-II."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from oodlab.detectors._registry import register_detector
from oodlab.detectors._training import HeadMethod
from oodlab.detectors.base import SHARED_PASS, Detector, trains
from oodlab.features import Outputs
from oodlab.models.heads import ClassPriorGaussianHead
from oodlab.training.bottleneck import class_rates


class _Viby(HeadMethod, Detector):
    """The network and checks both VIBY scores share (one network, trained once for both)."""

    objective = "viby"
    head = ClassPriorGaussianHead
    capabilities = trains(SHARED_PASS)

    def __init__(self, beta: float = 0.01, z_dim: int = 64, priors: int | None = None) -> None:
        self.beta = beta
        self.z_dim = z_dim
        self.priors = priors
        self._check_objective()

    def objective_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"beta": self.beta, "z_dim": self.z_dim}
        if self.priors is not None:
            params["priors"] = self.priors
        return params


@register_detector("viby-1")
class VibyWeighted(_Viby):
    """VIBY-I (trains its network): ``−Σ_y P(y|x) KL(q(z|x) ‖ p_y)``, rates weighted by the prediction.

    The network is the suite's trunk with a :class:`~oodlab.models.heads.ClassPriorGaussianHead`:
    a Gaussian encoder ``q(z|x)`` of dimension ``z_dim`` = 64 on the penultimate features, a
    linear softmax decoder and one learned Gaussian prior ``p_y`` per class (``priors`` must
    equal the number of classes), trained from scratch with the suite's recipe on
    ``CE(decoder(z), y) + β · KL(q(z|x) ‖ p_y)`` (β = ``beta`` = 0.01; objective ``viby``).
    ``P(y|x)`` is the softmax of the decoded mean; KL is closed form, in float64. ``viby-2``
    scores the same network (trained once for both).

    Returns:
        ``(N,)`` float64, at most 0; higher = more in-distribution.

    References:
        Alemi, Fischer, Dillon & Murphy, "Deep Variational Information Bottleneck", ICLR 2017;
        Alemi, Fischer & Dillon, "Uncertainty in the Variational Information Bottleneck", 2018
        (learned priors; the rate as an OOD score).

    Example:
        >>> det = create_detector("viby-1")  # doctest: +SKIP
        >>> net, _ = make_network(det.network(suite.train), data.id_train)  # doctest: +SKIP
        >>> det.fit(net, data.id_train).score(x)  # doctest: +SKIP
    """

    def _score_outputs(self, out: Outputs) -> Tensor:
        kl = class_rates(self.method_head(self.model_), self.penultimate(out))
        p = torch.softmax(out.logits.to(device=kl.device, dtype=torch.float64), dim=1)
        return -(p * kl).sum(1)


@register_detector("viby-2")
class VibyMin(_Viby):
    """VIBY-II (trains its network): ``−min_y KL(q(z|x) ‖ p_y)``, the rate to the closest class prior.

    The network is ``viby-1``'s (the same recipe, objective ``viby``, β = ``beta`` = 0.01,
    ``z_dim`` = 64; trained once for both). An input is as in-distribution as its encoding is
    close to some class's learned prior; KL is closed form, in float64.

    Returns:
        ``(N,)`` float64, at most 0; higher = more in-distribution.

    References:
        Alemi, Fischer & Dillon, "Uncertainty in the Variational Information Bottleneck", 2018.

    Example:
        >>> det = create_detector("viby-2")  # doctest: +SKIP
        >>> net, _ = make_network(det.network(suite.train), data.id_train)  # doctest: +SKIP
        >>> det.fit(net, data.id_train).score(x)  # doctest: +SKIP
    """

    def _score_outputs(self, out: Outputs) -> Tensor:
        return -class_rates(self.method_head(self.model_), self.penultimate(out)).min(dim=1).values


__all__ = ["VibyMin", "VibyWeighted"]
