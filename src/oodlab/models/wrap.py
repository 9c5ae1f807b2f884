"""`wrap`: make any classifier ``nn.Module`` an oodlab model, without subclassing.

The wrapped network is run as it is; the activations detectors read are taken with forward
hooks registered for the duration of one call (so a wrapped module is never left with hooks,
and the same module can be wrapped twice):

- the **penultimate** vector is the input of the head (the last ``nn.Linear`` unless named),
  flattened to ``(N, D)``; logits are the network's own output, so ``head(penultimate)`` equals
  the logits exactly when the head is the network's last operation, which ViM and ReAct assume;
- every other **tap** is the output of a named submodule (``"layer3"``, ``"features.8"``).

Inputs are pixels in [0, 1]; ``mean``/``std`` normalise them before the network sees them, as
for every oodlab model (so input gradients, ODIN's and Mahalanobis's ε, are in pixel units).
Models that normalise inside themselves take the defaults ``mean=0``, ``std=1``.

Example:
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(),
    ...                           torch.nn.Linear(8, 3))
    >>> model = wrap(net, in_channels=1, image_size=2)
    >>> model.tap_names
    ('penultimate',)
    >>> logits, taps = model.forward_taps(torch.rand(5, 1, 2, 2), ["penultimate"])
    >>> tuple(taps["penultimate"].shape)
    (5, 8)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from oodlab.errors import OodlabError
from oodlab.models.base import PENULTIMATE, TappedModel, TapRecorder

_RESERVED = (PENULTIMATE, "logits")


def _children_line(module: nn.Module, path: str) -> str:
    """The named children of the deepest existing module on ``path`` (where the user went wrong)."""
    parent, prefix = module, ""
    for part in path.split(".")[:-1]:
        child = getattr(parent, part, None) if part in dict(parent.named_children()) else None
        if child is None:
            break
        parent, prefix = child, f"{prefix}{part}."
    names = [f"{prefix}{n}" for n, _ in parent.named_children()]
    where = f"{type(parent).__name__} at {prefix[:-1]!r}" if prefix else type(module).__name__
    return f"the children of {where} are: {', '.join(names) or 'none'}"


def find_module(module: nn.Module, path: str, what: str) -> nn.Module:
    """The submodule at dotted ``path``; a one-line error listing the module's named submodules."""
    try:
        return module.get_submodule(path)
    except AttributeError:
        raise OodlabError(
            f"{what} {path!r} is not a submodule of {type(module).__name__}; {_children_line(module, path)}"
        ) from None


def default_head(module: nn.Module) -> str:
    """Path of the last ``nn.Linear`` in ``module`` (registration order)."""
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and n]
    if not linears:
        raise OodlabError(
            f"{type(module).__name__} has no nn.Linear layer to use as the head; name one with head=..."
        )
    return linears[-1]


def default_taps(module: nn.Module, head: str) -> dict[str, str]:
    """Taps when none are named: the top-level blocks that hold convolutions (``layer1`` …
    ``layer4`` of a torchvision ResNet), or, for a flat ``nn.Sequential``, its top-level
    convolutions. Empty for a network without convolutions (only the penultimate is tapped)."""
    blocks = {}
    convs = {}
    for name, child in module.named_children():
        if name == head:
            continue
        has_conv = any(isinstance(m, nn.Conv2d) for m in child.modules())
        if has_conv and any(True for _ in child.children()):
            blocks[name] = name
        elif isinstance(child, nn.Conv2d):
            convs[name] = name
    return blocks or convs


def _first_conv_channels(module: nn.Module) -> int | None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


