"""ViM: virtual-logit matching — the feature's residual off the principal subspace as a logit."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from oodlab import features
from oodlab.data.imageset import ImageSet
from oodlab.detectors._features import ROWS, FeatureFitted, check_features
from oodlab.detectors._registry import register_detector
from oodlab.detectors.base import TAPS, Detector
from oodlab.errors import OodlabError
from oodlab.features import Outputs
from oodlab.models.base import PENULTIMATE


def default_dim(num_features: int) -> int:
    """The reference code's principal dimension: 1000 if ≥ 2048 features, 512 if ≥ 768, else half."""
    if num_features >= 2048:
        return 1000
    if num_features >= 768:
        return 512
    return num_features // 2


def linear_head(model: nn.Module) -> nn.Linear:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise OodlabError(f"{type(model).__name__} has no final nn.Linear `head`; ViM and ReAct need one")
    return head


@register_detector("vim")
class ViM(FeatureFitted, Detector):
    """Virtual-logit matching on the penultimate features ``x`` and the logits ``f = Wx + b``.

    With the origin ``u = −W⁺b`` (``W⁺`` the pseudo-inverse of the head's weight), the
    principal subspace ``P`` is spanned by the top-``D`` eigenvectors of the (uncentred, as
    in the reference code) second-moment matrix ``(1/N) Σ (x−u)(x−u)ᵀ`` of the ID training
    features, and ``P⊥`` by the rest. With the residual ``r(x) = ‖(x−u)^{P⊥}‖`` and
    ``α = mean_train(max_i f_i) / mean_train(r)``::

        score(x) = −(α·r(x) − logsumexp f(x)) = logsumexp f(x) − α·r(x)

    i.e. the energy minus the (scaled) virtual logit — the log of the non-virtual classes'
    softmax mass ranks the same way. Everything is float64; the eigenvectors come from
    :func:`torch.linalg.eigh`.

    Args:
        dim: ``D``; ``None`` chooses as the reference code does: 1000 if the feature dimension
            is ≥ 2048, 512 if ≥ 768, else half of it (64 for LeNet's 128 features).

    Returns:
        ``score`` gives ``(N,)`` float64; higher = more in-distribution.

    References:
        Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching",
        CVPR 2022; reference code github.com/haoqiwang/vim.

    Example:
        >>> det = create_detector("vim").fit(model, id_train)  # doctest: +SKIP
        >>> det.dim_, det.alpha_  # doctest: +SKIP
        (64, 3.1)
        >>> det.score(x)  # doctest: +SKIP
        >>> det = create_detector("vim").fit_features(bank, head.weight, head.bias)  # doctest: +SKIP
        >>> det.score_features(query_features)  # doctest: +SKIP
    """

    needs = TAPS

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def required_taps(self, model: nn.Module) -> tuple[str, ...]:
        return (PENULTIMATE,)

    def _fit(
        self, model: nn.Module, id_train: ImageSet, id_val: ImageSet | None, ood_val: ImageSet | None
    ) -> None:
        head = linear_head(model)
        out = features.outputs(model, id_train, (PENULTIMATE,))
        self._fit_arrays(out.tap(PENULTIMATE).flatten(1), head.weight, head.bias, out.logits)

    def fit_features(self, train_features: Tensor, weight: Tensor, bias: Tensor | None = None) -> ViM:
        """Fit from precomputed ID training features ``(N, D)`` and the head's ``weight``
        ``(C, D)`` and ``bias`` ``(C,)`` (the logits are ``weight · x + bias``).

        The features are walked in blocks of :data:`~oodlab.detectors._features.ROWS` rows (the
        logits of a block are computed and dropped), so the working memory does not grow with
        ``N``. Score with :meth:`score_features`.

        Returns:
            ``self``.
        """
        self._start_feature_fit()
        feats = check_features(self.name, train_features, "train_features")
        weight = torch.as_tensor(weight).detach()
        if weight.ndim != 2 or weight.shape[1] != feats.shape[1]:
            raise OodlabError(
                f"detector {self.name!r}: weight must be (classes, {feats.shape[1]}), "
                f"got {tuple(weight.shape)}"
            )
        self._fit_arrays(feats, weight, bias, None)
        self.head_weight_ = weight.to(torch.float64).cpu()
        self.head_bias_ = (
            torch.zeros(len(weight), dtype=torch.float64)
            if bias is None
            else torch.as_tensor(bias).detach().to(torch.float64).cpu()
        )
        return self

    def _fit_arrays(self, x: Tensor, weight: Tensor, bias: Tensor | None, logits: Tensor | None) -> None:
        """Fit from features ``x`` ``(N, D)``; ``logits`` ``(N, C)``, or ``None`` to compute them
        block by block from ``weight`` and ``bias``."""
        n, n_feat = x.shape
        d = default_dim(n_feat) if self.dim is None else self.dim
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d < n_feat:
            raise OodlabError(
                f"detector {self.name!r}: dim must be an integer in [1, {n_feat - 1}] for {n_feat} features, "
                f"got {d!r}"
            )
        w = weight.detach().to(torch.float64).cpu()
        b = (
            bias.detach().to(torch.float64).cpu()
            if bias is not None
            else torch.zeros(len(w), dtype=torch.float64)
        )
        u = -torch.linalg.pinv(w) @ b
        cov = torch.zeros(n_feat, n_feat, dtype=torch.float64)
        for block in x.split(ROWS):
            centred = block.to(torch.float64) - u
            cov += centred.T @ centred
        _, eigvecs = torch.linalg.eigh(cov / n)  # ascending eigenvalues
        self.origin_ = u
        self.null_space_ = eigvecs[:, : n_feat - d].contiguous()
        self.dim_ = d
        # one more pass for both the residuals and (when not given) the logits; logits in
        # float32, as a model computes them
        w32, b32 = w.to(torch.float32), b.to(torch.float32)
        residual_sum, max_logit_sum = 0.0, 0.0
        for block in x.split(ROWS):
            residual_sum += float(self.residual_norm(block).sum())
            if logits is None:
                max_logit_sum += float(
                    torch.addmm(b32, block.float(), w32.T).max(dim=1).values.double().sum()
                )
        mean_residual = residual_sum / n
        if not mean_residual > 0:
            raise OodlabError(
                f"detector {self.name!r}: the training features have no residual off their "
                f"{d}-dimensional principal subspace; choose a smaller dim"
            )
        if logits is not None:
            max_logit = float(logits.to(torch.float64).max(dim=1).values.mean())
        else:
            max_logit = max_logit_sum / n
        self.alpha_ = max_logit / mean_residual

    def residual_norm(self, feats: Tensor) -> Tensor:
        """``‖(x − u)^{P⊥}‖`` for penultimate features ``(N, D)``, float64 ``(N,)`` (no α)."""
        self._check_fitted()
        x = feats.to(torch.float64).flatten(1)
        return ((x - self.origin_) @ self.null_space_).norm(dim=1)

    def _score_outputs(self, out: Outputs) -> Tensor:
        energy = torch.logsumexp(out.logits.to(torch.float64), dim=1)
        return energy - self.alpha_ * self.residual_norm(out.tap(PENULTIMATE))

    def _score_features(self, feats: Tensor) -> Tensor:
        if hasattr(self, "head_weight_"):
            w, b = self.head_weight_, self.head_bias_
        else:
            head = linear_head(self.model_)
            w = head.weight.detach().to(torch.float64).cpu()
            b = (
                torch.zeros(len(w), dtype=torch.float64)
                if head.bias is None
                else head.bias.detach().double().cpu()
            )
        x = feats.to(torch.float64).flatten(1)
        return torch.logsumexp(x @ w.T + b, dim=1) - self.alpha_ * self.residual_norm(x)


__all__ = ["ViM", "default_dim", "linear_head"]
