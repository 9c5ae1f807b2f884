"""``create_app(bundle)``: the ASGI app of ``oodlab serve``.

Routes:

- ``POST /score``: one image or a batch. Body: PNG or JPEG bytes (``Content-Type: image/png``,
  ``image/jpeg``) for one image, or a NumPy ``.npy`` array (``application/x-npy`` or
  ``application/octet-stream``): ``(H, W)`` or ``(C, H, W)`` for one image, ``(N, C, H, W)`` (or
  ``(N, H, W)`` for one-channel bundles) for a batch; ``uint8`` pixels or floats in [0, 1].
  Answer: ``{"detector", "threshold", "n", "results": [{"score", "accept", "threshold",
  "detector"}, ...]}``, one result per image in order; higher scores are more in-distribution
  and ``accept`` is ``score >= threshold``.
- ``GET /health``: ``{"status": "ok"}`` and counters (requests, forward passes, images).
- ``GET /info``: the bundle's manifest (detectors, thresholds, model reference, version).
- ``GET /docs``, ``GET /openapi.json``: the OpenAPI description.

**Micro-batching.** Requests are decoded and checked on the event loop, then queued; one
worker thread takes everything queued (up to ``max_batch`` images), runs one forward pass and
answers each request with its own slice. While a pass runs, new requests queue up, so the batch
size follows the load with no added wait when the service is idle.

**Bad input** (undecodable image, wrong size or channels, NaN, values outside [0, 1], oversized
body, wrong content type, empty body) is answered with a 4xx and ``{"detail": "<one line>"}``
before it reaches the batch, so it never affects another request.
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError

from oodlab.bundle import Bundle
from oodlab.errors import OodlabError

_NPY_TYPES = ("application/x-npy", "application/npy", "application/octet-stream")
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg")
_NPY_MAGIC = b"\x93NUMPY"
_GRAY = ("1", "L", "LA", "I", "I;16", "F")


class BadInput(Exception):
    """A request the service refuses: HTTP ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _pixels(a: np.ndarray) -> np.ndarray:
    """uint8 or float pixels → float32 in [0, 1]; a :class:`BadInput` otherwise."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype.kind != "f":
        raise BadInput(422, f"array dtype {a.dtype} is not accepted; send uint8 pixels or floats in [0, 1]")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise BadInput(422, f"array contains {int((~np.isfinite(a)).sum())} NaN or infinite values")
    if a.size and (float(a.min()) < 0.0 or float(a.max()) > 1.0):
        raise BadInput(422, f"float pixels must be in [0, 1], got [{float(a.min()):g}, {float(a.max()):g}]")
    return a


def decode_body(body: bytes, content_type: str, bundle: Bundle) -> torch.Tensor:
    """A request body → a float32 batch ``(N, C, H, W)`` in [0, 1] of the bundle's shape."""
    c, h, w = bundle.input_shape
    ctype = content_type.split(";")[0].strip().lower()
    if not body:
        raise BadInput(400, "empty request body; send a PNG/JPEG image or a .npy array")
    if ctype in _IMAGE_TYPES:
        try:
            with Image.open(io.BytesIO(body)) as img:
                img.load()
                channels = 1 if img.mode in _GRAY else 3
                if channels != c:
                    raise BadInput(422, f"image has {channels} channel(s) ({img.mode}); the model takes {c}")
                resize = bundle.manifest["input"].get("resize")
                if resize is None and img.size != (w, h):
                    raise BadInput(422, f"image is {img.size[0]}x{img.size[1]}; the model takes {w}x{h}")
                img = img.convert("L" if c == 1 else "RGB")
                if img.size != (w, h):
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
        except BadInput:
            raise
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
            raise BadInput(400, f"body is not a decodable {ctype} image ({type(e).__name__})") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return torch.from_numpy(_pixels(a)[None])
    if ctype in _NPY_TYPES:
        if not body.startswith(_NPY_MAGIC):
            raise BadInput(400, "body is not a .npy array (no NumPy header)")
        try:
            # The header is read first: a header declaring more data than the body holds would
            # otherwise make np.load allocate it (a body of bytes asking for terabytes).
            f = io.BytesIO(body)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f".npy format version {version} is not accepted (1.0 or 2.0)")
            if dtype.hasobject:
                raise ValueError("object arrays (pickles) are not accepted")
            needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if needed != len(body) - f.tell():
                raise ValueError(f"header declares {needed} bytes of data, body holds {len(body) - f.tell()}")
            a = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError, TypeError, SyntaxError) as e:
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise BadInput(400, f"body is not a readable .npy array ({reason})") from None
        if a.ndim == 2 and c == 1:
            a = a[None, None]
        elif a.ndim == 3:
            a = a[None] if a.shape == (c, h, w) else (a[:, None] if c == 1 else a)
        if a.ndim != 4:
            raise BadInput(422, f"array of shape {a.shape}; send (N, {c}, {h}, {w}) or ({c}, {h}, {w})")
        if tuple(a.shape[1:]) != (c, h, w):
            raise BadInput(422, f"images of shape {tuple(a.shape[1:])}; the model takes ({c}, {h}, {w})")
        if len(a) == 0:
            raise BadInput(422, "array holds no images")
        return torch.from_numpy(np.ascontiguousarray(_pixels(a)))
    raise BadInput(
        415,
        f"unsupported content type {ctype or '(none)'!r}; send image/png, image/jpeg or application/x-npy",
    )


