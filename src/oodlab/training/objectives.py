"""Training objectives: what the trainer minimises, named with their parameters in `TrainConfig`.

An objective is a small class registered by name (``@register_objective("name")``), built with
``create_objective(name, **params)``. ``__init__`` validates and stores the parameters (a bad
value is an :class:`~oodlab.errors.OodlabError` naming the parameter); :meth:`Objective.loss`
maps one training batch (ID images, their labels, and a batch of auxiliary outliers when the
objective uses them) to a scalar loss. A new objective is one registered class, here or in a
module that :mod:`oodlab.training` imports; ``TrainConfig(objective=name, objective_params=...)``
then trains with it and ``oodlab list objectives`` shows it.

Losses are written with ``E(x) = −logsumexp f(x)`` (the energy) and ``log S(x)`` the
log-softmax of the logits ``f(x)`` over the K classes.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oodlab.errors import OodlabError

O = TypeVar("O", bound="type[Objective]")  # noqa: E741
_OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str) -> Callable[[O], O]:
    """Class decorator: register an :class:`Objective` subclass under ``name``."""

    def deco(cls: O) -> O:
        if name in _OBJECTIVES:
            raise RuntimeError(f"objective {name!r} registered twice")
        cls.name = name
        _OBJECTIVES[name] = cls
        return cls

    return deco


def create_objective(name: str, **params: Any) -> Objective:
    """The objective ``name`` with parameters ``params`` (validated)."""
    if name not in _OBJECTIVES:
        raise OodlabError(f"unknown objective {name!r}; known objectives: {', '.join(list_objectives())}")
    try:
        return _OBJECTIVES[name](**params)
    except TypeError as e:
        raise OodlabError(f"objective {name!r}: {e}") from None


def get_objective_class(name: str) -> type[Objective]:
    """The class registered as ``name``."""
    if name not in _OBJECTIVES:
        raise OodlabError(f"unknown objective {name!r}; known objectives: {', '.join(list_objectives())}")
    return _OBJECTIVES[name]


def list_objectives(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered objectives, optionally filtered by a glob ``pattern``."""
    return [n for n in sorted(_OBJECTIVES) if pattern is None or fnmatch.fnmatch(n, pattern)]


