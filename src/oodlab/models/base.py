"""`TappedModel`: a classifier that names its intermediate activations ("taps")."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from oodlab.errors import OodlabError

#: Name of the tap every model has: the vector fed to the final linear layer.
PENULTIMATE = "penultimate"


class TapRecorder:
    """Collects the activations a forward pass is asked for; a no-op when nothing is asked."""

    __slots__ = ("wanted", "values")

    def __init__(self, wanted: Iterable[str] = ()) -> None:
        self.wanted = frozenset(wanted)
        self.values: dict[str, Tensor] = {}

    def put(self, name: str, value: Tensor) -> Tensor:
        if name in self.wanted:
            self.values[name] = value
        return value


class TappedModel(nn.Module):
    """Base class of every oodlab model.

    Models take images in [0, 1] of shape ``(N, C, H, W)`` and normalise them *inside* the
    model with the buffers ``input_mean``/``input_std``. Gradients with respect to the input
    are therefore in raw-pixel units, so a perturbation of size ε (ODIN, Mahalanobis) is in
    pixel units with no division by the std.

    Subclasses implement :meth:`forward_features` (normalised input → penultimate vector,
    calling ``taps.put(name, tensor)`` on each named activation) and set ``self.head`` to the
    final ``nn.Linear``. ``tap_names`` lists every tap in network order, ending with
    ``"penultimate"``.
    """

    tap_names: tuple[str, ...]
    head: nn.Linear

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int | None,
        mean: Sequence[float] | float = 0.5,
        std: Sequence[float] | float = 0.5,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.image_size = image_size
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean_t.numel() == 1:
            mean_t = mean_t.expand(in_channels).clone()
        if std_t.numel() == 1:
            std_t = std_t.expand(in_channels).clone()
        if mean_t.numel() != in_channels or std_t.numel() != in_channels:
            raise OodlabError(f"mean/std need {in_channels} values, got {mean_t.numel()} and {std_t.numel()}")
        self.register_buffer("input_mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("input_std", std_t.view(1, -1, 1, 1))

    # -- to implement --------------------------------------------------------------------
    def forward_features(self, z: Tensor, taps: TapRecorder) -> Tensor:  # pragma: no cover
        """Map a *normalised* batch to the penultimate vector, recording taps on the way."""
        raise NotImplementedError

    # -- shared API -----------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        """Pixels in [0, 1] → the network's normalised input."""
        return (x - self.input_mean) / self.input_std

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`OodlabError` if ``x`` is not a batch of images this model accepts."""
        if not isinstance(x, Tensor):
            raise OodlabError(f"expected a torch.Tensor of images, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise OodlabError(f"expected images of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if self.image_size is not None and tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise OodlabError(
                f"expected {self.image_size}x{self.image_size} images, got {x.shape[2]}x{x.shape[3]}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Logits for images in [0, 1]."""
        return self.head(self.forward_features(self.normalize(x), TapRecorder()))

    def wanted_taps(self, taps: Iterable[str]) -> frozenset[str]:
        """``taps`` as a set; a clear error naming the model's taps if one is not among them."""
        wanted = frozenset(taps)
        unknown = wanted - set(self.tap_names)
        if unknown:
            raise OodlabError(
                f"{type(self).__name__} has no tap {', '.join(sorted(unknown))}; "
                f"its taps are: {', '.join(self.tap_names)}"
            )
        return wanted

    def forward_taps(self, x: Tensor, taps: Iterable[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the requested taps, from one forward pass."""
        rec = TapRecorder(self.wanted_taps(taps))
        feats = rec.put(PENULTIMATE, self.forward_features(self.normalize(x), rec))
        return self.head(feats), rec.values

    @property
    def num_features(self) -> int:
        """Size of the penultimate vector."""
        return self.head.in_features
