"""Helpers shared by the feature-space detectors (Mahalanobis, FSSD and their ensembles).

- :func:`fit_on_validation_halves`: the one implementation of "logistic-regression weights on
  the first half of the validation sets, hyperparameter on the second half" that both
  ``mahalanobis-ensemble`` and ``fssd-ensemble`` use (the reference codes' 500 / 500 split).
- :func:`combine`: the fitted linear combination, as a score.
- :class:`per_instance`: a class attribute (``capabilities``, ``tunes``) that an instance may refine
  from its own hyperparameters and fitted state.
- :func:`check_taps`, :func:`sign_step`: tap validation and the gradient-sign convention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from oodlab.data.imageset import ImageSet
from oodlab.detectors._tuning import select_on_validation
from oodlab.errors import OodlabError

C = TypeVar("C")
V = TypeVar("V")


class per_instance(Generic[V]):  # noqa: N801 - used like ``property``
    """A class attribute whose value on an *instance* is computed by ``fn(instance)``.

    Read on the class it is the class-wide ``default`` (so ``get_detector_class(name).tunes``
    keeps working); read on an instance it reflects that instance's hyperparameters and fitted
    state (so ``det.capabilities`` says exactly how ``det.score`` will run).
    """

    def __init__(self, default: V) -> None:
        self.default = default
        self.fn: Callable[[Any], V] | None = None

    def __call__(self, fn: Callable[[Any], V]) -> per_instance[V]:
        self.fn = fn
        self.__doc__ = fn.__doc__
        return self

    def __get__(self, obj: object, objtype: type | None = None) -> V:
        if obj is None or self.fn is None:
            return self.default
        return self.fn(obj)


def check_taps(detector: str, model: nn.Module, taps: Sequence[str], allow_logits: bool = False) -> None:
    """Raise :class:`OodlabError` naming the detector, the tap and the model's taps if one is unknown."""
    names = getattr(model, "tap_names", None)
    if names is None:
        raise OodlabError(
            f"detector {detector!r} reads feature taps, but {type(model).__name__} names none; "
            "wrap the model in an oodlab TappedModel"
        )
    known = tuple(names) + (("logits",) if allow_logits else ())
    for tap in taps:
        if tap not in known:
            raise OodlabError(
                f"detector {detector!r}: model {type(model).__name__} has no tap {tap!r}; "
                f"its taps are: {', '.join(known)}"
            )


def sign_step(grad: Tensor) -> Tensor:
    """``+1`` where ``grad >= 0``, ``-1`` elsewhere: the reference codes' ``(ge(g, 0) - 0.5) * 2``.

    Unlike ``torch.sign`` a zero gradient maps to ``+1``, as in the ODIN and Mahalanobis
    reference implementations.
    """
    return torch.where(grad >= 0, 1.0, -1.0).to(grad.dtype)


# -- logistic regression on validation halves -----------------------------------------------


@dataclass
class Combiner:
    """``score = ((s − mean) / std) · coef + intercept`` over per-tap scores ``s`` ``(N, k)``."""

    mean: Tensor
    std: Tensor
    coef: Tensor
    intercept: Tensor


