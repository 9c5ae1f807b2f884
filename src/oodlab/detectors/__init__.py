"""Detectors: the protocol, the registry and one module per family.

Importing this package imports every module in it, which registers every detector; a new
detector is one module with a ``@register_detector`` class and needs no edit here.
"""

import importlib
import pkgutil

from oodlab.detectors._registry import (
    create_detector,
    get_detector_class,
    list_detectors,
    post_hoc_detectors,
    register_detector,
)
from oodlab.detectors.base import Detector, load_detector

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Detector",
    "create_detector",
    "get_detector_class",
    "list_detectors",
    "post_hoc_detectors",
    "load_detector",
    "register_detector",
]
