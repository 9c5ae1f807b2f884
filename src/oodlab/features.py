"""Run a model once over a set of images and keep its logits and named taps (`Outputs`).

Every detector that needs no input gradient is scored from the same `Outputs`, so a
benchmark pays one forward pass per (model, dataset) however many detectors it runs.
Tap requests are tap names, optionally with a reducer: ``"conv2@mean"`` is the spatial mean
of the ``conv2`` map, ``(N, C)`` — the pooling Mahalanobis uses — computed on the fly so the
full map is never stored. ``"logits"`` is accepted as a tap name and means the logits.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from oodlab.data.imageset import ImageSet
from oodlab.errors import OodlabError

LOGITS = "logits"
_REDUCERS = ("mean",)


@dataclass
class Outputs:
    """Logits ``(N, K)`` and named taps ``{name: (N, ...)}`` of one model on one set of images."""

    logits: Tensor
    taps: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.logits)

    def tap(self, spec: str) -> Tensor:
        """The tap ``spec`` (``"logits"`` gives the logits); a clear error if it was not computed."""
        if spec == LOGITS:
            return self.logits
        if spec not in self.taps:
            raise OodlabError(
                f"tap {spec!r} was not computed; computed taps: {', '.join(sorted(self.taps)) or 'none'}"
            )
        return self.taps[spec]

    def subset(self, index: Tensor | np.ndarray | slice) -> Outputs:
        """The outputs of the inputs at ``index``."""
        idx = torch.as_tensor(index) if isinstance(index, np.ndarray) else index
        return Outputs(self.logits[idx], {k: v[idx] for k, v in self.taps.items()})


def parse_tap(spec: str) -> tuple[str, str | None]:
    """``"conv2@mean"`` → ``("conv2", "mean")``; ``"conv2"`` → ``("conv2", None)``."""
    name, _, reducer = spec.partition("@")
    if reducer and reducer not in _REDUCERS:
        raise OodlabError(f"unknown tap reducer {reducer!r} in {spec!r}; known: {', '.join(_REDUCERS)}")
    return name, reducer or None


def _reduce(t: Tensor, reducer: str | None) -> Tensor:
    if reducer == "mean" and t.ndim > 2:
        return t.flatten(2).mean(2)
    return t


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model with none)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def model_fingerprint(model: nn.Module) -> str:
    """A content hash of the model's class and every parameter and buffer."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__qualname__.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(memoryview(v.detach().cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()


def _batches(images: ImageSet | Tensor, batch_size: int) -> Iterable[Tensor]:
    n = len(images)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield images.tensor(start, stop) if isinstance(images, ImageSet) else images[start:stop]


@torch.no_grad()
def extract(
    model: nn.Module,
    images: ImageSet | Tensor,
    taps: Iterable[str] = (),
    *,
    batch_size: int = 256,
) -> Outputs:
    """One forward pass of ``model`` (in eval mode) over ``images``.

    Args:
        model: A :class:`~oodlab.models.TappedModel`, or any ``nn.Module`` returning logits
            when no taps are requested.
        images: An :class:`ImageSet` or a float tensor ``(N, C, H, W)`` in [0, 1].
        taps: Tap specs to keep (see the module docstring).
        batch_size: Images per forward pass; results do not depend on it beyond float rounding.

    Returns:
        Outputs on the CPU, in float32. The model's train/eval mode is restored afterwards.
    """
    specs = sorted(set(taps) - {LOGITS})
    names = {parse_tap(s)[0] for s in specs}
    if specs and not hasattr(model, "forward_taps"):
        raise OodlabError(f"{type(model).__name__} does not name its taps; wrap it in a TappedModel")
    if hasattr(model, "check_input") and len(images):
        first = images.tensor(0, 1) if isinstance(images, ImageSet) else images[:1]
        model.check_input(first)
    device = model_device(model)
    was_training = model.training
    model.eval()
    logits: list[Tensor] = []
    kept: dict[str, list[Tensor]] = {s: [] for s in specs}
    try:
        for xb in _batches(images, batch_size):
            xb = xb.to(device)
            if specs:
                lb, raw = model.forward_taps(xb, names)  # type: ignore[operator]
                for s in specs:
                    name, reducer = parse_tap(s)
                    kept[s].append(_reduce(raw[name], reducer).float().cpu())
            else:
                lb = model(xb)
            logits.append(lb.float().cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise OodlabError("no images to run the model on (empty image set)")
    return Outputs(torch.cat(logits), {s: torch.cat(v) for s, v in kept.items()})


class OutputsCache:
    """In-memory memo of `Outputs` keyed by (model content, image-set content).

    Asking again for a subset of the taps already computed costs nothing; asking for new taps
    recomputes once with the union, so callers that know every tap up front (the bench runner)
    pay exactly one forward pass per dataset.
    """

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._store: OrderedDict[tuple[str, str], Outputs] = OrderedDict()
        self.forward_passes = 0

    def get(self, model: nn.Module, images: ImageSet, taps: Iterable[str] = ()) -> Outputs:
        """Outputs of ``model`` on ``images`` with at least the taps ``taps``."""
        wanted = set(taps) - {LOGITS}
        key = (model_fingerprint(model), images.fingerprint)
        cached = self._store.get(key)
        if cached is not None and wanted <= set(cached.taps):
            self._store.move_to_end(key)
            return cached
        union = wanted | (set(cached.taps) if cached is not None else set())
        out = extract(model, images, union)
        self.forward_passes += 1
        self._store[key] = out
        self._store.move_to_end(key)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return out

    def clear(self) -> None:
        """Forget every cached output."""
        self._store.clear()


#: The process-wide cache detectors use when they read a whole image set.
default_cache = OutputsCache()


def outputs(model: nn.Module, images: ImageSet, taps: Iterable[str] = ()) -> Outputs:
    """Cached :func:`extract` through :data:`default_cache`."""
    return default_cache.get(model, images, taps)
