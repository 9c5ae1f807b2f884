"""`oodlab serve`: the scoring service's answers, its micro-batching, and its refusals of bad input."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from oodlab.bundle import Bundle, fit_bundle, load_bundle
from oodlab.models.user import load_model
from oodlab.serve import create_app

from .conftest import SIZE, dark_images, pattern_images


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def png(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bundle(tiny_setup: dict, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("serve")
    lenet = tiny_setup["model"]
    save_file({k: v.contiguous() for k, v in lenet.state_dict().items()}, root / "w.safetensors")
    model, ref = load_model(f"lenet:num_classes=3:in_channels=1:image_size={SIZE}@{root / 'w.safetensors'}")
    fit_bundle(model, ref, tiny_setup["id_train"], root / "b", detectors="energy")
    return load_bundle(root / "b")


@pytest.fixture()
def client(bundle: Bundle):
    with TestClient(create_app(bundle, max_body_bytes=200_000), raise_server_exceptions=False) as c:
        yield c


def images(n: int, ood: bool = False) -> np.ndarray:
    s = dark_images(n, seed=31) if ood else pattern_images(n, seed=30)
    return (s.tensor().numpy() * 255).round().astype(np.uint8)


def test_health_info_and_openapi(client: TestClient, bundle: Bundle) -> None:
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["primary"] == "energy" and info["detectors"][0]["threshold"] == bundle.entry()["threshold"]
    assert info["oodlab"] and info["model"]["weights_sha256"] == bundle.manifest["model"]["weights_sha256"]
    spec = client.get("/openapi.json").json()
    assert "image/png" in spec["paths"]["/score"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_scores_match_in_process_scoring(client: TestClient, bundle: Bundle) -> None:
    x = images(20)
    expected, accept = bundle.score(torch.from_numpy(x.astype(np.float32) / 255))
    r = client.post("/score", content=npy(x), headers={"content-type": "application/x-npy"})
    assert r.status_code == 200
    doc = r.json()
    assert doc["n"] == 20 and doc["detector"] == "energy" and doc["threshold"] == bundle.entry()["threshold"]
    np.testing.assert_allclose([d["score"] for d in doc["results"]], expected, rtol=1e-6)
    assert [d["accept"] for d in doc["results"]] == accept.tolist()
    one = client.post("/score", content=png(x[3, 0]), headers={"content-type": "image/png"}).json()
    assert one["n"] == 1 and one["results"][0]["score"] == pytest.approx(expected[3], rel=1e-6)
    assert set(one["results"][0]) == {"score", "accept", "threshold", "detector"}
    single = client.post(
        "/score", content=npy(x[5]), headers={"content-type": "application/octet-stream"}
    ).json()
    assert single["results"][0]["score"] == pytest.approx(expected[5], rel=1e-6)
    ood = client.post(
        "/score", content=npy(images(10, ood=True)), headers={"content-type": "application/x-npy"}
    )
    assert not any(d["accept"] for d in ood.json()["results"])


BAD = [
    ("image/png", b"\x89PNG\r\n\x1a\n garbage", 400, "not a decodable"),
    ("image/jpeg", b"", 400, "empty request body"),
    ("image/png", "rgb", 422, "3 channel(s)"),
    ("image/png", "big", 422, "is 20x20; the model takes 12x12"),
    ("application/x-npy", "nan", 422, "NaN"),
    ("application/x-npy", "range", 422, "must be in [0, 1]"),
    ("application/x-npy", "shape", 422, "the model takes (1, 12, 12)"),
    ("application/x-npy", "int64", 422, "dtype int64"),
    ("application/x-npy", b"not npy", 400, "no NumPy header"),
    ("application/x-npy", "pickle", 400, "not a readable .npy"),
    ("text/plain", b"hello", 415, "unsupported content type"),
    ("application/x-npy", "huge", 413, "exceeds the limit"),
]


def bad_body(kind: bytes | str) -> bytes:
    if isinstance(kind, bytes):
        return kind
    return {
        "rgb": lambda: png(np.zeros((SIZE, SIZE, 3), np.uint8)),
        "big": lambda: png(np.zeros((20, 20), np.uint8)),
        "nan": lambda: npy(np.full((2, 1, SIZE, SIZE), np.nan, np.float32)),
        "range": lambda: npy(np.full((1, 1, SIZE, SIZE), 2.0, np.float32)),
        "shape": lambda: npy(np.zeros((2, 3, 8, 8), np.uint8)),
        "int64": lambda: npy(np.zeros((1, 1, SIZE, SIZE), np.int64)),
        "pickle": lambda: npy(np.array([{"a": 1}], dtype=object)),
        "huge": lambda: npy(np.zeros((2000, 1, SIZE, SIZE), np.uint8)),
    }[kind]()


@pytest.mark.parametrize(("ctype", "kind", "status", "reason"), BAD, ids=[b[3] for b in BAD])
def test_bad_input_is_a_4xx_with_one_line(
    client: TestClient, ctype: str, kind: bytes | str, status: int, reason: str
) -> None:
    r = client.post("/score", content=bad_body(kind), headers={"content-type": ctype})
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert reason in detail and "\n" not in detail
    good = client.post("/score", content=npy(images(2)), headers={"content-type": "application/x-npy"})
    assert good.status_code == 200


def test_concurrent_requests_share_forward_passes(client: TestClient, bundle: Bundle) -> None:
    """Requests arriving while a pass runs are answered together by the next one."""
    batcher = client.app.state.batcher  # type: ignore[attr-defined]
    x = images(16)
    expected, _ = bundle.score(torch.from_numpy(x.astype(np.float32) / 255))
    gate = threading.Event()
    batcher.executor.submit(gate.wait)  # hold the scoring thread until every request is queued
    before, submitted = batcher.passes, batcher.submitted

    def post(i: int) -> float:
        r = client.post("/score", content=npy(x[i]), headers={"content-type": "application/x-npy"})
        return r.json()["results"][0]["score"]

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(post, i) for i in range(16)]
        while batcher.submitted - submitted < 16:
            threading.Event().wait(0.01)
        gate.set()
        got = [f.result() for f in futures]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert batcher.passes - before <= 2


def test_serve_command_refuses_a_missing_bundle(tmp_path: Path, capsys) -> None:
    from oodlab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path / "nope")])
    assert e.value.code == 1 and "does not exist" in capsys.readouterr().err


def test_a_header_asking_for_more_data_than_sent_is_refused(client: TestClient) -> None:
    """A few bytes declaring a huge array must not make the service allocate it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 1, 12, 12)}
    )
    body = buf.getvalue() + bytes(144)
    r = client.post("/score", content=body, headers={"content-type": "application/x-npy"})
    assert r.status_code == 400 and "header declares" in r.json()["detail"]
    assert (
        client.post(
            "/score", content=npy(images(1)), headers={"content-type": "application/x-npy"}
        ).status_code
        == 200
    )
