"""Softmax statistics of one layer: per position over channels, then pooled over positions.

At a tap with a map ``z`` ``(N, C, H, W)`` (a vector ``(N, D)`` is one position; ``"final"`` is
the logits), every position ``p`` carries ``log s_p = log softmax_c z_{:, c, p}``, a distribution
over channels. In a residual network with log-softmax activations (``activation="logsoftmax"``)
the block outputs already are ``log s``, and ``log softmax`` of them gives them back; on a ReLU
network the same statistics are read from its non-negative maps. Three statistics per position
(MSP-, MiSP- and ASP-like) times three poolings over positions make the nine aggregations.

The shared forward pass keeps only the nine per-image numbers of a tap (a
:class:`~oodlab.features.ReducedTap` keyed ``"<tap>@softmax-stats"``), never the map, so every
aggregation of every layer is scored from one pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from oodlab import features
from oodlab.detectors._ensemble import per_instance
from oodlab.detectors._registry import register_detector
from oodlab.detectors.base import TAPS, Detector
from oodlab.errors import OodlabError
from oodlab.features import Outputs, ReducedTap
from oodlab.metrics import auroc

#: Per-position statistics of ``log s`` over channels: max (MSP-like), min (MiSP-like), mean (ASP-like).
STATS = ("msp", "misp", "asp")
#: Poolings of a statistic over the positions of a map.
POOLS = ("max", "min", "mean")
#: The layer name of the logits.
FINAL = "final"


def channel_stats(z: Tensor) -> Tensor:
    """``(N, 3, P)`` float64: per position, max, min and mean over channels of ``log softmax(z)``.

    ``z`` is ``(N, C, ...)`` (``P`` = product of the trailing dims; a vector ``(N, C)`` has one
    position). With ``d = z − max_c z`` and ``r = log1p(Σ_{c ≠ argmax} exp d_c)``, ``log s_c = d_c − r``,
    so the maximum is ``−r`` exactly even when ``log_softmax`` would round it to 0.
    """
    z = z.to(torch.float64)
    z = z.reshape(len(z), z.shape[1], -1)
    top = z.max(dim=1, keepdim=True)
    d = z - top.values
    r = torch.log1p(torch.exp(d).scatter(1, top.indices, 0.0).sum(dim=1))
    return torch.stack([-r, d.min(dim=1).values - r, d.mean(dim=1) - r], dim=1)


def layer_stats(z: Tensor) -> Tensor:
    """``(N, 9)`` float64: :func:`channel_stats` pooled over positions by max, min and mean.

    Column ``3·i + j`` is statistic ``STATS[i]`` pooled by ``POOLS[j]``.
    """
    s = channel_stats(z)
    return torch.stack([s.max(dim=2).values, s.min(dim=2).values, s.mean(dim=2)], dim=2).flatten(1)


def stats_tap(tap: str) -> ReducedTap:
    """The shared-pass request for tap ``tap``'s nine aggregations (``(N, 9)``, :func:`layer_stats`)."""
    return ReducedTap(tap, f"{tap}@softmax-stats", lambda value, x: layer_stats(value))


def layer_names(model: nn.Module) -> tuple[str, ...]:
    """The layers ``layer-softmax`` can read on ``model``: its taps, then ``"final"`` (the logits)."""
    return (*getattr(model, "tap_names", ()), FINAL)


def aggregation_index(stat: str, pool: str) -> int:
    """The column of :func:`layer_stats` holding ``stat`` pooled by ``pool``."""
    return STATS.index(stat) * len(POOLS) + POOLS.index(pool)


