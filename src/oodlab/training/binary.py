"""BIN and BINC objectives: one sigmoid per class instead of a softmax, and its calibrated variant.

- ``bin``: the network's logits ``f`` are read as K independent sigmoids;
  ``loss = mean_batch( −log σ(f_y) − ζ Σ_{k≠y} log(1 − σ(f_k)) )``, ζ = 0.05. The other
  classes are pushed down only weakly, so an input that looks like no class can have every
  sigmoid low, which a softmax cannot express; the OOD score is ``max_k σ(f_k)``.
- ``binc``: a shared layer of width ``z`` = 64 on the network's penultimate features feeds a
  softmax head trained with cross-entropy and a BIN head trained with the BIN loss plus
  ``λ · MMCE_w`` (the weighted MMCE of :mod:`oodlab.training.mmce`, on the BIN head's
  confidences ``max_k σ`` and correctness), λ = 0.5:
  ``loss = CE(softmax head) + BIN(BIN head) + λ · sqrt(MMCE_w² + 1e-10)``. Predictions come
  from the softmax head, the OOD score from the BIN head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oodlab.errors import OodlabError
from oodlab.models.base import TapRecorder
from oodlab.models.heads import BincHead, check_z_dim
from oodlab.training.mmce import mmce_weighted
from oodlab.training.objectives import Objective, register_objective


def check_nonneg(objective: str, name: str, value: Any, symbol: str) -> float:
    """``value`` as a float if it is a finite number >= 0; else one line naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise OodlabError(
            f"objective {objective!r}: {name} ({symbol}) must be a finite number >= 0, got {value!r}"
        )
    return float(value)


def bin_loss(logits: Tensor, y: Tensor, zeta: float) -> Tensor:
    """``mean( −log σ(f_y) − ζ Σ_{k≠y} log(1 − σ(f_k)) )`` over the batch, in log-sigmoids (stable)."""
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    pos = -(F.logsigmoid(logits) * onehot).sum(1)
    neg = -(F.logsigmoid(-logits) * (1 - onehot)).sum(1)
    return (pos + zeta * neg).mean()


def penultimate(model: nn.Module, x: Tensor) -> Tensor:
    """The trunk's penultimate features of images ``x`` (what a method head reads)."""
    return model.forward_features(model.normalize(x), TapRecorder())  # type: ignore[operator]


def require_head(model: nn.Module, cls: type, objective: str) -> Any:
    """``model.head`` if it is a ``cls``; else a clear error (the network was built without the head)."""
    head = getattr(model, "head", None)
    if not isinstance(head, cls):
        raise OodlabError(
            f"objective {objective!r} trains a network with a {cls.name!r} head (build it with "
            f"oodlab.training.build_model), got a {type(head).__name__} head"
        )
    return head


@register_objective("bin")
class Bin(Objective):
    """BIN: per-class sigmoids, ``−log σ(f_y) − ζ Σ_{k≠y} log(1 − σ(f_k))``, ζ = ``zeta`` = 0.05.

    The network is unchanged (its logits are the K sigmoids' arguments).
    """

    def __init__(self, zeta: float = 0.05) -> None:
        self.zeta = check_nonneg("bin", "zeta", zeta, "ζ, the weight of the other classes")

    def batch_loss(self, logits: Tensor, y: Tensor, logits_aux: Tensor | None) -> Tensor:
        return bin_loss(logits, y, self.zeta)


@register_objective("binc")
class Binc(Objective):
    """BINC: ``CE(softmax head) + BIN(BIN head) + λ · MMCE_w(BIN head)``, λ = ``lam`` = 0.5, ζ = 0.05, z = 64.

    The network has a :class:`~oodlab.models.heads.BincHead` of width ``z_dim``. MMCE_w is
    computed on the BIN head's confidences ``r = max_k σ(b_k)`` and correctness
    ``[argmax_k b_k = y]`` of each batch, in its square-root form as the MMCE reference adds it
    to its loss.
    """

    def __init__(self, lam: float = 0.5, zeta: float = 0.05, z_dim: int = 64) -> None:
        self.lam = check_nonneg("binc", "lam", lam, "λ, the weight of MMCE")
        self.zeta = check_nonneg("binc", "zeta", zeta, "ζ, the weight of the other classes")
        self.z_dim = check_z_dim(z_dim, "objective 'binc'")

    def head_spec(self) -> dict[str, Any]:
        return {"name": "binc", "z_dim": self.z_dim}

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, x_aux: Tensor | None, context: Tensor | None = None
    ) -> Tensor:
        head = require_head(model, BincHead, "binc")
        logits, bin_logits = head.both(penultimate(model, x))
        conf, pred = torch.sigmoid(bin_logits).max(dim=1)
        calib = mmce_weighted(conf, pred == y, squared=False)
        return F.cross_entropy(logits, y) + bin_loss(bin_logits, y, self.zeta) + self.lam * calib


__all__ = ["Bin", "Binc", "bin_loss", "check_nonneg", "penultimate", "require_head"]
