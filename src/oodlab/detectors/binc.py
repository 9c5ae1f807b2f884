"""BINC: a softmax head for predictions and a calibrated BIN head for the OOD score, on one trunk."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from oodlab.detectors._registry import register_detector
from oodlab.detectors._training import HeadMethod
from oodlab.detectors.base import SHARED_PASS, Detector, trains
from oodlab.detectors.bin import log_max_sigmoid
from oodlab.features import Outputs
from oodlab.models.heads import BincHead


@register_detector("binc")
class Binc(HeadMethod, Detector):
    """BINC (trains its network): the BIN head's largest sigmoid, next to a softmax head that predicts.

    The network is the suite's trunk with a :class:`~oodlab.models.heads.BincHead`: a shared
    layer ``g = ReLU(W h)`` of width ``z_dim`` = 64 on the penultimate features ``h``, a softmax
    head trained with cross-entropy and a BIN head trained with the BIN loss (ζ = ``zeta`` =
    0.05) plus ``λ · MMCE_w`` (λ = ``lam`` = 0.5; :func:`oodlab.training.mmce_weighted` of the
    BIN head's confidences), all from scratch with the suite's recipe (objective ``binc``).
    Predictions (and accuracy) are the softmax head's; the score is
    ``log max_k σ(b_k(x))`` of the BIN head's logits ``b``, in float64.

    Returns:
        ``(N,)`` float64, at most 0; higher = more in-distribution.

    References:
        Kumar, Sarawagi & Jain, "Trainable Calibration Measures for Neural Networks from Kernel
        Mean Embeddings", ICML 2018 (MMCE; github.com/aviralkumar2907/MMCE).

    Example:
        >>> det = create_detector("binc")  # doctest: +SKIP
        >>> net, _ = make_network(det.network(suite.train), data.id_train)  # doctest: +SKIP
        >>> det.fit(net, data.id_train).score(x)  # doctest: +SKIP
    """

    objective = "binc"
    head = BincHead
    capabilities = trains(SHARED_PASS)

    def __init__(self, lam: float = 0.5, zeta: float = 0.05, z_dim: int = 64) -> None:
        self.lam = lam
        self.zeta = zeta
        self.z_dim = z_dim
        self._check_objective()

    def objective_params(self) -> dict[str, Any]:
        return {"lam": self.lam, "zeta": self.zeta, "z_dim": self.z_dim}

    def _score_outputs(self, out: Outputs) -> Tensor:
        return log_max_sigmoid(self.method_head(self.model_).bin_logits(self.penultimate(out)))


__all__ = ["Binc"]
