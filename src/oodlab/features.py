"""Run a model once over a set of images and keep its logits and named taps (`Outputs`).

Every detector that needs no input gradient is scored from the same `Outputs`, so a
benchmark pays one forward pass per (model, dataset) however many detectors it runs.
Tap requests are tap names, optionally with a reducer: ``"conv2@mean"`` is the spatial mean
of the ``conv2`` map, ``(N, C)`` — the pooling Mahalanobis uses — computed on the fly so the
full map is never stored. ``"logits"`` is accepted as a tap name and means the logits.

A detector that needs another per-image summary of a full map (FSSD's distance to a centre)
passes a :class:`ReducedTap`: a tap name, a unique key, and a function applied to each batch's
map inside the pass, so only the summary is kept.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from oodlab.data.imageset import ImageSet
from oodlab.errors import OodlabError
from oodlab.io import atomic_write

LOGITS = "logits"
#: Images per forward pass by default. Kept small on purpose: glibc hands every allocation over
#: 32 MiB its own fresh mmap, so a batch whose activations pass that size (the LeNet's conv2 map
#: at 256 images is 38 MB) pays page faults on every batch. At 128 images the same 20k-image
#: LeNet pass ran 1.7× faster here (page faults 1.4M → 0), ODIN's gradient pass 1.5×.
BATCH_SIZE = 128
_REDUCERS = ("mean",)


@dataclass(frozen=True)
class ReducedTap:
    """A per-image summary of tap ``tap`` computed batch by batch inside the forward pass.

    ``fn(value, x)`` maps one batch's full tap value (``(B, ...)``; the logits for
    ``tap="logits"``) and the batch's input images to ``(B, ...)``; the result is kept under
    ``key``. Two reductions with the same key must compute the same thing, because outputs are
    cached (in memory and on disk) under the key alone, next to the model's and images' hashes:
    put every parameter of the reduction that does not follow from the model in the key.
    """

    tap: str
    key: str
    fn: Callable[[Tensor, Tensor], Tensor] = field(compare=False, repr=False)


#: What a detector may ask the shared pass for: a tap spec string or a reduction.
TapSpec = str | ReducedTap


def spec_key(spec: TapSpec) -> str:
    """The name a tap request is stored under in :class:`Outputs`."""
    return spec.key if isinstance(spec, ReducedTap) else spec


def unique_specs(specs: Iterable[TapSpec]) -> list[TapSpec]:
    """``specs`` without repeated keys, ordered by key (a deterministic order for any input)."""
    by_key = {spec_key(s): s for s in specs}
    return [by_key[k] for k in sorted(by_key)]


@dataclass
class Outputs:
    """Logits ``(N, K)`` and named taps ``{name: (N, ...)}`` of one model on one set of images."""

    logits: Tensor
    taps: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.logits)

    def tap(self, spec: TapSpec) -> Tensor:
        """The tap ``spec`` (``"logits"`` gives the logits); a clear error if it was not computed."""
        key = spec_key(spec)
        if key == LOGITS:
            return self.logits
        if key not in self.taps:
            raise OodlabError(
                f"tap {key!r} was not computed; computed taps: {', '.join(sorted(self.taps)) or 'none'}"
            )
        return self.taps[key]

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


def spatial_mean(t: Tensor) -> Tensor:
    """Mean of a map ``(N, C, ...)`` over its spatial dims → ``(N, C)``; vectors as they are.

    A reduction over the spatial dims reads any memory layout in place (``flatten(2)`` would
    first copy a channels-last map).
    """
    return t.mean(dim=tuple(range(2, t.ndim))) if t.ndim > 2 else t


def _reduce(t: Tensor, reducer: str | None) -> Tensor:
    return spatial_mean(t) if reducer == "mean" else t


def _source_tap(spec: TapSpec) -> str:
    return spec.tap if isinstance(spec, ReducedTap) else parse_tap(spec)[0]


def _apply(spec: TapSpec, logits: Tensor, raw: dict[str, Tensor], x: Tensor) -> Tensor:
    if isinstance(spec, ReducedTap):
        return spec.fn(logits if spec.tap == LOGITS else raw[spec.tap], x)
    name, reducer = parse_tap(spec)
    return _reduce(raw[name], reducer)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model with none)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def channels_last(model: nn.Module) -> Iterator[None]:
    """Run a convolutional model on the CPU in channels-last memory layout for the duration.

    oneDNN's channels-last convolutions run the LeNet forward pass about 1.5× faster on a
    2-core x86 CPU (and its input-gradient pass about 1.2×); outputs differ from the default
    layout by float rounding only. Parameters are re-laid out, never changed, and put back in
    the default layout on exit. Models without 4-d weights, off the CPU, or already
    channels-last are left alone.
    """
    convs = [p for p in model.parameters() if p.ndim == 4]
    if (
        not convs
        or model_device(model).type != "cpu"
        or all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    ):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def model_fingerprint(model: nn.Module) -> str:
    """A content hash of the model's class and every parameter and buffer."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__qualname__.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(memoryview(v.detach().cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()


