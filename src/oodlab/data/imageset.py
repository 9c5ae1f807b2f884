"""`ImageSet`: the one container every part of oodlab passes images around in."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from oodlab.errors import OodlabError


@dataclass(eq=False)
class ImageSet:
    """An immutable set of images, with optional integer labels.

    Attributes:
        name: Short name used in reports (``"mnist"``, ``"gaussian"``, ...).
        x: ``(N, C, H, W)`` array, either ``uint8`` in [0, 255] or ``float32`` in [0, 1].
        y: ``(N,)`` ``int64`` labels, or ``None`` for unlabelled sets (OOD data).
    """

    name: str
    x: np.ndarray
    y: np.ndarray | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise OodlabError(
                f"image set {self.name!r}: expected (N, C, H, W) images, got shape {self.x.shape}"
            )
        if self.x.dtype not in (np.uint8, np.float32):
            raise OodlabError(
                f"image set {self.name!r}: expected uint8 or float32 images, got {self.x.dtype}"
            )
        if self.y is not None:
            self.y = np.asarray(self.y, dtype=np.int64)
            if self.y.shape != (len(self.x),):
                raise OodlabError(
                    f"image set {self.name!r}: {len(self.x)} images but labels of shape {self.y.shape}"
                )
            self.y.setflags(write=False)
        self.x.setflags(write=False)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(C, H, W)``."""
        c, h, w = self.x.shape[1:]
        return (c, h, w)

    def tensor(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Images ``start:stop`` as a float32 tensor in [0, 1]."""
        chunk = self.x[start:stop]
        if chunk.dtype == np.uint8:
            return torch.from_numpy(chunk.astype(np.float32) / np.float32(255.0))
        return torch.from_numpy(np.array(chunk, dtype=np.float32))

    def labels(self) -> torch.Tensor:
        """Labels as an int64 tensor; raises if the set is unlabelled."""
        if self.y is None:
            raise OodlabError(f"image set {self.name!r} has no labels")
        return torch.from_numpy(np.array(self.y))

    def subset(self, index: np.ndarray | slice, name: str | None = None) -> ImageSet:
        """A new set holding the images at ``index`` (in that order)."""
        x = np.ascontiguousarray(self.x[index])
        y = None if self.y is None else np.ascontiguousarray(self.y[index])
        return ImageSet(name or self.name, x, y)

    @property
    def fingerprint(self) -> str:
        """A content hash of the images and labels (not the name); cached."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(str((self.x.shape, self.x.dtype.str)).encode())
            h.update(memoryview(np.ascontiguousarray(self.x)).cast("B"))
            if self.y is not None:
                h.update(memoryview(np.ascontiguousarray(self.y)).cast("B"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint
