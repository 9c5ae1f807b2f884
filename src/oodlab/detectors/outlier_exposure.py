"""Outlier exposure: the base network fine-tuned to give auxiliary outliers a uniform softmax."""

from __future__ import annotations

from typing import Any, ClassVar

from oodlab.detectors._registry import register_detector
from oodlab.detectors._training import FinetuneMethod
from oodlab.detectors.base import SHARED_PASS, trains
from oodlab.detectors.logits import MSP
from oodlab.training.aux import DEFAULT_AUX


@register_detector("outlier-exposure")
class OutlierExposureMethod(FinetuneMethod, MSP):
    """Outlier exposure: MSP of a network fine-tuned with outlier exposure.

    The network is the suite's base network fine-tuned (``epochs`` of SGD, Nesterov, cosine
    from ``lr``) on ``CE(ID) + λ · mean_aux(−(1/K) Σ_i log S_i(x_aux))`` with λ = ``lam`` = 0.5,
    the auxiliary outliers being ``n_aux`` images of the set ``aux`` (``oodlab list aux``),
    made from ID training images and noise only. The score is
    ``log max_i softmax(f(x))_i`` of the fine-tuned network.

    Returns:
        ``(N,)`` float64, at most 0; higher = more in-distribution.

    References:
        Hendrycks, Mazeika & Dietterich, "Deep Anomaly Detection with Outlier Exposure",
        ICLR 2019; github.com/hendrycks/outlier-exposure (λ = 0.5; for MNIST-like data it
        trained 10 epochs with SGD Nesterov lr 0.01, cosine).

    Example:
        >>> det = create_detector("outlier-exposure")  # doctest: +SKIP
        >>> model, _ = make_network(det.network(suite.train), data.id_train)  # doctest: +SKIP
        >>> det.fit(model, data.id_train).score(x)  # doctest: +SKIP
    """

    objective = "outlier-exposure"
    capabilities = trains(SHARED_PASS)
    quick_params: ClassVar[dict[str, Any]] = {"n_aux": 200}

    def __init__(
        self, lam: float = 0.5, aux: str = DEFAULT_AUX, n_aux: int = 20_000, epochs: int = 1, lr: float = 0.01
    ) -> None:
        self.lam = lam
        self._init_finetune(aux, n_aux, epochs, lr)

    def objective_params(self) -> dict[str, Any]:
        return {"lam": self.lam}


__all__ = ["OutlierExposureMethod"]
