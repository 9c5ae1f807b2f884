"""CIFAR-style ResNet-18/34 (3×3 stem, no max-pool) with a width multiplier."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from oodlab.errors import OodlabError
from oodlab.models._registry import register_model
from oodlab.models.base import PENULTIMATE, TappedModel, TapRecorder

#: Smallest image side a ResNet accepts (three stride-2 stages bring 8 down to 1).
MIN_IMAGE_SIZE = 8


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN) shortcut, ReLU after the sum."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _width(base: int, width: float) -> int:
    return max(8, round(base * width))


class ResNet(TappedModel):
    """3×3 stem conv-BN-ReLU, four BasicBlock stages (strides 1, 2, 2, 2), global average pool, fc→K.

    Taps: ``stem``, ``layer1`` … ``layer4`` (stage outputs after their final ReLU, shape
    ``(N, C, H, W)``), then ``penultimate`` (the pooled vector).

    Args:
        layers: Number of blocks in each of the four stages.
        num_classes: Number of classes K.
        in_channels: Number of input channels.
        image_size: Side the inputs must have; ``None`` accepts any side ≥ 8.
        width: Width multiplier; stage widths are ``max(8, round(c * width))`` for
            ``c`` in 64, 128, 256, 512.
        mean: Per-channel (or scalar) input mean used for normalisation.
        std: Per-channel (or scalar) input std used for normalisation.

    References:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int | None = None,
        width: float = 1.0,
        mean: float | tuple[float, ...] = 0.5,
        std: float | tuple[float, ...] = 0.5,
    ) -> None:
        if image_size is not None and image_size < MIN_IMAGE_SIZE:
            raise OodlabError(f"ResNet needs images of side >= {MIN_IMAGE_SIZE}, got image_size={image_size}")
        if width <= 0:
            raise OodlabError(f"width must be positive, got {width}")
        if len(layers) != 4 or min(layers) < 1:
            raise OodlabError(f"ResNet needs four stages of at least one block, got {tuple(layers)}")
        super().__init__(num_classes, in_channels, image_size, mean, std)
        self.width = float(width)
        self.tap_names = ("stem", "layer1", "layer2", "layer3", "layer4", PENULTIMATE)
        planes = [_width(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        in_planes = planes[0]
        stages = []
        for p, n, stride in zip(planes, layers, (1, 2, 2, 2), strict=True):
            blocks = []
            for s in [stride] + [1] * (int(n) - 1):
                blocks.append(BasicBlock(in_planes, p, s))
                in_planes = p
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = nn.Linear(in_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1.0)
                nn.init.constant_(m.bias, 0.0)

    def check_input(self, x: Tensor) -> None:
        """Like :meth:`TappedModel.check_input`, and also reject images smaller than 8×8."""
        super().check_input(x)
        if min(x.shape[2], x.shape[3]) < MIN_IMAGE_SIZE:
            raise OodlabError(f"expected images of side >= {MIN_IMAGE_SIZE}, got {x.shape[2]}x{x.shape[3]}")

    def forward_features(self, z: Tensor, taps: TapRecorder) -> Tensor:
        z = taps.put("stem", F.relu(self.bn1(self.conv1(z))))
        z = taps.put("layer1", self.layer1(z))
        z = taps.put("layer2", self.layer2(z))
        z = taps.put("layer3", self.layer3(z))
        z = taps.put("layer4", self.layer4(z))
        return F.adaptive_avg_pool2d(z, 1).flatten(1)


@register_model("resnet18")
def resnet18(**kwargs: object) -> ResNet:
    """CIFAR-style ResNet-18 (about 11.2M parameters at width 1)."""
    return ResNet((2, 2, 2, 2), **kwargs)  # type: ignore[arg-type]


@register_model("resnet34")
def resnet34(**kwargs: object) -> ResNet:
    """CIFAR-style ResNet-34 (about 21.3M parameters at width 1)."""
    return ResNet((3, 4, 6, 3), **kwargs)  # type: ignore[arg-type]