def batches(images: ImageSet | Tensor, batch_size: int = BATCH_SIZE) -> Iterable[Tensor]:
    """``images`` in consecutive float32 batches of at most ``batch_size``."""
    n = len(images)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield images.tensor(start, stop) if isinstance(images, ImageSet) else images[start:stop]


@torch.no_grad()
def extract(
    model: nn.Module,
    images: ImageSet | Tensor,
    taps: Iterable[TapSpec] = (),
    *,
    batch_size: int = BATCH_SIZE,
) -> Outputs:
    """One forward pass of ``model`` (in eval mode) over ``images``.

    Args:
        model: A :class:`~oodlab.models.TappedModel`, or any ``nn.Module`` returning logits
            when no taps are requested.
        images: An :class:`ImageSet` or a float tensor ``(N, C, H, W)`` in [0, 1].
        taps: Tap specs to keep (see the module docstring), strings or :class:`ReducedTap`.
        batch_size: Images per forward pass; results do not depend on it beyond float rounding.

    Returns:
        Outputs on the CPU, in float32. The model's train/eval mode is restored afterwards.
    """
    specs = [s for s in unique_specs(taps) if s != LOGITS]
    names = {_source_tap(s) for s in specs} - {LOGITS}
    if specs and not hasattr(model, "forward_taps"):
        raise OodlabError(f"{type(model).__name__} does not name its taps; wrap it in a TappedModel")
    if hasattr(model, "check_input") and len(images):
        first = images.tensor(0, 1) if isinstance(images, ImageSet) else images[:1]
        model.check_input(first)
    device = model_device(model)
    was_training = model.training
    model.eval()
    n = len(images)
    # Results go straight into tensors allocated once for the whole set: appending each batch's
    # small output and concatenating at the end left one live block per batch among the freed
    # activations, which kept the allocator from returning them (1.9 GB peak for 55k LeNet
    # logits) and doubled the result at the end.
    result: dict[str, Tensor] = {}

    def put(key: str, value: Tensor, start: int) -> None:
        value = value.detach()
        if key not in result:
            result[key] = torch.empty((n, *value.shape[1:]), dtype=torch.float32)
        result[key][start : start + len(value)] = value

    try:
        with channels_last(model):
            start = 0
            for xb in batches(images, batch_size):
                xb = xb.to(device)
                if specs:
                    lb, raw = model.forward_taps(xb, names)  # type: ignore[operator]
                    for s in specs:
                        put(spec_key(s), _apply(s, lb, raw, xb), start)
                else:
                    lb = model(xb)
                put(LOGITS, lb, start)
                start += len(xb)
    finally:
        model.train(was_training)
    if n == 0:
        raise OodlabError("no images to run the model on (empty image set)")
    logits = result.pop(LOGITS)
    return Outputs(logits, result)


