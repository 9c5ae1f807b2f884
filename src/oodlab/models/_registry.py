"""Model registry: ``@register_model("name")`` on a factory, ``create_model(name, **kw)``.

A factory registered with ``residual=True`` builds a network of residual blocks; only those take
``activation=`` (the activation after each residual addition, :mod:`oodlab.models.resnet`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
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

    Running the same module or notebook cell again registers the same factory again (same module
    and qualified name): that is not an error, and an edited definition replaces the old one —
    checkpoints record :func:`definition_hash`, so it never reloads the old one's weights.
    Another factory under a taken name is an error.
    """

    def deco(factory: Callable[..., TappedModel]) -> Callable[..., TappedModel]:
        old = _MODELS.get(name)
        if old is not None and _qualname(old) != _qualname(factory):
            raise OodlabError(
                f"model {name!r} is already registered by {_qualname(old)}; "
                f"{_qualname(factory)} needs another name"
            )
        _MODELS[name] = factory
        if residual:
            _RESIDUAL.add(name)
        return factory

    return deco


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _source(obj: object) -> bytes:
    """The source of the module defining ``obj`` (edits beside it count too), else ``obj``'s own
    source (IPython keeps cells' sources), else its bytecode (code typed into an interpreter)."""
    module = inspect.getmodule(obj)
    for target in (module, obj):
        if target is None:
            continue
        try:
            return inspect.getsource(target).encode()  # type: ignore[arg-type]
        except (OSError, TypeError):
            continue
    funcs = [obj] if inspect.isfunction(obj) else [v for v in vars(obj).values() if inspect.isfunction(v)]
    out = b""
    for f in funcs:
        out += f.__code__.co_code + repr(f.__code__.co_consts).encode()
    return out


def definition_hash(obj: Callable[..., object] | type) -> str:
    """A hash of what defines ``obj``: its source (see ``_source``) and that of every class or
    function a factory function names (``def make(): return MyNet()`` covers ``MyNet``)."""
    h = hashlib.sha256(_qualname(obj).encode())
    h.update(_source(obj))
    code = getattr(obj, "__code__", None)
    if code is not None:
        for ref_name in code.co_names:
            ref = getattr(obj, "__globals__", {}).get(ref_name)
            if inspect.isclass(ref) or inspect.isfunction(ref):
                h.update(_source(ref))
    return h.hexdigest()[:16]


def model_definition(name: str) -> str:
    """:func:`definition_hash` of the factory registered as ``name``."""
    if name not in _MODELS:
        raise OodlabError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return definition_hash(_MODELS[name])


def create_model(name: str, **kwargs: object) -> TappedModel:
    """Build the registered model ``name`` with keyword arguments ``kwargs``.

    The model remembers how it was built (``model.oodlab_spec``), so that a saved detector can
    rebuild a learned network from its weights (:mod:`oodlab.models.spec`). ``head={"name": ...,
    **params}`` replaces the network's final linear layer by a method head that reads the same
    penultimate features (:mod:`oodlab.models.heads`).
    """
    if name not in _MODELS:
        raise OodlabError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if "activation" in kwargs and name not in _RESIDUAL:
        raise OodlabError(
            f"model {name!r} has no residual blocks: activation= sets the activation after each residual "
            f"addition, so only residual networks take it ({', '.join(sorted(_RESIDUAL))})"
        )
    head = kwargs.pop("head", None)
    model = _MODELS[name](**kwargs)
    if head is not None:
        from oodlab.models.heads import create_head

        # The trunk is kept; its final linear layer gives way to the method's head.
        made = create_head(head, model.head.in_features, model.num_classes)
        model.head = made  # type: ignore[assignment]
        if model.head is not made:
            raise OodlabError(
                f"model {name!r} has no final linear layer of its own for a method head (head={head!r}); "
                "use a classifier network"
            )
        kwargs["head"] = head
    model.oodlab_spec = {"model": name, "kwargs": dict(kwargs)}
    return model


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a glob ``pattern``."""
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]
