"""Detectors: the protocol, the registry and one module per family.

Importing this package registers every detector; ``list_detectors()`` names them.
"""

from oodlab.detectors import logits  # noqa: F401  (registers the detectors)
from oodlab.detectors._registry import create_detector, get_detector_class, list_detectors, register_detector
from oodlab.detectors.base import Detector, load_detector

__all__ = [
    "Detector",
    "create_detector",
    "get_detector_class",
    "list_detectors",
    "load_detector",
    "register_detector",
]
