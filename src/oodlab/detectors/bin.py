"""BIN: a network trained with one sigmoid per class, scored by its largest sigmoid."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from oodlab.detectors._registry import register_detector
from oodlab.detectors._training import ObjectiveMethod
from oodlab.detectors.base import SHARED_PASS, Detector, trains
from oodlab.features import Outputs


def log_max_sigmoid(logits: Tensor) -> Tensor:
    """``log max_k σ(f_k) = log σ(max_k f_k)`` in float64 (σ is increasing; never saturates at 0)."""
    return F.logsigmoid(logits.to(torch.float64).max(dim=1).values)


@register_detector("bin")
class Bin(ObjectiveMethod, Detector):
    """BIN (trains its network): the largest per-class sigmoid of a network trained with the BIN loss.

    The network is the suite's recipe trained from scratch with
    ``−log σ(f_y) − ζ Σ_{k≠y} log(1 − σ(f_k))`` (ζ = ``zeta`` = 0.05; objective ``bin``):
    each logit is an independent "is it this class?" sigmoid, and the other classes are pushed
    down only weakly. Predictions are ``argmax_k f_k``. The score is
    ``log max_k σ(f_k(x))``, the log of the largest class probability, in float64.

    Returns:
        ``(N,)`` float64, at most 0; higher = more in-distribution.

    References:
        Shu, Xu & Liu, "DOC: Deep Open Classification of Text Documents", EMNLP 2017 (one
        sigmoid per class to reject inputs of no known class). Formula and defaults:
        docs/training-methods.md.

    Example:
        >>> det = create_detector("bin")  # doctest: +SKIP
        >>> net, _ = make_network(det.network(suite.train), data.id_train)  # doctest: +SKIP
        >>> det.fit(net, data.id_train).score(x)  # doctest: +SKIP
    """

    objective = "bin"
    capabilities = trains(SHARED_PASS)

    def __init__(self, zeta: float = 0.05) -> None:
        self.zeta = zeta
        self._check_objective()

    def objective_params(self) -> dict[str, Any]:
        return {"zeta": self.zeta}

    def _score_outputs(self, out: Outputs) -> Tensor:
        return log_max_sigmoid(out.logits)


__all__ = ["Bin", "log_max_sigmoid"]
