"""Mahalanobis-distance detectors: one tap (``mahalanobis``) and a per-tap ensemble.

Both fit class-conditional Gaussians with one tied covariance to a tap's features on the ID
training set (true labels), score by the negated distance to the closest class mean, and may
move the input a small step ε towards that class first (input preprocessing, as ODIN does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from oodlab import features
from oodlab.data.imageset import ImageSet
from oodlab.detectors._ensemble import (
    ValidationEnsemble,
    check_taps,
    per_instance,
    sign_step,
)
from oodlab.detectors._features import ROWS, FeatureFitted, check_features
from oodlab.detectors._registry import register_detector
from oodlab.detectors._tuning import tune_single_score
from oodlab.detectors.base import INPUT_GRADIENT, SHARED_PASS, TAPS, Capabilities, Detector
from oodlab.errors import OodlabError
from oodlab.features import Outputs, batches, model_device
from oodlab.models.base import PENULTIMATE

#: Input-preprocessing magnitudes of the reference code, raw-pixel units (docs/methods.md, "Mahalanobis").
NOISES: tuple[float, ...] = (0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01)


# -- the Gaussian model, on tensors --------------------------------------------------------


def tap_spec(tap: str) -> str:
    """The :class:`Outputs` spec of a tap's pooled features: ``"conv2@mean"``; the penultimate as is."""
    return tap if tap == PENULTIMATE else f"{tap}@mean"


def pool(t: Tensor) -> Tensor:
    """Spatial mean of a map ``(N, C, ...)`` → ``(N, C)`` (the reference's ``view(N, C, -1).mean(2)``)."""
    return features.spatial_mean(t)


def class_gaussians(feats: Tensor, labels: Tensor, rows: int = ROWS) -> tuple[Tensor, Tensor, list[int]]:
    """Class means and the tied covariance of the class-centred features, in float64.

    ``cov = (1/N) Σ_i (z_i − z̄)(z_i − z̄)ᵀ`` with ``z_i = F_i − μ_{y_i}`` (``z̄`` is 0 up to
    rounding); this is what the reference's ``sklearn.covariance.EmpiricalCovariance`` gives.
    More than ``rows`` features are walked once in blocks of that many (class sums and
    ``XᵀX``, then ``cov = (XᵀX − Σ_c n_c μ_c μ_cᵀ) / N``, the same matrix up to float64
    rounding), so a bank of a million is never copied to float64 whole.

    Returns:
        ``means`` ``(K, D)`` for the ``K`` classes present (sorted), ``cov`` ``(D, D)``, and
        the class labels.
    """
    flat = feats.reshape(len(feats), -1)
    classes = sorted(int(c) for c in torch.unique(labels))
    index = torch.searchsorted(torch.tensor(classes), labels)
    if len(flat) <= rows:
        x = flat.to(torch.float64)
        means = torch.stack([x[labels == c].mean(0) for c in classes])
        z = x - means[index]
        z = z - z.mean(0)
        return means, z.T @ z / len(z), classes
    n, d = flat.shape
    # one pass: class sums and the raw second moment, then cov = (XᵀX − Σ_c n_c μ_c μ_cᵀ) / N
    sums = torch.zeros(len(classes), d, dtype=torch.float64)
    gram = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, rows):
        x = flat[start : start + rows].to(torch.float64)
        sums.index_add_(0, index[start : start + rows], x)
        gram += x.T @ x
    counts = torch.bincount(index, minlength=len(classes)).to(torch.float64)
    means = sums / counts.unsqueeze(1)
    between = (means * counts.unsqueeze(1)).T @ means
    return means, (gram - between) / n, classes


def precision_of(cov: Tensor) -> Tensor:
    """Symmetric pseudo-inverse of a covariance (float64): finite even when ``cov`` is singular."""
    p = torch.linalg.pinv(cov.to(torch.float64), hermitian=True)
    return (p + p.T) / 2