def halves(n: int) -> tuple[slice, slice]:
    """The first ``n // 2`` and the remaining items."""
    return slice(0, n // 2), slice(n // 2, n)


def fit_combiner(s_id: Tensor, s_ood: Tensor) -> Combiner:
    """Logistic regression (ID = 1) on standardised per-tap scores ``(n_id, k)`` and ``(n_ood, k)``.

    The columns are standardised with the mean and standard deviation of the pooled rows so the
    (L2-regularised, ``C = 1``) regression is well conditioned; a constant column gets std 1.
    """
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([s_id, s_ood]).to(torch.float64)
    mean = x.mean(0)
    std = x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    z = ((x - mean) / std).numpy()
    y = np.concatenate([np.ones(len(s_id)), np.zeros(len(s_ood))])
    lr = LogisticRegression(C=1.0, max_iter=1000)
    lr.fit(z, y)
    coef = torch.as_tensor(lr.coef_[0], dtype=torch.float64)
    intercept = torch.as_tensor(lr.intercept_, dtype=torch.float64)
    if not (torch.isfinite(coef).all() and torch.isfinite(intercept).all()):
        raise OodlabError("logistic regression on the validation scores gave non-finite weights")
    return Combiner(mean, std, coef, intercept)


def combine(scores: Tensor, mean: Tensor, std: Tensor, coef: Tensor, intercept: Tensor) -> Tensor:
    """The combiner's decision function (log-odds of ID), float64 ``(N,)``."""
    z = (scores.to(torch.float64) - mean.to(torch.float64)) / std.to(torch.float64)
    return z @ coef.to(torch.float64) + intercept.to(torch.float64).reshape(())


def fit_on_validation_halves(
    detector: str,
    id_val: ImageSet,
    ood_val: ImageSet,
    candidates: Sequence[C],
    per_tap_scores: Callable[[C], tuple[Tensor, Tensor]],
) -> tuple[C, Combiner, list[dict[str, float]]]:
    """Fit LR weights on the first halves; choose a candidate hyperparameter on the second halves.

    For every candidate, ``per_tap_scores(candidate)`` gives the per-tap scores ``(len(id_val), k)``
    and ``(len(ood_val), k)``; a logistic regression (ID = 1) is fitted on the first half of each
    set and the candidate whose combined score has the lowest FPR@95%TPR on the second halves is
    chosen (:func:`select_on_validation`; ties: higher AUROC, then the earlier candidate). With a
    single candidate nothing is chosen and the second halves are not scored. Bench suites under
    the paper protocol pass 1000 + 1000 validation images, which reproduces the reference's
    500 (weights) / 500 (hyperparameters) split.

    Returns:
        The chosen candidate, its combiner, and one row per candidate (empty for one candidate).
    """
    if len(id_val) < 2 or len(ood_val) < 2:
        raise OodlabError(
            f"detector {detector!r} fits its layer weights on the first half of the validation sets "
            f"and needs at least 2 images in each; got {len(id_val)} ID and {len(ood_val)} OOD"
        )
    id_a, id_b = halves(len(id_val))
    ood_a, ood_b = halves(len(ood_val))
    fitted: dict[int, Combiner] = {}

    def evaluate(i: int) -> tuple[Tensor, Tensor]:
        s_id, s_ood = per_tap_scores(candidates[i])
        comb = fit_combiner(s_id[id_a], s_ood[ood_a])
        fitted[i] = comb
        args = (comb.mean, comb.std, comb.coef, comb.intercept)
        return combine(s_id[id_b], *args), combine(s_ood[ood_b], *args)

    if len(candidates) == 1:
        s_id, s_ood = per_tap_scores(candidates[0])
        return candidates[0], fit_combiner(s_id[id_a], s_ood[ood_a]), []
    best, rows = select_on_validation(list(range(len(candidates))), evaluate)
    for i, row in enumerate(rows):
        row["candidate"] = candidates[i]  # type: ignore[assignment]
    return candidates[best], fitted[best], rows


class ValidationEnsemble:
    """Mixin of the two ensembles: fit the combiner on validation halves, record it, score with it.

    The detector computes per-tap validation scores for every candidate of its hyperparameter
    (``param``: ``"noise"`` or ``"perturbation"``) and calls :meth:`_fit_ensemble`; scoring goes
    through :meth:`_combine`.
    """

    name: str
    tuning_: dict[str, Any]

    def _fit_ensemble(
        self,
        param: str,
        weights_label: str,
        taps: Sequence[str],
        grid: Sequence[float],
        s_id: dict[float, Tensor],
        s_ood: dict[float, Tensor],
        id_val: ImageSet,
        ood_val: ImageSet,
    ) -> float:
        """Fit, store ``coef_``/``intercept_``/``score_mean_``/``score_std_``, record the tuning.

        Returns:
            The chosen value of ``param``.
        """
        best, comb, rows = fit_on_validation_halves(
            self.name, id_val, ood_val, grid, lambda v: (s_id[v], s_ood[v])
        )
        self.score_mean_, self.score_std_ = comb.mean, comb.std
        self.coef_, self.intercept_ = comb.coef, comb.intercept
        chosen: dict[str, Any] = {
            param: float(best),
            weights_label: {t: float(w) for t, w in zip(taps, comb.coef / comb.std, strict=True)},
            "criterion": "fpr95 on the second validation halves" if rows else f"none ({param} fixed)",
        }
        self._record_tuning(chosen, id_val, ood_val)  # type: ignore[attr-defined]
        if rows:
            self.tuning_["candidates"] = [
                {param: v, "fpr95": r["fpr95"], "auroc": r["auroc"]} for v, r in zip(grid, rows, strict=True)
            ]
        return float(best)

    def _combine(self, per_tap: Tensor) -> Tensor:
        return combine(per_tap, self.score_mean_, self.score_std_, self.coef_, self.intercept_)
