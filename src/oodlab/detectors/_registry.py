"""Detector registry: ``@register_detector("name")`` on a class; ``create_detector(name, **kw)``.

A name may carry an argument after a colon, ``"either:odin+hscae"``: the registered class
``either`` turns it into a class of its own (``cls.specialise("odin+hscae")``), so that the
benchmark, the results and saved detectors carry the full name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from oodlab.errors import OodlabError

if TYPE_CHECKING:
    from oodlab.detectors.base import Detector

D = TypeVar("D", bound="type[Detector]")
_DETECTORS: dict[str, type[Detector]] = {}
_SPECIALISED: dict[str, type[Detector]] = {}


def register_detector(name: str) -> Callable[[D], D]:
    """Class decorator: register a :class:`Detector` subclass under ``name`` (sets ``cls.name``)."""

    def deco(cls: D) -> D:
        if name in _DETECTORS:
            raise RuntimeError(f"detector {name!r} registered twice")
        cls.name = name
        _DETECTORS[name] = cls
        return cls

    return deco


def get_detector_class(name: str) -> type[Detector]:
    """The class registered as ``name``; an error listing the known names otherwise.

    ``"base:argument"`` is the class that ``base``'s ``specialise(argument)`` makes (made once).
    """
    if name not in _DETECTORS and ":" in name:
        base, _, argument = name.partition(":")
        specialise = getattr(_DETECTORS.get(base), "specialise", None)
        if specialise is None:
            known = ", ".join(n for n in list_detectors() if hasattr(_DETECTORS[n], "specialise"))
            raise OodlabError(
                f"unknown detector {name!r}; detectors that take an argument after ':': {known or 'none'}"
            )
        cls = specialise(argument)
        return _SPECIALISED.setdefault(cls.name, cls)
    if name not in _DETECTORS:
        raise OodlabError(f"unknown detector {name!r}; known detectors: {', '.join(list_detectors())}")
    return _DETECTORS[name]


def create_detector(name: str, **params: object) -> Detector:
    """A new, unfitted detector ``name`` with hyperparameters ``params``."""
    cls = get_detector_class(name)
    try:
        return cls(**params)
    except TypeError as e:
        raise OodlabError(f"detector {name!r}: {e}") from None


def list_detectors(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered detectors, optionally filtered by a glob ``pattern``."""
    return [n for n in sorted(_DETECTORS) if pattern is None or fnmatch.fnmatch(n, pattern)]


def post_hoc_detectors() -> list[str]:
    """Sorted names of the detectors that score a given network as it is, with no argument: not
    those that train their own network or sample (MC dropout), and not those that take an
    argument after ``:`` (``either:a+b`` names its members)."""
    return [
        n
        for n, cls in sorted(_DETECTORS.items())
        if not (cls.capabilities.trains or cls.capabilities.stochastic or hasattr(cls, "specialise"))
    ]
