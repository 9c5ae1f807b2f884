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

from oodlab import features
from oodlab.data.imageset import ImageSet
from oodlab.detectors._tuning import select_on_validation
from oodlab.errors import OodlabError
from oodlab.features import Outputs

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


def _standardised(s_id: Tensor, s_ood: Tensor) -> tuple[Tensor, Tensor, np.ndarray, np.ndarray]:
    """Column mean and std of the pooled rows (constant columns: std 1), the standardised rows and
    their labels (ID = 1)."""
    x = torch.cat([s_id, s_ood]).to(torch.float64)
    mean = x.mean(0)
    std = x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    y = np.concatenate([np.ones(len(s_id)), np.zeros(len(s_ood))])
    return mean, std, ((x - mean) / std).numpy(), y


def fit_combiner(s_id: Tensor, s_ood: Tensor) -> Combiner:
    """Logistic regression (ID = 1) on standardised per-tap scores ``(n_id, k)`` and ``(n_ood, k)``.

    The columns are standardised with the mean and standard deviation of the pooled rows so the
    (L2-regularised, ``C = 1``) regression is well conditioned; a constant column gets std 1.
    """
    from sklearn.linear_model import LogisticRegression

    mean, std, z, y = _standardised(s_id, s_ood)
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
    _check_halves(detector, id_val, ood_val)
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


def _check_halves(detector: str, id_val: ImageSet, ood_val: ImageSet) -> None:
    if len(id_val) < 2 or len(ood_val) < 2:
        raise OodlabError(
            f"detector {detector!r} fits its layer weights on the first half of the validation sets "
            f"and needs at least 2 images in each; got {len(id_val)} ID and {len(ood_val)} OOD"
        )


# -- validated combination: members, constrained weights and rank means, chosen on held-out data --

#: How an ensemble combines its members (``combination=``).
COMBINATIONS = ("validated", "logistic")


def fit_nonnegative(s_id: Tensor, s_ood: Tensor, l2: float = 1.0) -> Combiner:
    """Logistic regression (ID = 1) with every weight ``>= 0``, on standardised per-member scores.

    The members are oriented so that higher = more ID; a non-negative combination can only add
    evidence the members agree on, never turn a member against its own direction to fit the
    validation OOD set. L2 penalty ``l2 · ||w||² / 2`` (the ``C = 1`` of :func:`fit_combiner`),
    solved by L-BFGS-B with bounds.
    """
    from scipy.optimize import minimize

    mean, std, z, y = _standardised(s_id, s_ood)
    k = z.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:k], theta[k]
        m = z @ w + b
        p = 1.0 / (1.0 + np.exp(-m))
        value = np.logaddexp(0.0, m).sum() - (y * m).sum() + 0.5 * l2 * (w @ w)
        g = p - y
        return float(value), np.concatenate([z.T @ g + l2 * w, [g.sum()]])

    bounds = [(0.0, None)] * k + [(None, None)]
    res = minimize(loss, np.zeros(k + 1), jac=True, method="L-BFGS-B", bounds=bounds)
    coef = torch.as_tensor(res.x[:k], dtype=torch.float64)
    intercept = torch.as_tensor(res.x[k:], dtype=torch.float64)
    return Combiner(mean, std, coef, intercept)


def fixed_weights(s_id: Tensor, weights: Sequence[float]) -> Combiner:
    """A combiner with given weights on the members standardised by their *ID* validation statistics."""
    x = s_id.to(torch.float64)
    std = x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    return Combiner(x.mean(0), std, w, torch.zeros(1, dtype=torch.float64))


def candidate_combiners(members: Sequence[str], s_id: Tensor, s_ood: Tensor) -> dict[str, Combiner]:
    """Every combination :func:`fit_validated` chooses from, fitted on ``(s_id, s_ood)``.

    - ``member:<name>``: one member alone (what the ensemble must never do worse than);
    - ``mean``: the equal-weight mean of the members, each standardised on ID validation;
    - ``logistic``: the unconstrained logistic regression (the reference codes');
    - ``nonnegative``: the logistic regression with weights ``>= 0``.
    """
    k = len(members)
    out = {f"member:{m}": fixed_weights(s_id, np.eye(k)[j]) for j, m in enumerate(members)}
    if k > 1:
        out["mean"] = fixed_weights(s_id, [1.0 / k] * k)
        out["logistic"] = fit_combiner(s_id, s_ood)
        out["nonnegative"] = fit_nonnegative(s_id, s_ood)
    return out


