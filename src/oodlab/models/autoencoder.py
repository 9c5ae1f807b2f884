"""The self-conditioned autoencoder of HSCAE: a deep plain conv autoencoder beside a frozen classifier.

:class:`ConditionalAutoencoder` is the autoencoder itself: an encoder of 14 plain 3×3
convolutions (5 at full resolution, max-pool, 5 at half, max-pool, 4 at a quarter: 28 → 14 → 7
on MNIST), one fully connected layer to a small latent (8 by default), and a mirror decoder
(one fully connected layer, 4 convolutions, a transposed convolution up, 4, another up, 4:
14 convolutions). There are no residual connections and no sampling (not a VAE), so the
decoder can only draw what it learned to draw: in-distribution images.

It is *self-conditioned*: a classifier's softmax at temperature ``T`` (2 by default),
``p = softmax(f(x) / T)``, computed once from the original input, is linearly projected to
each conditioned stage's channel count, passed through a ReLU and added at every position, at
three encoder stages (after each resolution's convolutions) and three decoder stages (after the
fully connected layer and after each transposed convolution).

:class:`SelfConditionedAutoencoder` (registered as ``"hscae"``) pairs it with the frozen
classifier it is conditioned on. As a module it *is* that classifier (``forward`` returns the
classifier's logits, with its taps and head), so every post-hoc detector scores it exactly as
it scores the classifier; :meth:`SelfConditionedAutoencoder.reconstructions` feeds an image
back through the autoencoder ``h`` times (the hierarchy levels of HSCAE).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from oodlab.errors import OodlabError
from oodlab.models._registry import create_model, register_model

#: Convolutions per resolution, encoder (full, half, quarter) and decoder (quarter, half, full).
ENCODER_CONVS = (5, 5, 4)
DECODER_CONVS = (4, 4, 4)  # plus one transposed convolution before each of the last two stages


def _convs(n: int, c_in: int, c_out: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        ]
    return layers


class _Condition(nn.Module):
    """``ReLU(W p + b)``, added to every position of a ``(N, C, H, W)`` feature map."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_classes, channels)

    def forward(self, h: Tensor, p: Tensor) -> Tensor:
        return h + torch.relu(self.proj(p))[:, :, None, None]


class ConditionalAutoencoder(nn.Module):
    """Deep plain conv autoencoder conditioned on a class-probability vector ``p``.

    Args:
        num_classes: Length of ``p`` (the classifier's classes).
        in_channels: Image channels.
        image_size: Side of the square images; divisible by 4 (two 2× poolings).
        latent_dim: Size of the latent code (6, 8 or 10 in the HSCAE report; 8 by default).
        width: Channels at full resolution; ``2·width`` at half, ``4·width`` at a quarter.
    """

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int, latent_dim: int = 8, width: int = 8
    ) -> None:
        super().__init__()
        for label, v in (("latent_dim", latent_dim), ("width", width), ("num_classes", num_classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OodlabError(f"autoencoder: {label} must be a positive integer, got {v!r}")
        if image_size is None or image_size % 4 or image_size < 4:
            raise OodlabError(
                f"autoencoder: image_size must be a multiple of 4 (pooled twice), got {image_size!r}"
            )
        w1, w2, w3 = width, 2 * width, 4 * width
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, latent_dim
        self.side = image_size // 4
        self.enc1 = nn.Sequential(*_convs(ENCODER_CONVS[0], in_channels, w1))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), *_convs(ENCODER_CONVS[1], w1, w2))
        self.enc3 = nn.Sequential(nn.MaxPool2d(2), *_convs(ENCODER_CONVS[2], w2, w3))
        self.to_latent = nn.Linear(w3 * self.side**2, latent_dim)
        self.from_latent = nn.Linear(latent_dim, w3 * self.side**2)
        self.dec3 = nn.Sequential(*_convs(DECODER_CONVS[0], w3, w3))
        self.up2 = nn.Sequential(nn.ConvTranspose2d(w3, w2, 2, stride=2), nn.BatchNorm2d(w2), nn.ReLU())
        self.dec2 = nn.Sequential(*_convs(DECODER_CONVS[1], w2, w2))
        self.up1 = nn.Sequential(nn.ConvTranspose2d(w2, w1, 2, stride=2), nn.BatchNorm2d(w1), nn.ReLU())
        dec1 = _convs(DECODER_CONVS[2] - 1, w1, w1)
        self.dec1 = nn.Sequential(*dec1, nn.Conv2d(w1, in_channels, 3, padding=1))
        self.cond_enc = nn.ModuleList(_Condition(num_classes, c) for c in (w1, w2, w3))
        self.cond_dec = nn.ModuleList(_Condition(num_classes, c) for c in (w3, w2, w1))

    def encode(self, x: Tensor, p: Tensor) -> Tensor:
        """Images in [0, 1] and their conditioning ``p`` → latent codes ``(N, latent_dim)``."""
        h = self.cond_enc[0](self.enc1(x), p)
        h = self.cond_enc[1](self.enc2(h), p)
        h = self.cond_enc[2](self.enc3(h), p)
        return self.to_latent(h.flatten(1))

    def decode(self, z: Tensor, p: Tensor) -> Tensor:
        """Latent codes and conditioning → images in [0, 1] (a sigmoid output)."""
        h = self.from_latent(z).view(len(z), -1, self.side, self.side)
        h = self.dec3(self.cond_dec[0](torch.relu(h), p))
        h = self.dec2(self.cond_dec[1](self.up2(h), p))
        return torch.sigmoid(self.dec1(self.cond_dec[2](self.up1(h), p)))

    def forward(self, x: Tensor, p: Tensor) -> Tensor:
        return self.decode(self.encode(x, p), p)