def sq_distances(feats: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """``d_c(F) = (F − μ_c)ᵀ P (F − μ_c)`` ``(N, K)`` in float64.

    Expanded as ``FᵀPF − 2 (PF)·μ_c + μ_cᵀPμ_c``: one ``N×D×D`` product for all ``K`` classes
    instead of one per class (10× faster for 10 classes, which made Mahalanobis scoring cost
    0.08 of a LeNet forward pass). In float64 the cancellation costs about ``1e-16·FᵀPF``
    absolute, far below any gap between two images' scores; ``P`` is positive semi-definite,
    so the result is clamped at 0 against that rounding.
    """
    x = feats.to(torch.float64).reshape(len(feats), -1)
    means = means.to(device=x.device, dtype=torch.float64)
    precision = precision.to(device=x.device, dtype=torch.float64)
    xp = x @ precision
    quad = (xp * x).sum(1, keepdim=True)
    const = ((means @ precision) * means).sum(1)
    return (quad - 2.0 * (xp @ means.T) + const).clamp(min=0.0)


def mahalanobis_score(feats: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """``max_c −½ d_c(F)`` ``(N,)`` float64: higher = closer to some class = more ID."""
    return -0.5 * sq_distances(feats, means, precision).min(dim=1).values


# -- running the model ---------------------------------------------------------------------


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def pooled_taps(model: nn.Module, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
    """Pooled features ``{tap: (N, C)}`` of ``x`` (model already in the wanted mode)."""
    _, raw = model.forward_taps(x, set(taps))  # type: ignore[operator]
    return {t: pool(raw[t]) for t in taps}


def gradient_signs(
    model: nn.Module, x: Tensor, taps: Sequence[str], gaussians: dict[str, tuple[Tensor, Tensor]]
) -> dict[str, Tensor]:
    """Per tap, ``sign(∇ₓ ½ d_ĉ(x))`` with ``ĉ`` the closest class at that tap (``(N, C, H, W)``).

    One forward pass for every tap; one ``torch.autograd.grad`` per tap, with respect to the
    input only (so no ``.grad`` is left on the model's parameters). The loss is a *sum* over the
    batch, so each image's gradient is its own and does not depend on the batch.
    """
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        feats = pooled_taps(model, xg, taps)
        signs = {}
        for i, tap in enumerate(taps):
            means, precision = gaussians[tap]
            d = sq_distances(feats[tap], means, precision)
            closest = d.detach().argmin(dim=1, keepdim=True)
            loss = 0.5 * d.gather(1, closest).sum()
            (grad,) = torch.autograd.grad(loss, xg, retain_graph=i + 1 < len(taps))
            signs[tap] = sign_step(grad)
    return signs


def perturbed_scores(
    model: nn.Module,
    x: Tensor,
    signs: dict[str, Tensor],
    eps: float,
    gaussians: dict[str, tuple[Tensor, Tensor]],
) -> Tensor:
    """Per-tap scores ``(N, k)`` of ``x̃_k = x − ε·sign_k`` (each tap on its own perturbed input)."""
    cols = []
    with torch.no_grad():
        for tap, sign in signs.items():
            x_t = x - eps * sign.to(device=x.device, dtype=x.dtype)
            f = pooled_taps(model, x_t, [tap])[tap]
            cols.append(mahalanobis_score(f, *gaussians[tap]).cpu())
    return torch.stack(cols, dim=1)


class _MahalanobisBase(Detector):
    """Fitting and scoring shared by the single-tap and ensemble detectors."""

    noise: float | None
    grid: list[float]

    needs = TAPS

    @per_instance(INPUT_GRADIENT)
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """Input gradients only while ε may be (or is) positive; with ε = 0 the shared pass suffices."""
        noise = getattr(self, "noise_", self.noise)
        return INPUT_GRADIENT if noise is None or noise > 0 else SHARED_PASS

    def _taps(self, model: nn.Module) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def required_taps(self, model: nn.Module) -> tuple[str, ...]:
        taps = self._taps(model)
        check_taps(self.name, model, taps)
        return tuple(tap_spec(t) for t in taps)

    def _check_noise(self) -> None:
        values = list(self.grid) if self.noise is None else [self.noise]
        if not values or any(not np.isfinite(v) or v < 0 for v in values):
            raise OodlabError(f"detector {self.name!r}: noise values must be finite and >= 0, got {values}")

    def _fit_gaussians(
        self, model: nn.Module, id_train: ImageSet, taps: list[str]
    ) -> dict[str, tuple[Tensor, Tensor]]:
        check_taps(self.name, model, taps)
        if id_train.y is None:
            raise OodlabError(
                f"detector {self.name!r} fits one Gaussian per class and needs labelled id_train "
                f"({id_train.name!r} has no labels); pass the labelled ID training set"
            )
        labels = id_train.labels()
        classes, counts = torch.unique(labels, return_counts=True)
        if (counts < 2).any():
            few = ", ".join(f"{int(c)} ({int(n)})" for c, n in zip(classes, counts, strict=True) if n < 2)
            raise OodlabError(
                f"detector {self.name!r} needs at least 2 training images per class to estimate class "
                f"means and a covariance; classes with fewer: {few}. Give more training images"
            )
        out = features.outputs(model, id_train, [tap_spec(t) for t in taps])
        gaussians = {}
        for tap in taps:
            means, cov, _ = class_gaussians(out.tap(tap_spec(tap)), labels)
            if not torch.isfinite(cov).all():
                raise OodlabError(
                    f"detector {self.name!r}: the covariance of tap {tap!r} is not finite (the model "
                    "produced inf/NaN features on id_train); check the model and its input range"
                )
            gaussians[tap] = (means, precision_of(cov))
        self.classes_ = [int(c) for c in classes]
        return gaussians

    def _gaussians(self) -> dict[str, tuple[Tensor, Tensor]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _per_tap_from_outputs(self, out: Outputs) -> Tensor:
        g = self._gaussians()
        return torch.stack([mahalanobis_score(out.tap(tap_spec(t)), *g[t]) for t in g], dim=1)

    def _per_tap_from_inputs(self, x: Tensor) -> Tensor:
        model = self.model_
        g = self._gaussians()
        x = x.to(model_device(model))
        with eval_mode(model):
            signs = gradient_signs(model, x, list(g), g)
            return perturbed_scores(model, x, signs, float(self.noise_), g)

    def _validation_scores(
        self, model: nn.Module, images: ImageSet, candidates: Sequence[float]
    ) -> dict[float, Tensor]:
        """Per-tap scores ``(N, k)`` of ``images`` for every ε, with one gradient pass per image."""
        g = self._gaussians()
        result: dict[float, Tensor] = {}
        if any(e == 0 for e in candidates):
            result[0.0] = self._per_tap_from_outputs(
                features.outputs(model, images, [tap_spec(t) for t in g])
            )
        positive = [float(e) for e in candidates if e > 0]
        if positive:
            chunks: dict[float, list[Tensor]] = {e: [] for e in positive}
            device = model_device(model)
            with eval_mode(model):
                for xb in batches(images, self.batch_size):
                    xb = xb.to(device)
                    signs = gradient_signs(model, xb, list(g), g)  # once per image, reused for every ε
                    for e in positive:
                        chunks[e].append(perturbed_scores(model, xb, signs, e, g))
            result.update({e: torch.cat(c) for e, c in chunks.items()})
        return result


@register_detector("mahalanobis")
class Mahalanobis(FeatureFitted, _MahalanobisBase):
    """Mahalanobis distance to the closest class, at one tap, with optional input preprocessing.

    ``score(x) = max_c −½ (F(x̃) − μ_c)ᵀ P (F(x̃) − μ_c)``, where ``F`` is the tap's features
    (a conv map's spatial mean ``(N, C)``, or the penultimate vector), ``μ_c`` the mean of
    ``F`` over the ID training images of class ``c`` (true labels), and ``P`` the symmetric
    pseudo-inverse of the one covariance shared by all classes (of the class-centred features).
    Input preprocessing: ``x̃ = x − ε·sign(∇ₓ ½ d_ĉ(x))`` with ``ĉ`` the closest class, which
    moves ``x`` towards that class (raises its score); the scores are then recomputed over all
    classes. Models normalise inside themselves, so ``ε`` is in raw-pixel units (the
    reference's ``ε·sign/std`` in normalised space). As in the reference a zero gradient counts
    as positive. With ``ε = 0`` the detector is scored from the shared forward pass.

    Args:
        tap: A tap of the model (``model.tap_names``), default the penultimate vector.
        noise: ``ε``; ``None`` tunes it on validation data: the value of ``grid`` with the lowest
            FPR@95%TPR on (``id_val``, ``ood_val``) (the sign of each validation image's
            gradient is computed once and reused for every ε).
        grid: Candidate ε values (default the reference's
            ``0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01``).

    Returns:
        ``(N,)`` float64, at most 0; higher = more in-distribution.

    References:
        Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
        Adversarial Attacks", NeurIPS 2018; reference code github.com/pokaxpoka/deep_Mahalanobis_detector.

    Example:
        >>> det = create_detector("mahalanobis").fit(model, id_train, id_val=v, ood_val=o)  # doctest: +SKIP
        >>> det.tuning()["chosen"], det.score(x)  # doctest: +SKIP
        >>> det = create_detector("mahalanobis", noise=0.0).fit_features(bank, labels)  # doctest: +SKIP
        >>> det.score_features(query_features)  # doctest: +SKIP
    """

    quick_params = {"grid": (0.0, 0.002)}

    @per_instance(True)
    def tunes(self) -> bool:  # type: ignore[override]
        """True when ε is tuned on validation data (``noise=None``)."""
        return self.noise is None

    def __init__(
        self, tap: str = PENULTIMATE, noise: float | None = None, grid: Sequence[float] = NOISES
    ) -> None:
        self.tap = tap
        self.noise = noise
        self.grid = [float(e) for e in grid]

    def _taps(self, model: nn.Module) -> list[str]:
        return [self.tap]

    def _gaussians(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {self.tap: (self.means_, self.precision_)}

    def _fit(self, model, id_train, id_val, ood_val) -> None:  # type: ignore[no-untyped-def]
        self._check_noise()
        if self.noise is None:
            id_val, ood_val = self._require_validation(id_val, ood_val, "the input noise ε")
        (self.means_, self.precision_) = self._fit_gaussians(model, id_train, [self.tap])[self.tap]
        if self.noise is not None:
            self.noise_ = float(self.noise)
            return
        s_id = self._validation_scores(model, id_val, self.grid)
        s_ood = self._validation_scores(model, ood_val, self.grid)
        self.noise_ = tune_single_score(self, "noise", self.grid, s_id, s_ood, id_val, ood_val)

    def _score_outputs(self, out: Outputs) -> Tensor:
        return self._per_tap_from_outputs(out)[:, 0]

    def _score_inputs(self, x: Tensor) -> Tensor:
        return self._per_tap_from_inputs(x)[:, 0]

    def fit_features(self, train_features: Tensor, labels: Tensor) -> Mahalanobis:
        """Fit the class Gaussians from precomputed ID training features ``(N, D)`` and labels.

        No model, so no input preprocessing: ``noise`` must be 0 (or ``None``, which means 0
        here). The features are walked in blocks (:func:`class_gaussians`); the working memory
        is a few blocks and the ``D × D`` matrices, whatever ``N``. Score with
        :meth:`score_features`.

        Returns:
            ``self``.
        """
        self._start_feature_fit()
        feats = check_features(self.name, train_features, "train_features")
        if self.noise not in (None, 0, 0.0):
            raise OodlabError(
                f"detector {self.name!r}: fit_features has no model to preprocess inputs with; "
                f"use noise=0, got noise={self.noise}"
            )
        labels = torch.as_tensor(labels).reshape(-1)
        if len(labels) != len(feats):
            raise OodlabError(
                f"detector {self.name!r}: {len(feats)} features but {len(labels)} labels; give one label each"
            )
        means, cov, classes = class_gaussians(feats, labels.to(torch.int64))
        if not torch.isfinite(cov).all():
            raise OodlabError(
                f"detector {self.name!r}: the features' covariance is not finite (inf/NaN input)"
            )
        self.means_, self.precision_ = means, precision_of(cov)
        self.classes_ = classes
        self.noise_ = 0.0
        return self

    def _score_features(self, feats: Tensor) -> Tensor:
        return mahalanobis_score(feats, self.means_, self.precision_)


@register_detector("mahalanobis-ensemble")
class MahalanobisEnsemble(ValidationEnsemble, _MahalanobisBase):
    """Mahalanobis scores at every tap, combined by a logistic regression fitted on validation data.

    ``score(x) = Σ_k w_k (M_k(x̃_k) − m_k) / s_k + b``, where ``M_k`` is the ``mahalanobis``
    score at tap ``k`` (each tap with its own class means and tied precision, and its own
    preprocessed input ``x̃_k = x − ε·sign(∇ₓ ½ d_{ĉ,k}(x))``, one ε shared by all taps, as in the
    reference), ``m_k, s_k`` standardise the per-tap scores, and ``w, b`` are a logistic
    regression (ID = 1, L2, ``C = 1``) of ID vs OOD validation images.

    Validation data is used in halves (:func:`oodlab.detectors._ensemble.fit_on_validation_halves`):
    the weights are fitted on the first half of ``id_val`` and of ``ood_val``; ε (when tuned) is
    the grid value whose combined score has the lowest FPR@95%TPR on the second halves. Given
    1000 + 1000 validation images this is the reference's 500 / 500 split.

    Args:
        taps: Taps to combine; default every tap of the model (block outputs and penultimate).
        noise: Shared ε (raw-pixel units); ``None`` tunes it from ``grid`` as above.
        grid: Candidate ε values.

    Returns:
        ``(N,)`` float64, the regression's log-odds of ID; higher = more in-distribution.

    References:
        Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
        Adversarial Attacks", NeurIPS 2018; reference code github.com/pokaxpoka/deep_Mahalanobis_detector
        (``ADV_Samples``/``OOD_Regression_Mahalanobis``).

    Example:
        >>> det = create_detector("mahalanobis-ensemble")  # doctest: +SKIP
        >>> det.fit(model, id_train, id_val=v, ood_val=o)  # doctest: +SKIP
        >>> det.coef_, det.score(x)  # doctest: +SKIP
    """

    tunes = True
    quick_params = {"grid": (0.0, 0.002)}

    def __init__(
        self,
        taps: Sequence[str] | None = None,
        noise: float | None = None,
        grid: Sequence[float] = NOISES,
        combination: str = "validated",
    ) -> None:
        self.taps = None if taps is None else list(taps)
        self.noise = noise
        self.grid = [float(e) for e in grid]
        self.combination = combination

    def _taps(self, model: nn.Module) -> list[str]:
        if self.taps is not None:
            if not self.taps:
                raise OodlabError(
                    f"detector {self.name!r}: taps= is empty; name at least one tap or pass None"
                )
            return list(self.taps)
        names = getattr(model, "tap_names", None)
        if names is None:
            check_taps(self.name, model, [])
        return list(names)

    def _gaussians(self) -> dict[str, tuple[Tensor, Tensor]]:
        out, m_at, p_at = {}, 0, 0
        k = len(self.classes_)
        for tap, d in zip(self.taps_, self.dims_, strict=True):
            means = self.means_[m_at : m_at + k * d].reshape(k, d)
            precision = self.precisions_[p_at : p_at + d * d].reshape(d, d)
            out[tap] = (means, precision)
            m_at, p_at = m_at + k * d, p_at + d * d
        return out

    def _fit(self, model, id_train, id_val, ood_val) -> None:  # type: ignore[no-untyped-def]
        self._check_noise()
        self._check_combination()
        id_val, ood_val = self._require_validation(id_val, ood_val, "its layer weights")
        taps = self._taps(model)
        gaussians = self._fit_gaussians(model, id_train, taps)
        self.taps_ = taps
        self.dims_ = [int(gaussians[t][0].shape[1]) for t in taps]
        self.means_ = torch.cat([gaussians[t][0].reshape(-1) for t in taps])
        self.precisions_ = torch.cat([gaussians[t][1].reshape(-1) for t in taps])
        grid = self.grid if self.noise is None else [float(self.noise)]
        s_id = self._validation_scores(model, id_val, grid)
        s_ood = self._validation_scores(model, ood_val, grid)
        self.noise_ = self._fit_ensemble("noise", "weights", taps, grid, s_id, s_ood, id_val, ood_val)

    def _members_outputs(self, out: Outputs) -> Tensor:
        return self._per_tap_from_outputs(out)

    def _members_inputs(self, x: Tensor) -> Tensor:
        return self._per_tap_from_inputs(x)


__all__ = [
    "Mahalanobis",
    "MahalanobisEnsemble",
    "NOISES",
    "class_gaussians",
    "mahalanobis_score",
    "precision_of",
]
