"""Classifiers that name their feature taps, and the registry that builds them by name."""

from oodlab.models import autoencoder, lenet, lenet5, lenet_caffe, mlp, resnet  # noqa: F401  (register the models)
from oodlab.models._registry import create_model, list_models, register_model
from oodlab.models.base import PENULTIMATE, TappedModel, TapRecorder
from oodlab.models.wrap import WrappedModel, wrap

__all__ = [
    "PENULTIMATE",
    "TapRecorder",
    "TappedModel",
    "WrappedModel",
    "create_model",
    "list_models",
    "register_model",
    "wrap",
]
