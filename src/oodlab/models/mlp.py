"""Fully connected classifier on flattened images."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from oodlab.errors import OodlabError
from oodlab.models._registry import register_model
from oodlab.models.base import PENULTIMATE, TappedModel, TapRecorder


class MLP(TappedModel):
    """flatten, then (fc, ReLU, dropout) per hidden layer, then fc→K.

    Taps: ``fc1``, ``fc2``, … (after ReLU, one per hidden layer but the last), then
    ``penultimate`` (the last hidden layer's output). With the default ``hidden=(256, 128)``
    the taps are ``fc1`` and ``penultimate``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        mean: float | tuple[float, ...] = 0.5,
        std: float | tuple[float, ...] = 0.5,
    ) -> None:
        super().__init__(num_classes, in_channels, image_size, mean, std)
        widths = [int(h) for h in hidden]
        if not widths or min(widths) < 1:
            raise OodlabError(f"MLP needs at least one hidden layer of positive width, got {tuple(hidden)}")
        self.tap_names = (*(f"fc{i + 1}" for i in range(len(widths) - 1)), PENULTIMATE)
        sizes = [in_channels * image_size * image_size, *widths]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward_features(self, z: Tensor, taps: TapRecorder) -> Tensor:
        z = z.flatten(1)
        last = len(self.fcs) - 1
        for i, fc in enumerate(self.fcs):
            z = F.relu(fc(z))
            if i < last:
                z = taps.put(f"fc{i + 1}", z)
            z = self.dropout(z)
        return z


@register_model("mlp")
def mlp(**kwargs: object) -> MLP:
    """A multi-layer perceptron (hidden widths 256, 128 by default)."""
    return MLP(**kwargs)  # type: ignore[arg-type]
