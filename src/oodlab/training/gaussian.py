"""Closed-form KL divergences between diagonal Gaussians (the rate of a variational bottleneck).

A Gaussian is given by its mean ``mu`` and its log-variance ``logvar`` (same shape, last
dimension the latent dimension ``z``); every function sums over that last dimension.

- ``KL(N(μ_q, σ_q²) ‖ N(μ_p, σ_p²)) = ½ Σ_d [ log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²) / σ_p² − 1 ]``
- against the standard normal: ``KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ_d [ μ² + σ² − log σ² − 1 ]``.

Both are ≥ 0 and 0 exactly when the two Gaussians are equal; arguments broadcast, so
``kl_diag_gaussians(mu[:, None], logvar[:, None], prior_mu[None], prior_logvar[None])``
gives every (input, prior) pair at once.
"""

from __future__ import annotations

from torch import Tensor


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, exp(logvar)) ‖ N(0, I))`` summed over the last dimension: shape ``mu.shape[:-1]``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1)


def kl_diag_gaussians(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """``KL(N(mu_q, exp(logvar_q)) ‖ N(mu_p, exp(logvar_p)))`` summed over the last dimension (broadcasts)."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1).sum(-1)


__all__ = ["kl_diag_gaussians", "kl_standard_normal"]
