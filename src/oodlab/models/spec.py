"""How to rebuild a learned module from its weights: a JSON spec beside the safetensors file.

A model made by :func:`~oodlab.models.create_model` remembers its name and arguments; an
:class:`~oodlab.models.ensemble.EnsembleModel` is the list of its members' specs. Weights are
always stored as safetensors (never pickled); the spec only says which class to build.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from oodlab.errors import OodlabError
from oodlab.models._registry import create_model
from oodlab.models.ensemble import EnsembleModel


def module_spec(module: nn.Module) -> dict[str, Any]:
    """The JSON-serialisable recipe that :func:`build_from_spec` turns back into ``module``'s class."""
    if isinstance(module, EnsembleModel):
        return {"ensemble": [module_spec(m) for m in module.members]}
    spec = getattr(module, "oodlab_spec", None)
    if spec is None:
        raise OodlabError(
            f"cannot save a {type(module).__name__}: only modules built by oodlab.models.create_model "
            "(or ensembles of them) can be rebuilt from their weights"
        )
    return dict(spec)


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """A fresh (untrained) module of the class and arguments ``spec`` names."""
    if "ensemble" in spec:
        return EnsembleModel([build_from_spec(s) for s in spec["ensemble"]])
    try:
        return create_model(spec["model"], **spec["kwargs"])
    except (KeyError, TypeError) as e:
        raise OodlabError(f"cannot rebuild a module from spec {spec!r}: {e}") from None


__all__ = ["build_from_spec", "module_spec"]