class SelfConditionedAutoencoder(nn.Module):
    """A frozen classifier and the autoencoder conditioned on its softmax at temperature ``T``.

    ``forward(x)`` is the classifier's (logits), and so are ``forward_taps``, ``tap_names``,
    ``head`` and ``check_input``: detectors that read a classifier score this module as the
    classifier itself. The classifier is never trained here (the trainer loads it from the
    base network and freezes it) and stays in eval mode when the module is put in train mode.

    Args:
        num_classes, in_channels, image_size: Of the classifier and its images.
        classifier: The classifier's spec, ``{"model": name, "kwargs": {...}}`` (its recipe's
            model and ``model_kwargs``); built with ``num_classes``, ``in_channels``, ``image_size``.
        latent_dim: The autoencoder's latent size.
        width: The autoencoder's channels at full resolution.
        temperature: ``T`` of the conditioning softmax.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        classifier: dict[str, Any],
        latent_dim: int = 8,
        width: int = 8,
        temperature: float = 2.0,
    ) -> None:
        super().__init__()
        if not isinstance(classifier, dict) or "model" not in classifier:
            raise OodlabError(
                f"hscae: classifier must be a spec {{'model': name, 'kwargs': ...}}, got {classifier!r}"
            )
        if not temperature > 0:
            raise OodlabError(f"hscae: temperature must be positive, got {temperature!r}")
        self.classifier = create_model(
            classifier["model"],
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            **classifier.get("kwargs", {}),
        )
        self.classifier.requires_grad_(False)
        self.autoencoder = ConditionalAutoencoder(num_classes, in_channels, image_size, latent_dim, width)
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.temperature = float(temperature)

    # -- the classifier's face ----------------------------------------------------------------
    @property
    def tap_names(self) -> tuple[str, ...]:
        return self.classifier.tap_names

    @property
    def head(self) -> nn.Linear:
        return self.classifier.head

    @property
    def num_features(self) -> int:
        return self.classifier.num_features

    def check_input(self, x: Tensor) -> None:
        self.classifier.check_input(x)

    def forward(self, x: Tensor) -> Tensor:
        """The classifier's logits."""
        return self.classifier(x)

    def forward_taps(self, x: Tensor, taps: Iterable[str]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.classifier.forward_taps(x, taps)

    def train(self, mode: bool = True) -> SelfConditionedAutoencoder:
        super().train(mode)
        self.classifier.eval()  # frozen: dropout off, running statistics kept
        return self

    # -- the autoencoder ----------------------------------------------------------------------
    def condition(self, x: Tensor, logits: Tensor | None = None) -> Tensor:
        """``softmax(f(x) / T)`` from the classifier's logits (computed from ``x`` if not given)."""
        if logits is None:
            with torch.no_grad():
                logits = self.classifier(x)
        return torch.softmax(logits.float() / self.temperature, dim=1)

    def reconstruct(self, x: Tensor, logits: Tensor | None = None) -> Tensor:
        """One pass through the autoencoder, conditioned on ``x``'s own softmax (level 1)."""
        return self.autoencoder(x, self.condition(x, logits))

    def reconstructions(self, x: Tensor, levels: int, logits: Tensor | None = None) -> list[Tensor]:
        """``[x̂_1, …, x̂_levels]``: ``x̂_h`` is ``x̂_{h−1}`` fed back through the autoencoder
        (``x̂_0 = x``), every pass conditioned on the softmax of the *original* input (from
        ``logits``, the classifier's on ``x``, when given)."""
        p = self.condition(x, logits)
        out, h = [], x
        for _ in range(levels):
            h = self.autoencoder(h, p)
            out.append(h)
        return out


@register_model("hscae")
def hscae(
    num_classes: int,
    in_channels: int = 1,
    image_size: int = 28,
    classifier: dict[str, Any] | None = None,
    latent_dim: int = 8,
    width: int = 8,
    temperature: float = 2.0,
    **classifier_kwargs: Any,
) -> SelfConditionedAutoencoder:
    """The HSCAE network: a frozen classifier (default: the FSSD LeNet) and its conditioned autoencoder.

    Further keyword arguments (``mean``, ``std``) are the classifier's.
    """
    spec = dict(classifier or {"model": "lenet"})
    if classifier_kwargs:
        spec["kwargs"] = {**spec.get("kwargs", {}), **classifier_kwargs}
    return SelfConditionedAutoencoder(
        num_classes, in_channels, image_size, spec, latent_dim, width, temperature
    )


__all__ = ["ConditionalAutoencoder", "SelfConditionedAutoencoder"]