def group_aurocs(s_id: np.ndarray, s_ood: np.ndarray, groups: np.ndarray | None) -> list[float]:
    """AUROC of ``s_id`` against each group of ``s_ood`` (one value for all when ``groups`` is None)."""
    from oodlab.metrics import auroc

    if groups is None:
        return [auroc(s_id, s_ood)]
    return [auroc(s_id, s_ood[groups == g]) for g in np.unique(groups)]


def fit_validated(
    detector: str,
    members: Sequence[str],
    id_val: ImageSet,
    ood_val: ImageSet,
    candidates: Sequence[C],
    per_tap_scores: Callable[[C], tuple[Tensor, Tensor]],
) -> tuple[C, str, Combiner, list[dict[str, Any]]]:
    """Choose a hyperparameter *and* a combination of the members on held-out near-OOD validation data.

    The OOD validation images used are the **near-OOD** ones when ``ood_val`` is a synthetic set
    with kind labels (:data:`~oodlab.data.synthetic.NEAR_OOD_KINDS`: patch-shuffled images and
    class chimeras, ID strokes in shapes no class has), all of it otherwise (e.g. the paper
    protocol's real images). For every candidate hyperparameter, every combination of
    :func:`candidate_combiners` is fitted on the first halves of ``id_val`` and of those OOD
    images and judged on the second halves by its worst AUROC over the near-OOD kinds (plain
    AUROC without kinds), ties broken by the mean over kinds, then by the order of the
    candidates. The members alone are candidates, so on held-out validation data the chosen
    combination is never below the best member.

    Why near-OOD only: the low-level kinds (shuffled pixels, inversion, blur, superposition) are
    flagged best by the early taps, and a combination fitted or judged on them puts its weight
    there — which on a semantic OOD set of the same modality (MNIST for a Fashion-MNIST model, a
    held-out digit) loses to the penultimate tap alone. The single detectors still use every kind.

    Returns:
        The chosen hyperparameter, the name of the chosen combination, its combiner refitted on
        the *whole* validation sets used (members and means need no fit; the regressions gain the
        second halves), and one row per (hyperparameter, combination).
    """
    from oodlab.data.synthetic import near_ood_kinds

    near = near_ood_kinds(ood_val)
    keep = np.arange(len(ood_val)) if near is None else np.flatnonzero(near)
    _check_halves(detector, id_val, ood_val.subset(keep))
    id_a, id_b = halves(len(id_val))
    ood_a, ood_b = (keep[h] for h in halves(len(keep)))
    groups = None if near is None or ood_val.y is None else ood_val.y[ood_b]
    rows: list[dict[str, Any]] = []
    best_key: tuple[float, float] | None = None
    best: tuple[int, str] = (0, "")
    for i, cand in enumerate(candidates):
        s_id, s_ood = per_tap_scores(cand)
        for name, comb in candidate_combiners(members, s_id[id_a], s_ood[ood_a]).items():
            args = (comb.mean, comb.std, comb.coef, comb.intercept)
            a = group_aurocs(combine(s_id[id_b], *args).numpy(), combine(s_ood[ood_b], *args).numpy(), groups)
            worst, mean = float(min(a)), float(np.mean(a))
            rows.append({"candidate": cand, "combination": name, "worst_auroc": worst, "mean_auroc": mean})
            key = (-worst, -mean)
            if best_key is None or key < best_key:
                best_key, best = key, (i, name)
    s_id, s_ood = per_tap_scores(candidates[best[0]])
    comb = candidate_combiners(members, s_id, s_ood[keep])[best[1]]
    return candidates[best[0]], best[1], comb, rows


