"""Method heads: what replaces a network's final linear layer for the methods that need more.

Any registered network takes ``head={"name": ..., **params}`` in :func:`~oodlab.models.create_model`:
its trunk (everything up to the penultimate features ``h``) is kept, and its final
``nn.Linear`` is replaced by the head, which reads ``h``. ``model(x)`` still returns the logits
that predict the class, so accuracy, the shared forward pass and the ``penultimate`` tap work
as for any model; the method's detector computes its score from the ``penultimate`` tap with
the head's own functions. The head is part of the model's spec, so a saved network is rebuilt
with it (:mod:`oodlab.models.spec`).

- ``binc`` (:class:`BincHead`): a shared layer ``g = ReLU(W h)`` of width ``z_dim``, a softmax
  head and a BIN head (per-class sigmoids) on ``g``; the logits are the softmax head's.
- ``vib`` (:class:`GaussianHead`): a Gaussian encoder ``q(z|h) = N(μ(h), diag σ²(h))`` of
  dimension ``z_dim`` and a linear decoder; the logits decode the mean, ``decoder(μ)``.
- ``viby`` (:class:`ClassPriorGaussianHead`): as ``vib``, plus one learned Gaussian prior
  ``p_y = N(m_y, diag s_y²)`` per class.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from oodlab.errors import OodlabError

H = TypeVar("H", bound="type[Head]")
_HEADS: dict[str, type[Head]] = {}
#: Log-variances are clamped to this range so that ``exp`` can neither overflow nor vanish.
LOGVAR_RANGE = (-15.0, 15.0)


def register_head(name: str) -> Callable[[H], H]:
    """Class decorator: register a :class:`Head` subclass under ``name``."""

    def deco(cls: H) -> H:
        if name in _HEADS:
            raise RuntimeError(f"head {name!r} registered twice")
        cls.name = name
        _HEADS[name] = cls
        return cls

    return deco


def list_heads(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered heads, optionally filtered by a glob ``pattern``."""
    return [n for n in sorted(_HEADS) if pattern is None or fnmatch.fnmatch(n, pattern)]


def check_z_dim(value: Any, owner: str) -> int:
    """``value`` if it is an integer latent dimension >= 1; else an error naming ``z_dim``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OodlabError(f"{owner}: z_dim (the latent dimension z) must be an integer >= 1, got {value!r}")
    return int(value)


def create_head(spec: dict[str, Any], in_features: int, num_classes: int) -> Head:
    """The head ``spec`` (``{"name": ..., **params}``) on ``in_features`` inputs, ``num_classes`` classes."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise OodlabError(f"a head is given as {{'name': ..., **params}}, got {spec!r}")
    params = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    if name not in _HEADS:
        raise OodlabError(f"unknown head {name!r}; known heads: {', '.join(list_heads())}")
    try:
        return _HEADS[name](in_features=in_features, num_classes=num_classes, **params)
    except TypeError as e:
        raise OodlabError(f"head {name!r}: {e}") from None


class Head(nn.Module):
    """Base class: maps penultimate features ``h`` ``(N, in_features)`` to class logits ``(N, K)``."""

    name: ClassVar[str] = "head"

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(num_classes)


@register_head("binc")
class BincHead(Head):
    """A shared layer of width ``z_dim`` feeding a softmax head and a BIN head.

    ``g = ReLU(W h + b)``; ``forward(h)`` = the softmax head's logits ``A g + a`` (the class
    prediction); :meth:`bin_logits` = the BIN head's logits ``B g + b'``, one sigmoid per class.
    """

    def __init__(self, in_features: int, num_classes: int, z_dim: int = 64) -> None:
        super().__init__(in_features, num_classes)
        self.z_dim = check_z_dim(z_dim, "head 'binc'")
        self.shared = nn.Linear(in_features, self.z_dim)
        self.softmax_head = nn.Linear(self.z_dim, num_classes)
        self.bin_head = nn.Linear(self.z_dim, num_classes)

    def both(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The softmax head's and the BIN head's logits, from one pass through the shared layer."""
        g = torch.relu(self.shared(h))
        return self.softmax_head(g), self.bin_head(g)

    def bin_logits(self, h: Tensor) -> Tensor:
        """The BIN head's logits ``(N, K)`` (``σ`` of each is that class's probability)."""
        return self.bin_head(torch.relu(self.shared(h)))

    def forward(self, h: Tensor) -> Tensor:
        return self.softmax_head(torch.relu(self.shared(h)))


@register_head("vib")
class GaussianHead(Head):
    """A Gaussian encoder ``q(z|h) = N(μ(h), diag exp(logvar(h)))`` and a linear softmax decoder.

    ``forward(h) = decoder(μ(h))``: the prediction at the mean of ``q`` (the objective decodes
    a sample while training).
    """

    def __init__(self, in_features: int, num_classes: int, z_dim: int = 64) -> None:
        super().__init__(in_features, num_classes)
        self.z_dim = check_z_dim(z_dim, f"head {self.name!r}")
        self.encoder = nn.Linear(in_features, 2 * self.z_dim)
        self.decoder = nn.Linear(self.z_dim, num_classes)

    def encode(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(μ, logvar)`` of ``q(z|h)``, each ``(N, z_dim)``; logvar clamped to ``LOGVAR_RANGE``."""
        mu, logvar = self.encoder(h).chunk(2, dim=1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.encode(h)[0])


@register_head("viby")
class ClassPriorGaussianHead(GaussianHead):
    """:class:`GaussianHead` with one learned Gaussian prior ``p_y = N(m_y, diag exp(s_y))`` per class.

    The prior means start as independent ``N(0, I)`` draws (distinct classes start apart),
    the log-variances at 0. ``priors`` must equal the number of classes (``None``: it does).
    """

    def __init__(
        self, in_features: int, num_classes: int, z_dim: int = 64, priors: int | None = None
    ) -> None:
        if priors is not None and (isinstance(priors, bool) or priors != num_classes):
            raise OodlabError(
                f"head 'viby': priors (one Gaussian prior per class) must equal the number of classes, "
                f"{num_classes}; got {priors!r}"
            )
        super().__init__(in_features, num_classes, z_dim)
        self.priors = priors
        self.prior_mu = nn.Parameter(torch.randn(num_classes, self.z_dim))
        self.prior_logvar = nn.Parameter(torch.zeros(num_classes, self.z_dim))


__all__ = [
    "BincHead",
    "ClassPriorGaussianHead",
    "GaussianHead",
    "Head",
    "check_z_dim",
    "create_head",
    "list_heads",
    "register_head",
]
