"""Caffe's MNIST LeNet: two 5×5 convolutions (20, 50 channels), a 500-unit hidden layer."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from oodlab.models._registry import register_model
from oodlab.models.base import PENULTIMATE, TappedModel, TapRecorder


class LeNetCaffe(TappedModel):
    """conv 1→20 5×5, ReLU, max-pool 2, conv 20→50 5×5, ReLU, max-pool 2, fc 800→500, ReLU, fc→K.

    The LeNet of Caffe's MNIST example (with ReLU), the network behind pytorch-ood's MNIST and
    Fashion-MNIST figures. No padding, no dropout; about 431k parameters for 28×28 inputs.

    Taps: ``conv1``, ``conv2`` (after ReLU, before pooling) and ``penultimate`` (ReLU(fc1),
    500 units).

    References:
        LeCun et al., "Gradient-based learning applied to document recognition", Proc. IEEE 1998;
        github.com/BVLC/caffe/blob/master/examples/mnist/lenet.prototxt.
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
        self.tap_names = ("conv1", "conv2", PENULTIMATE)
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        side = ((image_size - 4) // 2 - 4) // 2
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.head = nn.Linear(500, num_classes)

    def forward_features(self, z: Tensor, taps: TapRecorder) -> Tensor:
        z = F.max_pool2d(taps.put("conv1", F.relu(self.conv1(z))), 2)
        z = F.max_pool2d(taps.put("conv2", F.relu(self.conv2(z))), 2)
        return F.relu(self.fc1(z.flatten(1)))


@register_model("lenet-caffe")
def lenet_caffe(**kwargs: object) -> LeNetCaffe:
    """Caffe's MNIST LeNet (about 431k parameters for 28×28 inputs)."""
    return LeNetCaffe(**kwargs)  # type: ignore[arg-type]
