"""Model registry: ``@register_model("name")`` on a factory, ``create_model(name, **kw)``.

A factory registered with ``residual=True`` builds a network of residual blocks; only those take
``activation=`` (the activation after each residual addition, :mod:`oodlab.models.resnet`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TYPE_CHECKING

from oodlab.errors import OodlabError

if TYPE_CHECKING:
    from oodlab.models.base import TappedModel

_MODELS: dict[str, Callable[..., TappedModel]] = {}
_RESIDUAL: set[str] = set()


def register_model(
    name: str, *, residual: bool = False
) -> Callable[[Callable[..., TappedModel]], Callable[..., TappedModel]]:
    """Register a factory that builds a :class:`TappedModel` under ``name``.

    ``residual=True`` says its networks are made of residual blocks and take ``activation=``.
    """

    def deco(factory: Callable[..., TappedModel]) -> Callable[..., TappedModel]:
        if name in _MODELS:
            raise RuntimeError(f"model {name!r} registered twice")
        _MODELS[name] = factory
        if residual:
            _RESIDUAL.add(name)
        return factory

    return deco


def create_model(name: str, **kwargs: object) -> TappedModel:
    """Build the registered model ``name`` with keyword arguments ``kwargs``.

    The model remembers how it was built (``model.oodlab_spec``), so that a saved detector can
    rebuild a learned network from its weights (:mod:`oodlab.models.spec`).
    """
    if name not in _MODELS:
        raise OodlabError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if "activation" in kwargs and name not in _RESIDUAL:
        raise OodlabError(
            f"model {name!r} has no residual blocks: activation= sets the activation after each residual "
            f"addition, so only residual networks take it ({', '.join(sorted(_RESIDUAL))})"
        )
    model = _MODELS[name](**kwargs)
    model.oodlab_spec = {"model": name, "kwargs": dict(kwargs)}
    return model


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a glob ``pattern``."""
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]
