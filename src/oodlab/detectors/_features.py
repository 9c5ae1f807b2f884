"""Fitting and scoring from precomputed penultimate features, without a model.

``fit_features`` / ``score_features`` let a detector that reads only the penultimate features
(``knn``, ``mahalanobis``, ``vim``) work on feature arrays a user already has — a bank of a
million ImageNet features, say — without running a network. Such a detector has no model: it
refuses :meth:`~oodlab.detectors.base.Detector.score` on images and scores feature arrays.
Fitting walks the bank in blocks of :data:`ROWS` rows, so its working memory does not grow
with the bank.
"""

from __future__ import annotations

import torch
from torch import Tensor

from oodlab.errors import OodlabError

#: Rows per block when a detector walks a feature bank (a 65,536 × 512 float64 block is 268 MB).
ROWS = 65536


def check_features(name: str, feats: Tensor, what: str = "features") -> Tensor:
    """``feats`` as ``(N, D)`` (flattening trailing dimensions), or a one-line error."""
    if not isinstance(feats, Tensor):
        raise OodlabError(f"detector {name!r}: {what} must be a torch.Tensor, got {type(feats).__name__}")
    if feats.ndim < 2 or len(feats) == 0 or feats[0].numel() == 0:
        raise OodlabError(
            f"detector {name!r}: {what} must be a non-empty (N, D) tensor, got {tuple(feats.shape)}"
        )
    if not feats.is_floating_point():
        raise OodlabError(f"detector {name!r}: {what} must be floating point, got {feats.dtype}")
    return feats.flatten(1)


class FeatureFitted:
    """Mixin for :class:`~oodlab.detectors.base.Detector` subclasses with ``fit_features``."""

    name: str

    def _start_feature_fit(self) -> None:
        """Forget any previous fit; the detector then has no model (``model_ = None``)."""
        for attr in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, attr)
        self.model_ = None
        self.tuning_: dict = {}

    def score_features(self, feats: Tensor) -> Tensor:
        """Scores ``(N,)`` float64 of penultimate features ``(N, D)``; higher = more ID."""
        self._check_fitted()  # type: ignore[attr-defined]
        feats = check_features(self.name, feats)
        with torch.no_grad():
            return self._finish(self._score_features(feats), len(feats))  # type: ignore[attr-defined]

    def _score_features(self, feats: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


__all__ = ["ROWS", "FeatureFitted", "check_features"]
