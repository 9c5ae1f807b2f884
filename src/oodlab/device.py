"""Which device the network runs on: ``--device auto|cpu|cuda``.

``auto`` is CUDA when PyTorch sees a CUDA device, else the CPU. Only the network moves:
training, the forward passes that detectors score from, and the input-gradient passes (ODIN,
Mahalanobis with ε > 0) run where the model is (:func:`oodlab.features.model_device`); features,
detector state and scores come back to the CPU, where fitting and metrics stay. Every entry
point that runs a network takes a device name and resolves it here — ``oodlab bench``,
:func:`oodlab.training.fit_or_load` and, for a service, ``resolve_device(name)`` then
``model.to(device)`` before scoring.
"""

from __future__ import annotations

import torch

from oodlab.errors import OodlabError

#: Names accepted by ``--device`` (``cuda:N`` picks one of several GPUs).
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` → ``cuda`` if available else ``cpu``; ``"cpu"``; ``"cuda"`` / ``"cuda:N"``
    (a one-line error when no such CUDA device is available). ``None`` means the CPU."""
    if name is None:
        return torch.device("cpu")
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise OodlabError(
                f"--device {text}: PyTorch sees no CUDA device (torch.cuda.is_available() is False; "
                f"this torch is {torch.__version__}); use --device cpu or auto"
            )
        try:
            device = torch.device(text)
        except RuntimeError:
            raise OodlabError(f"--device {text}: not a device name; use auto, cpu, cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OodlabError(
                f"--device {text}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
        return device
    raise OodlabError(f"unknown device {name!r}; use one of {', '.join(DEVICES)} or cuda:N")


__all__ = ["DEVICES", "resolve_device"]
