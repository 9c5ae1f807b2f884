"""LeNet of the feature-space-singularity paper's Fashion-MNIST vs MNIST experiments."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from oodlab.models._registry import register_model
from oodlab.models.base import PENULTIMATE, TappedModel, TapRecorder


class LeNet(TappedModel):
    """conv 1→32 3×3, ReLU, conv 32→64 3×3, ReLU, max-pool 2, dropout, fc→128, ReLU, dropout, fc→K.

    Taps: ``conv1`` and ``conv2`` (after ReLU, before pooling), ``penultimate`` (ReLU(fc1)).

    References:
        Huang et al., "Feature Space Singularity for Out-of-Distribution Detection", SafeAI 2021;
        github.com/megvii-research/FSSD_OoD_Detection.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        dropout1: float = 0.25,
        dropout2: float = 0.5,
        mean: float | tuple[float, ...] = 0.5,
        std: float | tuple[float, ...] = 0.5,
    ) -> None:
        super().__init__(num_classes, in_channels, image_size, mean, std)
        self.tap_names = ("conv1", "conv2", PENULTIMATE)
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout1 = nn.Dropout(dropout1)
        self.dropout2 = nn.Dropout(dropout2)
        side = (image_size - 4) // 2
        self.fc1 = nn.Linear(64 * side * side, 128)
        self.head = nn.Linear(128, num_classes)

    def forward_features(self, z: Tensor, taps: TapRecorder) -> Tensor:
        z = taps.put("conv1", F.relu(self.conv1(z)))
        z = taps.put("conv2", F.relu(self.conv2(z)))
        z = self.dropout1(F.max_pool2d(z, 2))
        z = F.relu(self.fc1(z.flatten(1)))
        return self.dropout2(z)


@register_model("lenet")
def lenet(**kwargs: object) -> LeNet:
    """The FSSD paper's LeNet (about 1.2M parameters for 28×28 inputs)."""
    return LeNet(**kwargs)  # type: ignore[arg-type]
