"""LeNet-5: the small two-convolution network of LeCun et al. (1998), with ReLU and max-pooling."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from oodlab.models._registry import register_model
from oodlab.models.base import PENULTIMATE, TappedModel, TapRecorder


class LeNet5(TappedModel):
    """conv 1→6 5×5 (pad 2), ReLU, pool, conv 6→16 5×5, ReLU, pool, fc→120, ReLU, fc→84, ReLU, fc→K.

    About 62k parameters for 28×28 inputs: a fifth the size of :class:`~oodlab.models.lenet.LeNet`
    and about four times faster; no dropout.

    Taps: ``conv1``, ``conv2`` (after ReLU, before pooling), ``fc1`` (ReLU, 120 units) and
    ``penultimate`` (ReLU(fc2), 84 units).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        mean: float | tuple[float, ...] = 0.5,
        std: float | tuple[float, ...] = 0.5,
    ) -> None:
        super().__init__(num_classes, in_channels, image_size, mean, std)
        self.tap_names = ("conv1", "conv2", "fc1", PENULTIMATE)
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        side = (image_size // 2 - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.head = nn.Linear(84, num_classes)

    def forward_features(self, z: Tensor, taps: TapRecorder) -> Tensor:
        z = F.max_pool2d(taps.put("conv1", F.relu(self.conv1(z))), 2)
        z = F.max_pool2d(taps.put("conv2", F.relu(self.conv2(z))), 2)
        z = taps.put("fc1", F.relu(self.fc1(z.flatten(1))))
        return F.relu(self.fc2(z))


@register_model("lenet5")
def lenet5(**kwargs: object) -> LeNet5:
    """LeNet-5 (about 62k parameters for 28×28 inputs)."""
    return LeNet5(**kwargs)  # type: ignore[arg-type]
