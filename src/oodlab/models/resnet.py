"""CIFAR-style ResNet-18/34 (3×3 stem, no max-pool) with a width multiplier.

The activation after each residual addition is a ReLU, or (``activation="logsoftmax"``) a
log-softmax over the channels at every position: each block then outputs, per position, the
log of a distribution over its channels, whose statistics an OOD detector can read
(``layer-softmax``) and a training objective can sharpen (``entropy-min``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oodlab.errors import OodlabError
from oodlab.models._registry import register_model
from oodlab.models.base import PENULTIMATE, TappedModel, TapRecorder

#: Smallest image side a ResNet accepts (three stride-2 stages bring 8 down to 1).
MIN_IMAGE_SIZE = 8
#: Activations a ResNet may apply after each residual addition.
ACTIVATIONS = ("relu", "logsoftmax")
STAGES = ("layer1", "layer2", "layer3", "layer4")


def check_activation(activation: str) -> str:
    """``activation`` if it is one of :data:`ACTIVATIONS`; else a one-line error."""
    if activation not in ACTIVATIONS:
        raise OodlabError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    return activation


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN) shortcut; after the sum, a ReLU or
    a log-softmax over channels (``activation``). The ReLU between the two convs stays a ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, activation: str = "relu") -> None:
        super().__init__()
        self.activation = check_activation(activation)
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
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out) if self.activation == "relu" else torch.log_softmax(out, dim=1)


def _width(base: int, width: float) -> int:
    return max(8, round(base * width))


class ResNet(TappedModel):
    """3×3 stem conv-BN-ReLU, four BasicBlock stages (strides 1, 2, 2, 2), global average pool, fc→K.

    Taps: ``stem``, ``layer1`` … ``layer4`` (stage outputs after their final activation, shape
    ``(N, C, H, W)``), then ``penultimate`` (the pooled vector). :meth:`forward_blocks` gives
    the output of every residual block (``block_names``: ``layer1.0``, ``layer1.1``, …).

    Args:
        layers: Number of blocks in each of the four stages.
        num_classes: Number of classes K.
        in_channels: Number of input channels.
        image_size: Side the inputs must have; ``None`` accepts any side ≥ 8.
        width: Width multiplier; stage widths are ``max(8, round(c * width))`` for
            ``c`` in 64, 128, 256, 512.
        mean: Per-channel (or scalar) input mean used for normalisation.
        std: Per-channel (or scalar) input std used for normalisation.
        activation: ``"relu"``, or ``"logsoftmax"``: ``log softmax`` over the channels at every
            position, in place of the ReLU after each residual addition (only there: the stem
            and the ReLU inside each block stay).

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
        activation: str = "relu",
    ) -> None:
        check_activation(activation)
        if image_size is not None and image_size < MIN_IMAGE_SIZE:
            raise OodlabError(f"ResNet needs images of side >= {MIN_IMAGE_SIZE}, got image_size={image_size}")
        if width <= 0:
            raise OodlabError(f"width must be positive, got {width}")
        if len(layers) != 4 or min(layers) < 1:
            raise OodlabError(f"ResNet needs four stages of at least one block, got {tuple(layers)}")
        super().__init__(num_classes, in_channels, image_size, mean, std)
        self.width = float(width)
        self.activation = activation
        self.tap_names = ("stem", "layer1", "layer2", "layer3", "layer4", PENULTIMATE)
        planes = [_width(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        in_planes = planes[0]
        stages = []
        for p, n, stride in zip(planes, layers, (1, 2, 2, 2), strict=True):
            blocks = []
            for s in [stride] + [1] * (int(n) - 1):
                blocks.append(BasicBlock(in_planes, p, s, activation))
                in_planes = p
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.block_names = tuple(
            f"{name}.{i}" for name, n in zip(STAGES, layers, strict=True) for i in range(n)
        )
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
        for name in STAGES:
            for i, block in enumerate(getattr(self, name)):
                z = taps.put(f"{name}.{i}", block(z))
            z = taps.put(name, z)
        return F.adaptive_avg_pool2d(z, 1).flatten(1)

    def forward_blocks(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits for images in [0, 1] and the output of every residual block, in network order
        (each ``(N, C, H, W)``, after the block's activation)."""
        rec = TapRecorder(self.block_names)
        logits = self.head(self.forward_features(self.normalize(x), rec))
        return logits, [rec.values[name] for name in self.block_names]


@register_model("resnet18", residual=True)
def resnet18(**kwargs: object) -> ResNet:
    """CIFAR-style ResNet-18 (about 11.2M parameters at width 1)."""
    return ResNet((2, 2, 2, 2), **kwargs)  # type: ignore[arg-type]


@register_model("resnet34", residual=True)
def resnet34(**kwargs: object) -> ResNet:
    """CIFAR-style ResNet-34 (about 21.3M parameters at width 1)."""
    return ResNet((3, 4, 6, 3), **kwargs)  # type: ignore[arg-type]
