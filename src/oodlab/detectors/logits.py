"""Detectors that read only the logits: MSP, temperature-scaled MSP, MiSP, max-logit, energy, entropy.

All of them compute in float64 from ``log_softmax``: a float32 softmax saturates at 1.0 on a
good model, and about 9% of MNIST test images would then tie at one score.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from oodlab import features
from oodlab.detectors._registry import register_detector
from oodlab.detectors._tuning import select_on_validation
from oodlab.detectors.base import Detector
from oodlab.features import Outputs

#: ODIN's temperature grid (docs/methods.md, "Logit detectors").
TEMPERATURES: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def log_softmax64(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``log softmax(logits / T)`` in float64."""
    return torch.log_softmax(logits.to(torch.float64) / temperature, dim=1)


def log_max_softmax(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``log max_i softmax(logits / T)_i`` in float64, exact for any logit margin.

    Computed as ``−log1p(Σ_{i≠argmax} exp(z_i − z_max))``: ``log_softmax`` alone returns exactly
    0 once the margin exceeds about 37 (``z_max − logsumexp z`` rounds to 0 in float64), which
    would tie the most confident inputs.
    """
    z = logits.to(torch.float64) / temperature
    top = z.max(dim=1, keepdim=True)
    rest = torch.exp(z - top.values).scatter(1, top.indices, 0.0)
    return -torch.log1p(rest.sum(dim=1))


@register_detector("msp")
class MSP(Detector):
    """Maximum softmax probability.

    ``score(x) = log max_i softmax(f(x))_i``: the log of MSP, which ranks exactly as MSP does
    but never saturates (MSP itself is ``exp(score)``).

    Returns:
        ``(N,)`` float64, at most 0; higher = more in-distribution.

    References:
        Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
        Examples in Neural Networks", ICLR 2017.

    Example:
        >>> det = create_detector("msp").fit(model, id_train)  # doctest: +SKIP
        >>> det.score(x)  # doctest: +SKIP
    """

    def __init__(self) -> None:
        pass

    def _score_outputs(self, out: Outputs) -> Tensor:
        return log_max_softmax(out.logits)


@register_detector("temperature")
class TemperatureScaling(Detector):
    """MSP at a temperature ``T`` chosen on validation data.

    ``score(x) = log max_i softmax(f(x) / T)_i``.

    ``T`` (when ``temperature`` is ``None``) is picked from ``grid``: with an OOD validation set,
    the one with the lowest FPR@95%TPR on (``id_val``, ``ood_val``); with ID validation only, the
    one with the lowest negative log-likelihood of ``id_val``'s labels (classic calibration).

    Returns:
        ``(N,)`` float64; higher = more in-distribution.

    References:
        Guo et al., "On Calibration of Modern Neural Networks", ICML 2017; Liang et al.,
        "Enhancing the Reliability of Out-of-distribution Image Detection in Neural Networks"
        (ODIN), ICLR 2018.
    """

    tunes = True

    def __init__(self, temperature: float | None = None, grid: Sequence[float] = TEMPERATURES) -> None:
        self.temperature = temperature
        self.grid = list(grid)

    def _fit(self, model, id_train, id_val, ood_val) -> None:  # type: ignore[no-untyped-def]
        if self.temperature is not None:
            self.temperature_ = float(self.temperature)
            return
        if id_val is None:
            self._require_validation(id_val, ood_val, "the temperature")
        assert id_val is not None
        logits_id = features.outputs(model, id_val).logits
        if ood_val is not None:
            logits_ood = features.outputs(model, ood_val).logits
            best, _ = select_on_validation(
                self.grid,
                lambda t: (self._msp(logits_id, t), self._msp(logits_ood, t)),
            )
            criterion = "fpr95"
        else:
            labels = id_val.labels()
            nll = [
                float(-log_softmax64(logits_id, t)[torch.arange(len(labels)), labels].mean())
                for t in self.grid
            ]
            best = self.grid[min(range(len(nll)), key=nll.__getitem__)]
            criterion = "nll"
        self.temperature_ = float(best)
        self._record_tuning({"temperature": self.temperature_, "criterion": criterion}, id_val, ood_val)

    @staticmethod
    def _msp(logits: Tensor, t: float) -> Tensor:
        return log_max_softmax(logits, t)

    def _score_outputs(self, out: Outputs) -> Tensor:
        return self._msp(out.logits, self.temperature_)


@register_detector("misp")
class MiSP(Detector):
    """Minimum softmax probability: a confident ID input leaves a tiny minimum.

    ``score(x) = −log min_i softmax(f(x) / T)_i``, which ranks as ``−min_i S_i`` does.

    Returns:
        ``(N,)`` float64, at least ``log K``; higher = more in-distribution.

    References:
        Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
        Examples in Neural Networks", ICLR 2017 (the softmax-confidence baseline; MiSP reads the
        other end of the same distribution). The minimum softmax probability as a per-layer score
        is described in ``docs/methods.md`` ("Logit detectors").
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def _score_outputs(self, out: Outputs) -> Tensor:
        return -log_softmax64(out.logits, self.temperature).min(dim=1).values


@register_detector("maxlogit")
class MaxLogit(Detector):
    """Maximum logit, ``score(x) = max_i f_i(x)``.

    References:
        Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022.
    """

    def __init__(self) -> None:
        pass

    def _score_outputs(self, out: Outputs) -> Tensor:
        return out.logits.to(torch.float64).max(dim=1).values


@register_detector("energy")
class Energy(Detector):
    """Negative free energy, ``score(x) = T · logsumexp(f(x) / T)``.

    References:
        Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    def _score_outputs(self, out: Outputs) -> Tensor:
        t = self.temperature
        return t * torch.logsumexp(out.logits.to(torch.float64) / t, dim=1)


@register_detector("entropy")
class NegativeEntropy(Detector):
    """Negative predictive entropy, ``score(x) = Σ_i S_i log S_i`` with ``S = softmax(f(x))``.

    Returns:
        ``(N,)`` float64 in ``[−log K, 0]``; higher = more in-distribution.

    References:
        Lakshminarayanan, Pritzel & Blundell, "Simple and Scalable Predictive Uncertainty
        Estimation using Deep Ensembles", NeurIPS 2017 (predictive entropy on unseen classes);
        Ren et al., "Likelihood Ratios for Out-of-Distribution Detection", NeurIPS 2019 (entropy
        as an OOD baseline).
    """

    def __init__(self) -> None:
        pass

    def _score_outputs(self, out: Outputs) -> Tensor:
        logp = log_softmax64(out.logits)
        return (logp.exp() * logp).sum(dim=1)


__all__ = ["MSP", "MaxLogit", "MiSP", "Energy", "NegativeEntropy", "TemperatureScaling"]