class OutputsCache:
    """Memo of `Outputs` keyed by (model content, image-set content), in memory and optionally on disk.

    Asking again for a subset of the taps already computed costs nothing; asking for new taps
    runs one pass for the missing ones and merges them in, so callers that know every tap up
    front (the bench runner) pay exactly one forward pass per dataset.

    With ``disk_dir``, outputs are also written there as safetensors files named by the model's
    and the images' content hashes, so a later process reuses them; a changed model or dataset
    has another hash and is never served stale outputs. Taps of more than ``max_disk_dims``
    dimensions (full conv maps) are kept in memory only: they are large and cheap to recompute
    relative to their size on disk.
    """

    def __init__(
        self,
        max_entries: int = 32,
        disk_dir: Path | None = None,
        max_disk_dims: int = 2,
        max_bytes: int | None = None,
    ) -> None:
        self.max_entries = max_entries
        #: Bound on the memory the kept outputs hold (the newest entry is always kept).
        self.max_bytes = max_bytes
        self.disk_dir = disk_dir
        self.max_disk_dims = max_disk_dims
        self._store: OrderedDict[tuple[str, str], Outputs] = OrderedDict()
        self.forward_passes = 0
        self.disk_hits = 0

    def get(self, model: nn.Module, images: ImageSet, taps: Iterable[TapSpec] = ()) -> Outputs:
        """Outputs of ``model`` on ``images`` with at least the taps ``taps``."""
        wanted = [s for s in unique_specs(taps) if s != LOGITS]
        key = (model_fingerprint(model), images.fingerprint)
        cached = self._store.get(key)
        if cached is None and self.disk_dir is not None:
            cached = self._load(key)
        missing = [s for s in wanted if cached is None or spec_key(s) not in cached.taps]
        if cached is not None and not missing:
            self._remember(key, cached)
            return cached
        out = extract(model, images, missing)
        self.forward_passes += 1
        if cached is not None:
            out = Outputs(cached.logits, {**cached.taps, **out.taps})
        self._remember(key, out)
        if self.disk_dir is not None:
            self._save(key, out)
        return out

    def _remember(self, key: tuple[str, str], out: Outputs) -> None:
        self._store[key] = out
        self._store.move_to_end(key)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        if self.max_bytes is not None:
            while len(self._store) > 1 and self.nbytes() > self.max_bytes:
                self._store.popitem(last=False)

    def nbytes(self) -> int:
        """Bytes held by the outputs kept in memory."""
        return sum(o.logits.nbytes + sum(t.nbytes for t in o.taps.values()) for o in self._store.values())

    def _path(self, key: tuple[str, str]) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / f"{key[0]}-{key[1]}.safetensors"

    def _load(self, key: tuple[str, str]) -> Outputs | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            arrays = load_file(str(path))
        except (OSError, SafetensorError, ValueError):
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed, never trusted
            return None
        self.disk_hits += 1
        logits = arrays.pop(LOGITS)
        return Outputs(logits, arrays)

    def _save(self, key: tuple[str, str], out: Outputs) -> None:
        small = {k: v.contiguous() for k, v in out.taps.items() if v.ndim <= self.max_disk_dims}
        atomic_write(self._path(key), lambda tmp: save_file({LOGITS: out.logits.contiguous(), **small}, tmp))

    def clear(self) -> None:
        """Forget every output held in memory (files on disk stay)."""
        self._store.clear()


#: The process-wide cache detectors use when they read a whole image set.
#: The process-wide cache detectors use when they read a whole image set, bounded in entries and
#: in memory (a loop over models would otherwise keep every model's features: about 110 MB per
#: LeNet entry with its taps). Runs that know their sets use a cache of their own (`using_cache`).
default_cache = OutputsCache(max_bytes=1 << 30)


def outputs(model: nn.Module, images: ImageSet, taps: Iterable[TapSpec] = ()) -> Outputs:
    """Cached :func:`extract` through :data:`default_cache`."""
    return default_cache.get(model, images, taps)


@contextmanager
def using_cache(cache: OutputsCache) -> Iterator[OutputsCache]:
    """Make ``cache`` the one :func:`outputs` uses inside the ``with`` block."""
    global default_cache
    previous, default_cache = default_cache, cache
    try:
        yield cache
    finally:
        default_cache = previous