@register_detector("layer-softmax")
class LayerSoftmax(Detector):
    """A softmax statistic of one layer: per position over channels, pooled over positions.

    ``raw(x) = pool_p stat_c log softmax_c(z(x))_{c,p}`` with ``z`` the map at ``layer``,
    ``stat`` ∈ {``msp``: max, ``misp``: min, ``asp``: mean} over the channels ``c`` at each
    position ``p``, and ``pool`` ∈ {max, min, mean} over positions (nine aggregations per layer);
    ``layer="final"`` reads the logits (one position: MSP, MiSP and the mean log-probability).
    ``score(x) = o · raw(x)`` with the orientation ``o`` ∈ {+1, −1}: a statistic may be higher
    on ID data (MSP) or lower (MiSP: a confident ID input leaves a tiny minimum), so ``o`` is
    fixed on validation data, +1 when ``raw`` has AUROC ≥ 0.5 on (``id_val``, ``ood_val``)
    with ID positive, and recorded in :meth:`tuning` with that AUROC; or given as
    ``orientation``.

    Args:
        layer: A tap of the model (``model.tap_names``) or ``"final"``.
        stat: ``"msp"``, ``"misp"`` or ``"asp"``.
        pool: ``"max"``, ``"min"`` or ``"mean"``.
        orientation: ``+1`` or ``−1``; ``None`` fixes it on validation data.

    Returns:
        ``(N,)`` float64; higher = more in-distribution.

    References:
        The log-softmax residual-network layer study (per-layer MSP/MiSP/ASP under max/min/mean
        pooling, compared with per-layer Mahalanobis; docs/layer-study.md); Hendrycks & Gimpel,
        "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural
        Networks", ICLR 2017 (MSP).

    Example:
        >>> det = create_detector("layer-softmax", layer="layer3", stat="misp", pool="min")  # doctest: +SKIP
        >>> det.fit(model, id_train, id_val=v, ood_val=o).tuning()["chosen"]  # doctest: +SKIP
        {'orientation': -1}
    """

    needs = TAPS

    @per_instance(True)
    def tunes(self) -> bool:  # type: ignore[override]
        """True when the orientation is fixed on validation data (``orientation=None``)."""
        return self.orientation is None

    def __init__(
        self, layer: str = FINAL, stat: str = "misp", pool: str = "min", orientation: int | None = None
    ):
        if not isinstance(layer, str) or not layer:
            raise OodlabError(f"detector 'layer-softmax': layer must be a tap name or 'final', got {layer!r}")
        if stat not in STATS:
            raise OodlabError(
                f"detector 'layer-softmax': stat must be one of {', '.join(STATS)}, got {stat!r}"
            )
        if pool not in POOLS:
            raise OodlabError(
                f"detector 'layer-softmax': pool must be one of {', '.join(POOLS)}, got {pool!r}"
            )
        if orientation is not None and (isinstance(orientation, bool) or orientation not in (1, -1)):
            raise OodlabError(
                f"detector 'layer-softmax': orientation must be 1, -1 or None, got {orientation!r}"
            )
        self.layer = layer
        self.stat = stat
        self.pool = pool
        self.orientation = orientation

    def _check_layer(self, model: nn.Module) -> None:
        known = layer_names(model)
        if self.layer not in known:
            raise OodlabError(
                f"detector 'layer-softmax': model {type(model).__name__} has no layer {self.layer!r}; "
                f"its layers are: {', '.join(known)}"
            )
        if self.layer != FINAL and not hasattr(model, "forward_taps"):
            raise OodlabError(
                f"detector 'layer-softmax' reads feature taps, but {type(model).__name__} names none; "
                "wrap the model in an oodlab TappedModel or use layer='final'"
            )

    def required_taps(self, model: nn.Module) -> tuple[Any, ...]:
        self._check_layer(model)
        return () if self.layer == FINAL else (stats_tap(self.layer),)

    def train_taps(self, model: nn.Module) -> tuple[str, ...]:
        return ()  # fitting reads validation data only

    def _raw(self, out: Outputs) -> Tensor:
        col = aggregation_index(self.stat, self.pool)
        if self.layer == FINAL:
            return layer_stats(out.logits)[:, col]
        return out.tap(stats_tap(self.layer))[:, col].to(torch.float64)

    def _fit(self, model, id_train, id_val, ood_val) -> None:  # type: ignore[no-untyped-def]
        self._check_layer(model)
        if self.orientation is not None:
            self.orientation_ = int(self.orientation)
            return
        id_val, ood_val = self._require_validation(id_val, ood_val, "the orientation")
        taps = self.required_taps(model)
        raw_id = self._raw(features.outputs(model, id_val, taps))
        raw_ood = self._raw(features.outputs(model, ood_val, taps))
        auc = auroc(raw_id, raw_ood)
        self.orientation_ = 1 if auc >= 0.5 else -1
        self._record_tuning(
            {"orientation": self.orientation_, "criterion": "validation AUROC of raw >= 0.5"}, id_val, ood_val
        )
        self.tuning_["validation_auroc_raw"] = float(auc)

    def _score_outputs(self, out: Outputs) -> Tensor:
        return self.orientation_ * self._raw(out)


__all__ = ["FINAL", "LayerSoftmax", "POOLS", "STATS", "aggregation_index", "channel_stats", "layer_stats"]
