"""The README's walkthrough, run as written: checkpoint + image folder → bundle → scores → service.

torchvision is not installed here, so ``torchvision.models:resnet18`` is replaced by a file
whose ``resnet18`` builds a tiny torchvision-style ResNet; every other word of the README's
commands runs unchanged, in a shell, with a real ``oodlab serve`` process.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"


def walkthrough() -> list[str]:
    """The shell commands between the README's service-walkthrough markers (continuations joined)."""
    text = README.read_text()
    block = re.search(r"<!-- service-walkthrough -->\s*```sh\n(.*?)```", text, re.S)
    assert block, "README lost its service walkthrough"
    joined = block.group(1).replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"oodlab serve exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if json.load(r)["status"] == "ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("oodlab serve did not answer /health")


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walkthrough uses curl")
def test_readme_walkthrough_runs_end_to_end(tmp_path: Path) -> None:
    from tests.tvstyle import TVResNet

    rng = np.random.default_rng(0)
    for c in range(3):  # three classes of 20x20 RGB images, told apart by their colour
        (tmp_path / "photos" / f"class{c}").mkdir(parents=True)
        for i in range(40):
            a = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
            a[..., c] += 150
            Image.fromarray(a).save(tmp_path / "photos" / f"class{c}" / f"{i}.jpg")
    (tmp_path / "new").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            tmp_path / "new" / f"{i:04d}.png"
        )
    torch.manual_seed(0)
    net = TVResNet((1, 1, 1, 1), num_classes=10, in_channels=3, widths=(8, 8, 16, 16))
    torch.save(net.state_dict(), tmp_path / "resnet.pth")
    (tmp_path / "tvnet.py").write_text(
        f"import sys\nsys.path.insert(0, {str(README.parent)!r})\n"
        "from tests.tvstyle import TVResNet\n\n"
        "def resnet18(num_classes=1000):\n"
        "    return TVResNet((1, 1, 1, 1), num_classes=num_classes, in_channels=3, widths=(8, 8, 16, 16))\n"
    )
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server: subprocess.Popen[bytes] | None = None
    try:
        for cmd in walkthrough():
            cmd = cmd.replace("torchvision.models:resnet18", "tvnet.py:resnet18").replace("8000", str(port))
            if cmd.endswith("&"):
                server = subprocess.Popen(
                    cmd[:-1],
                    shell=True,
                    cwd=tmp_path,
                    env=env,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
                wait_healthy(port, server)
                continue
            done = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, timeout=300)
            assert done.returncode == 0, f"{cmd}\n{done.stderr.decode()}"
            last = done.stdout.decode()
        manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
        assert manifest["input"] == {"shape": [3, 32, 32], "resize": [32, 32]}
        assert manifest["model"]["wrap"]["head"] == "fc"
        assert manifest["model"]["wrap"]["taps"] == {f"layer{i}": f"layer{i}" for i in range(1, 5)}
        rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
        assert [r["image"] for r in rows] == [f"{i:04d}.png" for i in range(6)]
        answer = json.loads(last)  # the curl line's output: the service scored new/0000.png
        assert answer["n"] == 1 and answer["detector"] == manifest["primary"]
        assert answer["results"][0]["score"] == pytest.approx(float(rows[0]["score"]), rel=1e-5, abs=1e-7)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
