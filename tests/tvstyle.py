"""Networks written the way users write them (torchvision is not installed here).

``TVResNet`` follows ``torchvision.models.resnet.ResNet``: ``conv1``/``bn1``/``relu``/``maxpool``,
``layer1`` … ``layer4`` of ``BasicBlock`` with a ``downsample`` branch, ``avgpool``, ``fc``; it
takes normalised inputs and names nothing for oodlab. ``from_builtin`` copies the weights of
oodlab's built-in CIFAR-style ResNet into it, so the two compute the same function.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from oodlab.models.lenet import LeNet
from oodlab.models.resnet import ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TVResNet(nn.Module):
    """torchvision's ResNet layout; ``small_stem`` swaps the 7×7/2 stem and max-pool for a 3×3/1
    conv (the CIFAR variant, as oodlab's built-in ResNet)."""

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
        small_stem: bool = True,
    ) -> None:
        super().__init__()
        self.inplanes = widths[0]
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[0], layers[0], 1)
        self.layer2 = self._make_layer(widths[1], layers[1], 2)
        self.layer3 = self._make_layer(widths[2], layers[2], 2)
        self.layer4 = self._make_layer(widths[3], layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_from_builtin(builtin: ResNet) -> TVResNet:
    """A ``TVResNet`` computing exactly what oodlab's ``builtin`` ResNet computes (weights copied)."""
    widths = tuple(getattr(builtin, f"layer{i}")[0].conv1.out_channels for i in range(1, 5))
    layers = tuple(len(getattr(builtin, f"layer{i}")) for i in range(1, 5))
    net = TVResNet(layers, builtin.num_classes, builtin.in_channels, widths, small_stem=True)  # type: ignore[arg-type]
    state = {}
    for k, v in builtin.state_dict().items():
        if k.startswith("input_"):
            continue
        k = k.replace("shortcut.", "downsample.").replace("head.", "fc.")
        state[k] = v
    net.load_state_dict(state, strict=True)
    return net.eval()


def sequential_from_lenet(lenet: LeNet) -> nn.Sequential:
    """The built-in LeNet written as a plain ``nn.Sequential`` (weights copied)."""
    net = nn.Sequential(
        nn.Conv2d(lenet.in_channels, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(lenet.fc1.in_features, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, lenet.num_classes),
    )
    for i, src in ((0, lenet.conv1), (2, lenet.conv2), (7, lenet.fc1), (10, lenet.head)):
        net[i].load_state_dict(src.state_dict())
    return net.eval()


def tiny_resnet(num_classes: int = 10, in_channels: int = 1) -> TVResNet:
    """A torchvision-style ResNet small enough for tests (widths 8, 8, 16, 16; one block per stage)."""
    torch.manual_seed(0)
    return TVResNet((1, 1, 1, 1), num_classes, in_channels, (8, 8, 16, 16), small_stem=True)