class WrappedModel(TappedModel):
    """A user's classifier seen as a :class:`TappedModel` (build it with :func:`wrap`).

    Attributes:
        module: The wrapped network (its parameters are this model's, under ``module.``).
        tap_paths: ``{tap name: dotted submodule path}``.
        head_path: Dotted path of the final linear layer.
    """

    def __init__(
        self,
        module: nn.Module,
        taps: Mapping[str, str],
        head: str,
        num_classes: int,
        in_channels: int,
        image_size: int | None,
        mean: Sequence[float] | float,
        std: Sequence[float] | float,
    ) -> None:
        super().__init__(num_classes, in_channels, image_size, mean, std)
        self.module = module
        self.tap_paths = dict(taps)
        self.head_path = head
        self.tap_names = (*self.tap_paths, PENULTIMATE)

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        """The final linear layer (a submodule of :attr:`module`, not registered twice)."""
        return self.module.get_submodule(self.head_path)  # type: ignore[return-value]

    def wrap_config(self) -> dict[str, Any]:
        """The arguments that rebuild this wrapper around the same network (JSON-serialisable)."""
        return {
            "taps": dict(self.tap_paths),
            "head": self.head_path,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "mean": [float(v) for v in self.input_mean.reshape(-1)],
            "std": [float(v) for v in self.input_std.reshape(-1)],
        }

    def _run(self, z: Tensor, rec: TapRecorder) -> tuple[Tensor, Tensor]:
        """Run the network on normalised ``z``; return (logits, penultimate), recording taps."""
        captured: dict[str, Tensor] = {}
        handles = []

        def head_input(_: nn.Module, args: tuple[Any, ...]) -> None:
            captured[PENULTIMATE] = args[0]

        handles.append(self.head.register_forward_pre_hook(head_input))
        for name, path in self.tap_paths.items():
            if name not in rec.wanted:
                continue

            def keep(_: nn.Module, __: Any, out: Any, name: str = name) -> None:
                if not isinstance(out, Tensor):
                    raise OodlabError(f"tap {name!r} ({self.tap_paths[name]}) returned {type(out).__name__}")
                rec.put(name, out)

            handles.append(self.module.get_submodule(path).register_forward_hook(keep))
        try:
            logits = self.module(z)
        except RuntimeError as e:
            # A shape mismatch inside the user's network: one line, not a traceback.
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OodlabError(
                f"{type(self.module).__name__} failed on input of shape {tuple(z.shape)}: {first}"
            ) from None
        finally:
            for h in handles:
                h.remove()
        if PENULTIMATE not in captured:
            raise OodlabError(f"head {self.head_path!r} was not called in the forward pass")
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise OodlabError(f"{type(self.module).__name__} must return (N, K) logits")
        return logits, captured[PENULTIMATE].flatten(1)

    def forward_features(self, z: Tensor, taps: TapRecorder) -> Tensor:
        """Normalised batch → the head's input, flattened (runs the whole network)."""
        return self._run(z, taps)[1]

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the wrapped network for images in [0, 1]."""
        return self._run(self.normalize(x), TapRecorder())[0]

    def forward_taps(self, x: Tensor, taps: Iterable[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the requested taps, from one forward pass (the network's own logits)."""
        rec = TapRecorder(self.wanted_taps(taps))
        logits, feats = self._run(self.normalize(x), rec)
        rec.put(PENULTIMATE, feats)
        return logits, rec.values


def wrap(
    module: nn.Module,
    taps: Mapping[str, str] | Sequence[str] | None = None,
    head: str | None = None,
    mean: Sequence[float] | float = 0.0,
    std: Sequence[float] | float = 1.0,
    *,
    in_channels: int | None = None,
    image_size: int | None = None,
) -> WrappedModel:
    """Make any classifier usable by every oodlab detector.

    Args:
        module: A network mapping a normalised ``(N, C, H, W)`` batch to ``(N, K)`` logits.
        taps: ``{name: "dotted.module.path"}`` (or a list of paths, each its own name) whose
            outputs detectors may read. Default: see :func:`default_taps`.
        head: Path of the final ``nn.Linear``. Default: the last ``nn.Linear`` of ``module``.
        mean: Per-channel (or scalar) mean subtracted from pixels in [0, 1] before ``module``.
        std: Per-channel (or scalar) std the centred pixels are divided by.
        in_channels: Input channels; default the first convolution's, else the length of ``mean``.
        image_size: Side the inputs must have (square images); ``None`` accepts any size.

    Returns:
        A :class:`WrappedModel` holding ``module`` (not a copy) in eval mode.

    Raises:
        OodlabError: A tap or head path that does not exist (listing the submodules), a head
            that is not ``nn.Linear``, a reserved or malformed tap name, or mean/std of the
            wrong length.
    """
    if not isinstance(module, nn.Module):
        raise OodlabError(f"wrap() takes a torch.nn.Module, got {type(module).__name__}")
    if isinstance(module, TappedModel):
        raise OodlabError(f"{type(module).__name__} is already an oodlab model; use it as it is")
    head = head if head is not None else default_head(module)
    head_module = find_module(module, head, "head")
    if not isinstance(head_module, nn.Linear):
        raise OodlabError(
            f"head {head!r} is a {type(head_module).__name__}, not an nn.Linear; "
            "name the final linear layer with head=..."
        )
    if taps is None:
        tap_map = default_taps(module, head)
    elif isinstance(taps, Mapping):
        tap_map = {str(k): str(v) for k, v in taps.items()}
    else:
        tap_map = {str(p): str(p) for p in taps}
    for name, path in tap_map.items():
        if name in _RESERVED or "@" in name or not name:
            raise OodlabError(
                f"tap name {name!r} is reserved or malformed (no '@', not {', '.join(_RESERVED)})"
            )
        find_module(module, path, f"tap {name!r}:")
    if in_channels is None:
        in_channels = _first_conv_channels(module)
    if in_channels is None:
        n = torch.as_tensor(mean).numel()
        if n == 1:
            raise OodlabError(
                f"cannot tell how many input channels {type(module).__name__} takes (no Conv2d); "
                "pass in_channels=..."
            )
        in_channels = n
    model = WrappedModel(
        module,
        tap_map,
        head,
        num_classes=int(head_module.out_features),
        in_channels=in_channels,
        image_size=image_size,
        mean=mean,
        std=std,
    )
    return model.eval()