class ValidationEnsemble:
    """Mixin of the two ensembles: fit the combiner on validation data, record it, score with it.

    The detector computes per-tap validation scores for every candidate of its hyperparameter
    (``param``: ``"noise"`` or ``"perturbation"``) and calls :meth:`_fit_ensemble`; scoring goes
    through :meth:`_combine`. ``combination`` (an ``__init__`` argument of the detector) is
    ``"validated"`` (:func:`fit_validated`: the members, their mean, and constrained and
    unconstrained regressions, chosen on held-out validation data) or ``"logistic"`` (the
    reference codes' regression on every member, :func:`fit_on_validation_halves`).
    """

    name: str
    tuning_: dict[str, Any]
    combination: str

    def _check_combination(self) -> None:
        if self.combination not in COMBINATIONS:
            raise OodlabError(
                f"detector {self.name!r}: unknown combination {self.combination!r}; "
                f"known: {', '.join(COMBINATIONS)}"
            )

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
        self._check_combination()
        if self.combination == "validated":
            best, how, comb, vrows = fit_validated(
                self.name, taps, id_val, ood_val, grid, lambda v: (s_id[v], s_ood[v])
            )
            from oodlab.data.synthetic import near_ood_kinds

            criterion = (
                "AUROC on the second validation halves"
                if near_ood_kinds(ood_val) is None
                else "worst AUROC over the near-OOD validation kinds, on the second halves"
            )
            rows: list[dict[str, Any]] = vrows
        else:
            best, comb, rows = fit_on_validation_halves(
                self.name, id_val, ood_val, grid, lambda v: (s_id[v], s_ood[v])
            )
            how = "logistic"
            criterion = "fpr95 on the second validation halves" if rows else f"none ({param} fixed)"
        self.score_mean_, self.score_std_ = comb.mean, comb.std
        self.coef_, self.intercept_ = comb.coef, comb.intercept
        self.combination_ = how
        chosen: dict[str, Any] = {
            param: float(best),
            "combination": how,
            weights_label: {t: float(w) for t, w in zip(taps, comb.coef / comb.std, strict=True)},
            "criterion": criterion,
        }
        self._record_tuning(chosen, id_val, ood_val)  # type: ignore[attr-defined]
        if self.combination == "validated":
            self.tuning_["candidates"] = [
                {param: r["candidate"], **{k: v for k, v in r.items() if k != "candidate"}} for r in rows
            ]
        elif rows:
            self.tuning_["candidates"] = [
                {param: v, "fpr95": r["fpr95"], "auroc": r["auroc"]} for v, r in zip(grid, rows, strict=True)
            ]
        return float(best)

    def _combine(self, per_tap: Tensor) -> Tensor:
        return combine(per_tap, self.score_mean_, self.score_std_, self.coef_, self.intercept_)

    # -- the members, on their own ------------------------------------------------------------
    def _members_outputs(self, out: Outputs) -> Tensor:  # pragma: no cover - per detector
        raise NotImplementedError

    def _members_inputs(self, x: Tensor) -> Tensor:  # pragma: no cover - per detector
        raise NotImplementedError

    def _score_outputs(self, out: Outputs) -> Tensor:
        return self._combine(self._members_outputs(out))

    def _score_inputs(self, x: Tensor) -> Tensor:
        return self._combine(self._members_inputs(x))

    def member_scores_set(self, images: ImageSet) -> Tensor:
        """Every member's own score of ``images``, ``(N, k)`` float64, columns in ``taps_`` order.

        Each column is the single-tap detector the ensemble combines (higher = more ID), at the
        ensemble's fitted ε / perturbation; :meth:`scores_from_members` turns them into the
        ensemble's scores, so a benchmark can report the members beside the ensemble at the cost
        of one scoring.
        """
        det: Any = self
        det._check_fitted()
        if det.capabilities.own_forward:
            x = images.tensor()
            with features.channels_last(det.model_):
                parts = [
                    self._members_inputs(x[i : i + det.batch_size]) for i in range(0, len(x), det.batch_size)
                ]
            return torch.cat(parts).detach().to(torch.float64).cpu()
        out = features.outputs(det.model_, images, det.required_taps(det.model_))
        with torch.no_grad():
            return self._members_outputs(out).to(torch.float64).cpu()

    def scores_from_members(self, members: Tensor) -> Tensor:
        """The ensemble's scores ``(N,)`` from :meth:`member_scores_set`'s output."""
        return self._finish(self._combine(members), len(members))  # type: ignore[attr-defined]