def _check_nonneg(name: str, value: float, objective: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise OodlabError(f"objective {objective!r}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


class Objective:
    """Base class: subclasses set ``uses_aux`` and implement :meth:`batch_loss`."""

    name: ClassVar[str] = "objective"
    #: Whether each batch comes with a batch of auxiliary outliers.
    uses_aux: ClassVar[bool] = False

    def get_params(self) -> dict[str, Any]:
        """Parameters as given to ``__init__`` (JSON-serialisable)."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def head_spec(self) -> dict[str, Any] | None:
        """The method head the network is built with in place of its final linear layer.

        ``None`` (default): the network's own linear layer. Otherwise ``{"name": ..., **params}``
        of a head in :mod:`oodlab.models.heads`; :func:`~oodlab.training.build_model` passes it
        to ``create_model``, so the network's spec (and its checkpoint key) include it.
        """
        return None

    def prepare(self, model: nn.Module, x_id: Tensor, x_aux: Tensor | None) -> dict[str, Any]:
        """Settle data-dependent parameters before training starts (default: none).

        Called once with the initial network (the base model when fine-tuning) in eval mode,
        a sample of ID training images and of auxiliary outliers. Returns what it settled; the
        trainer records it in the checkpoint's metadata.
        """
        return {}

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, x_aux: Tensor | None, context: Tensor | None = None
    ) -> Tensor:
        """The batch's scalar loss; one forward pass over the ID and auxiliary images together.

        ``context`` is per-image conditioning the trainer computed once (a frozen classifier's
        logits, for a recipe with ``classifier``); classification objectives ignore it.
        """
        if x_aux is None or len(x_aux) == 0:
            return self.batch_loss(model(x), y, None)
        logits = model(torch.cat([x, x_aux]))
        return self.batch_loss(logits[: len(x)], y, logits[len(x) :])

    def batch_loss(self, logits: Tensor, y: Tensor, logits_aux: Tensor | None) -> Tensor:  # pragma: no cover
        """The loss from the ID logits ``(B, K)``, labels ``(B,)`` and auxiliary logits ``(B', K)``."""
        raise NotImplementedError


@register_objective("cross-entropy")
class CrossEntropy(Objective):
    """``CE(f(x), y)``, the mean cross-entropy of the ID batch: a plain classifier."""

    def __init__(self) -> None:
        pass

    def batch_loss(self, logits: Tensor, y: Tensor, logits_aux: Tensor | None) -> Tensor:
        return F.cross_entropy(logits, y)


def uniform_cross_entropy(logits_aux: Tensor) -> Tensor:
    """``mean_aux(−(1/K) Σ_i log S_i(x_aux))``: cross-entropy from the softmax to the uniform distribution."""
    return -torch.log_softmax(logits_aux, dim=1).mean(dim=1).mean()


@register_objective("outlier-exposure")
class OutlierExposure(Objective):
    """Outlier exposure: ``CE(ID) + λ · mean_aux(−(1/K) Σ_i log S_i(x_aux))``.

    The second term pulls the softmax of auxiliary outliers towards uniform, so MSP learns to
    be low off the training distribution. λ = 0.5 as in the reference.

    References:
        Hendrycks, Mazeika & Dietterich, "Deep Anomaly Detection with Outlier Exposure",
        ICLR 2019; github.com/hendrycks/outlier-exposure.
    """

    uses_aux = True

    def __init__(self, lam: float = 0.5) -> None:
        self.lam = _check_nonneg("lam", lam, "outlier-exposure")

    def batch_loss(self, logits: Tensor, y: Tensor, logits_aux: Tensor | None) -> Tensor:
        loss = F.cross_entropy(logits, y)
        if logits_aux is not None and len(logits_aux):
            loss = loss + self.lam * uniform_cross_entropy(logits_aux)
        return loss


def energy(logits: Tensor) -> Tensor:
    """``E(x) = −logsumexp_i f_i(x)`` per row (lower = more confident)."""
    return -torch.logsumexp(logits, dim=1)


@register_objective("energy-margin")
class EnergyMargin(Objective):
    """Energy-bounded learning: ``CE + λ [ max(0, E_in − m_in)² + max(0, m_out − E_out)² ]``.

    ``E = −logsumexp f``; squared hinges push ID energies below ``m_in`` and auxiliary-outlier
    energies above ``m_out`` (means over each batch). λ = 0.1 as in the reference. The
    reference sets ``m_in``/``m_out`` per dataset (−23/−5 on CIFAR-10 for a WideResNet) from the
    energies of the model it fine-tunes; left as ``None`` here they are set the same way, from
    the network being trained, before the first step (:meth:`prepare`): ``m_in`` the median
    energy of ID training images, ``m_out`` its ``out_quantile`` quantile (0.99: an outlier
    should look less confident than 99% of ID images). Both are recorded in the checkpoint's
    metadata. ``m_in`` must be below ``m_out``.

    References:
        Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020;
        github.com/wetliu/energy_ood.
    """

    uses_aux = True

    def __init__(
        self,
        lam: float = 0.1,
        m_in: float | None = None,
        m_out: float | None = None,
        out_quantile: float = 0.99,
    ) -> None:
        self.lam = _check_nonneg("lam", lam, "energy-margin")
        for label, v in (("m_in", m_in), ("m_out", m_out)):
            if v is not None and (not isinstance(v, int | float) or not math.isfinite(v)):
                raise OodlabError(f"objective 'energy-margin': {label} must be a finite number, got {v!r}")
        if m_in is not None and m_out is not None and m_in >= m_out:
            raise OodlabError(
                f"objective 'energy-margin': m_in must be below m_out (ID energies are pushed under "
                f"m_in, outliers' above m_out); got m_in={m_in}, m_out={m_out}"
            )
        if not 0.5 < out_quantile < 1:
            raise OodlabError(
                f"objective 'energy-margin': out_quantile must be in (0.5, 1), got {out_quantile}"
            )
        self.m_in = None if m_in is None else float(m_in)
        self.m_out = None if m_out is None else float(m_out)
        self.out_quantile = float(out_quantile)

    def prepare(self, model: nn.Module, x_id: Tensor, x_aux: Tensor | None) -> dict[str, Any]:
        if self.m_in is not None and self.m_out is not None:
            return {"m_in": self.m_in, "m_out": self.m_out}
        with torch.no_grad():
            e = torch.cat([energy(model(x_id[i : i + 256])) for i in range(0, len(x_id), 256)]).double()
        m_in = self.m_in if self.m_in is not None else float(e.quantile(0.5))
        m_out = self.m_out if self.m_out is not None else float(e.quantile(self.out_quantile))
        if m_in >= m_out:
            raise OodlabError(
                f"objective 'energy-margin': m_in ({m_in:.3f}) is not below m_out ({m_out:.3f}) for this "
                "network; give both explicitly"
            )
        self.margins_ = (m_in, m_out)
        return {"m_in": m_in, "m_out": m_out}

    def batch_loss(self, logits: Tensor, y: Tensor, logits_aux: Tensor | None) -> Tensor:
        m_in, m_out = getattr(self, "margins_", (self.m_in, self.m_out))
        if m_in is None or m_out is None:
            raise OodlabError("objective 'energy-margin': call prepare() first or give m_in and m_out")
        loss = F.cross_entropy(logits, y)
        reg = F.relu(energy(logits) - m_in).pow(2).mean()
        if logits_aux is not None and len(logits_aux):
            reg = reg + F.relu(m_out - energy(logits_aux)).pow(2).mean()
        return loss + self.lam * reg


def channel_entropy(log_s: Tensor) -> Tensor:
    """``Σ_positions Σ_channels −s log s`` per image of a log-softmax map ``log_s`` ``(N, C, ...)``
    (``s = exp(log_s)``, a distribution over channels at every position) → ``(N,)``."""
    return -(log_s.exp() * log_s).flatten(1).sum(dim=1)


@register_objective("entropy-min")
class EntropyMinimisation(Objective):
    """``CE + λ · mean_batch Σ_blocks Σ_positions Σ_channels −s log s``, ``s`` each block's softmax.

    For a residual network whose activation after each residual addition is a log-softmax over
    channels (``create_model("resnet18", activation="logsoftmax")``): ``log s`` is that output
    at every position of every residual block, and the term sharpens each per-position
    distribution over channels. The sums run over all blocks, positions and channels (not
    averaged), so the term grows with the image size and the network's width; λ = 0 is plain
    cross-entropy on the same network.

    References:
        The log-softmax layer study's objective (entropy minimisation over every log-softmax
        activation, λ ∈ {0, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1}); docs/layer-study.md.
    """

    def __init__(self, lam: float = 1e-2) -> None:
        self.lam = _check_nonneg("lam", lam, "entropy-min")

    def prepare(self, model: nn.Module, x_id: Tensor, x_aux: Tensor | None) -> dict[str, Any]:
        if getattr(model, "activation", None) != "logsoftmax" or not hasattr(model, "forward_blocks"):
            raise OodlabError(
                f"objective 'entropy-min' sharpens log-softmax activations, but {type(model).__name__} has "
                "none; train a residual network with activation='logsoftmax' (resnet18, resnet34)"
            )
        return {}

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, x_aux: Tensor | None, context: Tensor | None = None
    ) -> Tensor:
        if self.lam == 0:
            return F.cross_entropy(model(x), y)
        logits, blocks = model.forward_blocks(x)  # type: ignore[operator]
        entropy = torch.stack([channel_entropy(b) for b in blocks]).sum(dim=0).mean()
        return F.cross_entropy(logits, y) + self.lam * entropy


@register_objective("reconstruction")
class Reconstruction(Objective):
    """``mean((x̂ − x)²)``: the mean squared error of a one-pass reconstruction ``x̂`` of the batch.

    For autoencoders (:class:`~oodlab.models.autoencoder.SelfConditionedAutoencoder`):
    ``x̂ = model.reconstruct(x, logits)``, conditioned on the frozen classifier's logits that the
    trainer gives as ``context`` (computed from ``x`` if not given). Labels are not used.
    """

    def __init__(self) -> None:
        pass

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, x_aux: Tensor | None, context: Tensor | None = None
    ) -> Tensor:
        reconstruct = getattr(model, "reconstruct", None)
        if reconstruct is None:
            raise OodlabError(
                f"objective 'reconstruction' trains autoencoders; {type(model).__name__} has no reconstruct()"
            )
        return F.mse_loss(reconstruct(x, context), x)


__all__ = [
    "CrossEntropy",
    "EntropyMinimisation",
    "EnergyMargin",
    "Objective",
    "OutlierExposure",
    "Reconstruction",
    "create_objective",
    "energy",
    "channel_entropy",
    "get_objective_class",
    "list_objectives",
    "register_objective",
    "uniform_cross_entropy",
]
