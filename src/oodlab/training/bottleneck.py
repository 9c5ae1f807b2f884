"""VIB and VIBY objectives: a variational information bottleneck on the penultimate features.

The network has a Gaussian head (:mod:`oodlab.models.heads`): an encoder
``q(z|x) = N(μ(h), diag σ²(h))`` of dimension ``z`` = 64 on the trunk's penultimate features
``h``, and a linear softmax decoder. Each step decodes one reparameterised sample
``z = μ + σ ⊙ ε``, ``ε ~ N(0, I)``:

- ``vib``: ``loss = CE(decoder(z), y) + β · KL(q(z|x) ‖ N(0, I))``, β = 0.005.
- ``viby``: one learned Gaussian prior ``p_y`` per class, and the KL term is to the true
  class's prior: ``loss = CE(decoder(z), y) + β · KL(q(z|x) ‖ p_y)``, β = 0.01.

The KL terms are closed-form (:mod:`oodlab.training.gaussian`). The *rate* of an input is its
KL term; :func:`rate` and :func:`class_rates` compute it in float64 for the detectors: VIB
scores ``−rate``, VIBY ``−Σ_y P(y|x) KL(q‖p_y)`` (VIBY-I) or ``−min_y KL(q‖p_y)`` (VIBY-II).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oodlab.models.heads import ClassPriorGaussianHead, GaussianHead, check_z_dim
from oodlab.training.binary import check_nonneg, penultimate, require_head
from oodlab.training.gaussian import kl_diag_gaussians, kl_standard_normal
from oodlab.training.objectives import Objective, register_objective


def rate(head: GaussianHead, h: Tensor) -> Tensor:
    """``KL(q(z|x) ‖ N(0, I))`` per input ``(N,)``, float64, from penultimate features ``h``."""
    mu, logvar = head.encode(h)
    return kl_standard_normal(mu.double(), logvar.double())


def class_rates(head: ClassPriorGaussianHead, h: Tensor) -> Tensor:
    """``KL(q(z|x) ‖ p_y)`` for every input and class ``(N, K)``, float64."""
    mu, logvar = head.encode(h)
    return kl_diag_gaussians(
        mu.double()[:, None],
        logvar.double()[:, None],
        head.prior_mu.double()[None],
        head.prior_logvar.double()[None],
    )


def _sample_logits(head: GaussianHead, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    mu, logvar = head.encode(h)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    return head.decoder(z), mu, logvar


@register_objective("vib")
class Vib(Objective):
    """VIB: ``CE(decoder(z), y) + β · KL(q(z|x) ‖ N(0, I))``, β = ``beta`` = 0.005, z = ``z_dim`` = 64.

    References:
        Alemi, Fischer, Dillon & Murphy, "Deep Variational Information Bottleneck", ICLR 2017;
        Alemi, Fischer & Dillon, "Uncertainty in the Variational Information Bottleneck", 2018
        (the rate as an OOD score).
    """

    def __init__(self, beta: float = 0.005, z_dim: int = 64) -> None:
        self.beta = check_nonneg("vib", "beta", beta, "β, the weight of the KL term")
        self.z_dim = check_z_dim(z_dim, "objective 'vib'")

    def head_spec(self) -> dict[str, Any]:
        return {"name": "vib", "z_dim": self.z_dim}

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, x_aux: Tensor | None, context: Tensor | None = None
    ) -> Tensor:
        head = require_head(model, GaussianHead, "vib")
        logits, mu, logvar = _sample_logits(head, penultimate(model, x))
        return F.cross_entropy(logits, y) + self.beta * kl_standard_normal(mu, logvar).mean()


@register_objective("viby")
class Viby(Objective):
    """VIBY: ``CE(decoder(z), y) + β · KL(q(z|x) ‖ p_y)`` with a learned prior per class, β = 0.01.

    ``priors`` (the number of class priors) must equal the number of classes; ``None`` makes
    it so. The priors are trained by the KL term along with the encoder.
    """

    def __init__(self, beta: float = 0.01, z_dim: int = 64, priors: int | None = None) -> None:
        self.beta = check_nonneg("viby", "beta", beta, "β, the weight of the KL term")
        self.z_dim = check_z_dim(z_dim, "objective 'viby'")
        self.priors = priors

    def head_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": "viby", "z_dim": self.z_dim}
        if self.priors is not None:
            spec["priors"] = self.priors
        return spec

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, x_aux: Tensor | None, context: Tensor | None = None
    ) -> Tensor:
        head = require_head(model, ClassPriorGaussianHead, "viby")
        logits, mu, logvar = _sample_logits(head, penultimate(model, x))
        kl = kl_diag_gaussians(mu, logvar, head.prior_mu[y], head.prior_logvar[y])
        return F.cross_entropy(logits, y) + self.beta * kl.mean()


__all__ = ["Vib", "Viby", "class_rates", "rate"]
