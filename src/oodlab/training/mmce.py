"""Maximum mean calibration error (MMCE), plain and weighted: differentiable calibration losses.

Over a batch of ``m`` predictions with confidences ``r_i`` (the probability of the predicted
class) and correctness ``c_i ∈ {0, 1}`` (the prediction is the label), with the Laplacian
kernel ``k(r, r') = exp(−|r − r'| / width)`` (``width`` = 0.4 as in the reference):

- **MMCE** (:func:`mmce`): ``MMCE² = (1/m²) Σ_{i,j} (c_i − r_i)(c_j − r_j) k(r_i, r_j)``, the
  squared distance in the kernel's feature space between the confidences weighted by how far
  each is from being right. It is 0 for a perfectly calibrated batch.
- **Weighted MMCE** (:func:`mmce_weighted`), the form the reference trains with: with ``C`` the
  ``n_c`` correct and ``W`` the ``n_w`` wrong predictions, correct ones weighted by ``1 − r``
  and wrong ones by ``r``,

  ``MMCE_w² = (1/n_c²) Σ_{i,j∈C} (1−r_i)(1−r_j) k_ij + (1/n_w²) Σ_{i,j∈W} r_i r_j k_ij
  − (2/(n_c n_w)) Σ_{i∈C, j∈W} (1−r_i) r_j k_ij``,

  the squared MMD between the weighted confidence distributions of the correct and the wrong
  predictions. It is defined as 0 for a batch that is all correct or all wrong (one of the two
  distributions is empty).

Both return the squared form by default (the double sums above); ``squared=False`` gives
``sqrt(MMCE² + 1e-10)``, the quantity the reference adds to the loss (0 stays 0 for the
weighted form). Confidences carry the gradient; correctness is a constant.

References:
    Kumar, Sarawagi & Jain, "Trainable Calibration Measures for Neural Networks from Kernel
    Mean Embeddings", ICML 2018; github.com/aviralkumar2907/MMCE.

Example:
    >>> r = torch.tensor([0.9, 0.6, 0.8]); c = torch.tensor([1.0, 0.0, 1.0])
    >>> float(mmce_weighted(r, c)) > 0
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from oodlab.errors import OodlabError

#: Width of the Laplacian kernel (the reference's 0.4).
KERNEL_WIDTH = 0.4
_EPS = 1e-10


def laplacian_kernel(r: Tensor, width: float = KERNEL_WIDTH) -> Tensor:
    """``k(r_i, r_j) = exp(−|r_i − r_j| / width)`` for every pair of a vector ``r``: ``(m, m)``."""
    return torch.exp(-(r[:, None] - r[None, :]).abs() / width)


def _check(confidence: Tensor, correct: Tensor, width: float) -> Tensor:
    if confidence.ndim != 1 or correct.shape != confidence.shape:
        raise OodlabError(
            f"MMCE takes confidences and correctness of shape (m,), got {tuple(confidence.shape)} "
            f"and {tuple(correct.shape)}"
        )
    if not width > 0:
        raise OodlabError(f"MMCE: width must be positive, got {width!r}")
    return correct.to(confidence.dtype).detach()


def mmce(confidence: Tensor, correct: Tensor, *, width: float = KERNEL_WIDTH, squared: bool = True) -> Tensor:
    """Plain MMCE of a batch: ``(1/m²) Σ_{i,j} (c_i − r_i)(c_j − r_j) k(r_i, r_j)``.

    Args:
        confidence: ``(m,)`` confidences ``r`` in [0, 1] (the predicted class's probability).
        correct: ``(m,)`` 1 where the prediction is right, else 0 (bool or float).
        width: Width of the Laplacian kernel.
        squared: Return ``MMCE²`` (default) or ``sqrt(MMCE² + 1e-10)``.

    Returns:
        A scalar tensor (0 for an empty batch), differentiable in ``confidence``.
    """
    c = _check(confidence, correct, width)
    m = len(confidence)
    if m == 0:
        return confidence.sum() * 0
    d = c - confidence
    sq = (d[:, None] * d[None, :] * laplacian_kernel(confidence, width)).sum() / m**2
    return sq if squared else torch.sqrt(sq.clamp_min(0) + _EPS)


def mmce_weighted(
    confidence: Tensor, correct: Tensor, *, width: float = KERNEL_WIDTH, squared: bool = True
) -> Tensor:
    """Weighted MMCE of a batch (correct predictions weighted by ``1 − r``, wrong ones by ``r``).

    Args:
        confidence: ``(m,)`` confidences ``r`` in [0, 1].
        correct: ``(m,)`` 1 where the prediction is right, else 0.
        width: Width of the Laplacian kernel.
        squared: Return ``MMCE_w²`` (default) or ``sqrt(MMCE_w² + 1e-10)``.

    Returns:
        A scalar tensor, exactly 0 (with a zero gradient) when every prediction is correct or
        every one is wrong.
    """
    c = _check(confidence, correct, width)
    n_c, n_w = float(c.sum()), float((1 - c).sum())
    if n_c == 0 or n_w == 0:
        return confidence.sum() * 0
    # Signed weights: +(1 − r)/n_c on correct predictions, −r/n_w on wrong ones; the three
    # sums of the definition are then one quadratic form in the kernel matrix.
    w = c * (1 - confidence) / n_c - (1 - c) * confidence / n_w
    sq = (w[:, None] * w[None, :] * laplacian_kernel(confidence, width)).sum()
    return sq if squared else torch.sqrt(sq.clamp_min(0) + _EPS)


__all__ = ["KERNEL_WIDTH", "laplacian_kernel", "mmce", "mmce_weighted"]