class MicroBatcher:
    """Runs the queued requests' images through one forward pass at a time (see the module doc)."""

    def __init__(self, bundle: Bundle, max_batch: int = 512) -> None:
        self.bundle = bundle
        self.max_batch = max_batch
        self.entry = bundle.entry()
        self.detector = bundle.detectors[self.entry["label"]]
        self.threshold = float(self.entry["threshold"])
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oodlab-score")
        self.submitted = 0
        self.passes = 0
        self.images = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def score(self, x: torch.Tensor) -> np.ndarray:
        """Scores of ``x`` (already checked), computed with whatever else is queued."""
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self.queue.put((x, fut))
        self.submitted += 1
        return await fut

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        return self.detector.score(x).numpy()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            n = len(items[0][0])
            while n < self.max_batch and not self.queue.empty():
                item = self.queue.get_nowait()
                items.append(item)
                n += len(item[0])
            live = [(x, f) for x, f in items if not f.cancelled()]
            if not live:
                continue
            x = live[0][0] if len(live) == 1 else torch.cat([x for x, _ in live])
            try:
                scores = await loop.run_in_executor(self.executor, self._forward, x)
            except Exception as e:  # one failed pass fails its requests, never the service
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.passes += 1
            self.images += len(x)
            start = 0
            for xi, f in live:
                if not f.done():
                    f.set_result(scores[start : start + len(xi)])
                start += len(xi)


def create_app(bundle: Bundle, *, max_batch: int = 512, max_body_bytes: int = 32 * 2**20) -> FastAPI:
    """The service over ``bundle``; ``max_body_bytes`` bounds a request body (413 beyond)."""
    batcher = MicroBatcher(bundle, max_batch=max_batch)
    counters = {"requests": 0, "rejected": 0}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="oodlab scoring service",
        description=(
            "Out-of-distribution scores for images, from an oodlab bundle. Higher scores are more "
            "in-distribution; `accept` is `score >= threshold`."
        ),
        version=str(bundle.manifest.get("oodlab", "")),
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, e: BadInput) -> JSONResponse:
        counters["rejected"] += 1
        return JSONResponse({"detail": e.reason}, status_code=e.status)

    @app.exception_handler(OodlabError)
    async def oodlab_error(_: Request, e: OodlabError) -> JSONResponse:
        counters["rejected"] += 1
        return JSONResponse({"detail": str(e).splitlines()[0]}, status_code=422)

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise BadInput(400, "malformed Content-Length header")
            if int(length) > max_body_bytes:
                raise BadInput(413, f"body of {int(length)} bytes exceeds the limit of {max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise BadInput(413, f"body exceeds the limit of {max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post(
        "/score",
        summary="Score one image or a batch",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def score(request: Request) -> JSONResponse:
        """Scores and accept/reject per image (see the module documentation for the body)."""
        counters["requests"] += 1
        body = await read_body(request)
        x = decode_body(body, request.headers.get("content-type", ""), bundle)
        scores = await batcher.score(x)
        t, label = batcher.threshold, batcher.entry["label"]
        results = [
            {"score": float(s), "accept": bool(s >= t), "threshold": t, "detector": label} for s in scores
        ]
        # A response object is sent as is: FastAPI's jsonable_encoder walk over a plain dict
        # costs about as much as the forward pass at 64 images per request.
        return JSONResponse({"detector": label, "threshold": t, "n": len(results), "results": results})

    @app.get("/health", summary="Liveness and counters")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "requests": counters["requests"],
            "rejected": counters["rejected"],
            "forward_passes": batcher.passes,
            "images": batcher.images,
        }

    @app.get("/info", summary="The bundle: detectors, thresholds, model reference, version")
    async def info() -> dict[str, Any]:
        return bundle.info()

    return app
