"""Shared by the service benchmarks: the LeNet bundle, a server process, and a keep-alive client."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OODLAB = str(Path(sys.executable).parent / "oodlab")


def make_bundle(out: Path, detectors: str = "energy,mahalanobis:noise=0", n_train: int = 6000) -> Path:
    """A LeNet bundle for the service benchmarks, at ``out`` (reused when present).

    The fmnist-vs-mnist suite's LeNet (architecture, input standardisation, optimiser), trained
    for one epoch on a seeded ``n_train``-image subset of its training set — the service
    benchmarks measure speed and robustness, not detection quality, and a 3-epoch training on
    55k images takes too long on a shared 2-core machine — then ``detectors`` fitted on the same
    subset (blind protocol) with the suite's ID validation images.
    """
    import dataclasses

    from safetensors.torch import save_file

    from oodlab.bench import build_suite, get_suite
    from oodlab.bundle import fit_bundle
    from oodlab.models.user import load_model
    from oodlab.training import train

    if (out / "manifest.json").exists():
        return out
    suite = get_suite("fmnist-vs-mnist")
    data = build_suite(suite, seed=0)
    pick = np.sort(np.random.default_rng(0).choice(len(data.id_train), n_train, replace=False))
    id_train = data.id_train.subset(pick)
    net, _ = train(dataclasses.replace(suite.train, epochs=1), id_train, progress=False)
    weights = out.parent / f"{out.name}-lenet.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    kw = suite.train.model_kwargs
    spec = f"lenet:num_classes=10:in_channels=1:image_size=28:mean={kw['mean']}:std={kw['std']}@{weights}"
    model, ref = load_model(spec)
    fit_bundle(model, ref, id_train, out, detectors=detectors, id_val=data.id_val)
    return out


def test_images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` Fashion-MNIST test images (uint8, (n, 1, 28, 28)), drawn with ``seed``."""
    from oodlab.data import load_dataset

    x = load_dataset("fashion_mnist", "test").x
    return x[np.random.default_rng(seed).choice(len(x), n, replace=False)]


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``oodlab serve BUNDLE`` in its own process (and process group)."""

    def __init__(self, bundle: Path, port: int, threads: int | None = None) -> None:
        self.bundle, self.port = bundle, port
        env = dict(os.environ)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen(
            [OODLAB, "serve", str(bundle), "--port", str(port)],
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                status, _ = Client(port).get("/health")
                if status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.proc.pid, sig)
        self.proc.wait(timeout=30)


class Client:
    """One keep-alive HTTP/1.1 connection (as a real client would hold)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, body: bytes, ctype: str = "application/x-npy") -> tuple[int, dict]:
        self.conn.request("POST", "/score", body=body, headers={"content-type": ctype})
        r = self.conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else {}

    def get(self, path: str) -> tuple[int, dict]:
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        return r.status, json.loads(r.read())

    def close(self) -> None:
        self.conn.close()
