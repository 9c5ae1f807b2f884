"""`oodlab bench --executor ray`: a two-node Ray cluster on loopback runs the grid row for row as
the in-process executor does, survives a killed worker (Ray retries the task) and a killed
driver (the rerun resumes from the finished cells); its bad input fails fast and writes nothing.

The cluster is started the way a user starts one (``ray start --head`` and ``ray start
--address``), each node with one CPU and a 100 MB object store, and stopped by signalling the
two ``ray start --block`` processes this module started (never ``ray stop``, which would stop
every Ray on the machine).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# Ray reads its authentication settings when it is imported: the test cluster and every driver
# here (this process, the command-line subprocesses) share one token.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
import ray  # noqa: E402

from oodlab.bench import BenchConfig, run_bench  # noqa: E402
from oodlab.bench.executors import RayExecutor, parse_resources  # noqa: E402

from .test_bench_resume import (  # noqa: F401  (tiny is a fixture)
    ROOT,
    _finished,
    _spawn,
    install_tiny_suites,
    kill_after_first_cell,
    run,
    tiny,
    tiny_ray_env,
)

pytestmark = pytest.mark.usefixtures("tiny")  # the tiny suites, and OODLAB_CACHE in tmp_path

RAY = str(Path(sys.executable).with_name("ray"))
STORE = 100_000_000  # bytes of object store per node
DETECTORS = ["msp", "energy", "outlier-exposure", "deep-ensemble"]
PARAMS = {"outlier-exposure": {"n_aux": 300}, "deep-ensemble": {"members": 2}}
CLI_GRID = ["bench", "--suite", "tiny", "--seeds", "0,1", "--detectors", ",".join(DETECTORS)]
CLI_GRID += ["--param", "outlier-exposure.n_aux=300", "--param", "deep-ensemble.members=2"]
N_CELLS = 2 * len(DETECTORS)
ONE_CPU = ["train=cpus:1", "score=cpus:1"]  # as the in-process reference's one torch thread


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A head and one worker node on this machine, each a ``ray start --block`` in a session of its own."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="oodlab-ray-", dir="/tmp")  # short: it holds sockets
        self.address = f"127.0.0.1:{_free_port()}"
        common = ["--block", "--num-cpus=1", f"--object-store-memory={STORE}", "--disable-usage-stats"]
        common += ["--node-ip-address=127.0.0.1"]
        port = self.address.rsplit(":", 1)[1]
        head = [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common]
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self.procs.append(self._start([*head, f"--temp-dir={self.temp}"]))
            self._wait_for(1)
            self.procs.append(self._start([RAY, "start", f"--address={self.address}", *common]))
            self._wait_for(2)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _start(cmd: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=ROOT
        )

    def _wait_for(self, n_nodes: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                assert p.poll() is None, f"`{' '.join(map(str, p.args))}` exited with {p.returncode}"
            try:
                socket.create_connection(("127.0.0.1", int(self.address.rsplit(":", 1)[1])), 1).close()
                ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
                try:
                    if sum(n["Alive"] for n in ray.nodes()) >= n_nodes:
                        return
                finally:
                    ray.shutdown()
            except (OSError, ConnectionError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"the Ray cluster did not reach {n_nodes} node(s) in {timeout:.0f} s")

    def pids(self) -> set[int]:
        """Every process of this cluster: the sessions of the ``ray start`` processes it started
        (Ray's workers make process groups of their own, but stay in the session)."""
        sessions = {p.pid for p in self.procs}
        found = set()
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if os.getsid(int(d.name)) in sessions:
                        found.add(int(d.name))
                except ProcessLookupError:
                    pass
        return found

    def stop(self) -> set[int]:
        """SIGTERM to each ``ray start``, which stops its node; return what outlived that (killed)."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = self.pids()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        left = c.stop()
    assert not left, "processes of the test cluster outlived it"


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without wall-clock figures, the run's configuration (which names the executor) and
    the cache folder in checkpoint paths (each run here has its own cache)."""
    out = []
    for r in rows:
        r = {k: v for k, v in r.items() if k not in ("fit_seconds", "score_seconds", "config")}
        if "network" in r:
            net = {k: v for k, v in r["network"].items() if not k.endswith("train_seconds")}
            net["checkpoints"] = [Path(p).name for p in net["checkpoints"]]
            r["network"] = net
        out.append(r)
    return out


def scores(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every cell's score arrays, by cell file."""
    found = {}
    for npz in sorted((out / "cells").rglob("*.npz")):
        with np.load(npz) as f:
            found[str(npz.relative_to(out))] = {k: f[k] for k in f.files}
    return found


def same_scores(a: Path, b: Path) -> bool:
    sa, sb = scores(a), scores(b)
    return sa.keys() == sb.keys() and all(
        sa[k].keys() == sb[k].keys() and all(np.array_equal(sa[k][n], sb[k][n]) for n in sa[k]) for k in sa
    )


def _config() -> BenchConfig:
    return BenchConfig(suites=["tiny"], detectors=DETECTORS, seeds=[0, 1], detector_params=PARAMS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """The grid run in-process with one torch thread (as a one-CPU Ray task runs), own cache."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("reference")
    install_tiny_suites(mp.setattr, mp.setitem)
    mp.setenv("OODLAB_CACHE", str(root / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows, _ = run_bench(_config(), out_dir=root / "out", progress=False, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
        mp.undo()
    assert len(rows) == N_CELLS * 3
    yield root / "out", comparable(rows)


def _ray_run(address: str, out: Path, cache: Path, cell_delay: float = 0.0) -> list[dict[str, Any]]:
    executor = RayExecutor(address, parse_resources(ONE_CPU), runtime_env=tiny_ray_env(cache, cell_delay))
    rows, _ = run_bench(_config(), out_dir=out, progress=False, log=lambda _: None, executor=executor)
    assert not ray.is_initialized()  # the run leaves the cluster, which stays up
    return comparable(rows)


def test_cluster_runs_the_grid_row_for_row(cluster: Cluster, reference, tmp_path: Path) -> None:
    ref_out, expected = reference
    rows = _ray_run(cluster.address, tmp_path / "out", tmp_path / "cache")
    assert rows == expected
    assert same_scores(tmp_path / "out", ref_out)
    run_json = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_json["environment"]["executor"] == {
        "name": "ray",
        "address": cluster.address,
        "train": {"cpus": 1, "gpus": 0.0},
        "score": {"cpus": 1, "gpus": 0.0},
    }
    # Each network was trained once, by the worker that made it: both seeds' base, fine-tuned
    # and second ensemble member (the ensemble's first member is the base, which it waited for).
    models = list((tmp_path / "cache" / "models").glob("*.safetensors"))
    assert len(models) == 2 * 3


def _cell_workers(cluster: Cluster) -> list[int]:
    """Worker processes of the cluster running a cell task now (Ray titles them by task)."""
    found = []
    for pid in cluster.pids():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::_cell_task"):
            found.append(pid)
    return found


def test_killed_worker_task_is_retried(cluster: Cluster, reference, tmp_path: Path) -> None:
    ref_out, expected = reference
    result: dict[str, Any] = {}

    def drive() -> None:
        try:
            result["rows"] = _ray_run(cluster.address, tmp_path / "out", tmp_path / "cache", cell_delay=1.0)
        except BaseException as e:  # noqa: BLE001  (re-raised below, in the test's thread)
            result["error"] = e

    driver = threading.Thread(target=drive)
    driver.start()
    killed = None
    deadline = time.monotonic() + 180
    while killed is None and driver.is_alive() and time.monotonic() < deadline:
        busy = _cell_workers(cluster)
        if busy:
            killed = busy[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    driver.join(timeout=300)
    assert "error" not in result, result.get("error")
    assert killed is not None, "no worker was caught running a cell task"
    finished = _finished(tmp_path / "out")
    assert len(finished) == N_CELLS
    assert result["rows"] == expected
    assert same_scores(tmp_path / "out", ref_out)


def test_killed_driver_resumes(cluster: Cluster, reference, tmp_path: Path) -> None:
    _, expected = reference
    out = tmp_path / "out"
    args = [*CLI_GRID, "--executor", "ray", "--address", cluster.address, "--out", str(out)]
    args += [a for r in ONE_CPU for a in ("--resources", r)] + ["--quiet", "--no-plots"]
    cache = Path(os.environ["OODLAB_CACHE"])
    finished = kill_after_first_cell(args, cache, out, N_CELLS)

    proc = _spawn(args, cache)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    reused = re.findall(r"reused finished cell (\S+)\.json", err)
    assert sorted(reused) == sorted(finished), err
    after = _finished(out)
    assert {k: after[k] for k in finished} == finished  # not rewritten
    assert len(after) == N_CELLS
    assert comparable(json.loads((out / "results.json").read_text())) == expected


def test_local_runtime_starts_and_stops_with_the_run(tmp_path: Path) -> None:
    cfg = BenchConfig(suites=["tiny"], detectors=["msp", "energy"])
    ref, _ = run_bench(cfg, out_dir=tmp_path / "ref", progress=False, log=lambda _: None)
    env = tiny_ray_env(tmp_path / "cache")  # a cache of its own: it trains its networks again
    executor = RayExecutor(runtime_env=env, num_cpus=2, object_store_memory=STORE)
    rows, _ = run_bench(cfg, out_dir=tmp_path / "ray", progress=False, log=lambda _: None, executor=executor)
    assert not ray.is_initialized()
    # Default resources: as many CPUs (torch threads) per task as this process uses, so the rows
    # equal the in-process run's as they are, with no thread setting.
    assert comparable(rows) == comparable(ref)
    assert same_scores(tmp_path / "ray", tmp_path / "ref")


def test_task_too_large_for_any_machine_is_refused(cluster: Cluster, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["bench", "--suite", "tiny", "--detectors", "msp", "--executor", "ray", "--out", str(out)]
    too_large = ["--resources", "train=cpus:1", "--resources", "score=cpus:2"]
    assert run([*args, "--address", cluster.address, *too_large, "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: a score task asks for 2 CPU(s)") and "lower --resources" in err[-1]
    assert not out.exists()
    assert not ray.is_initialized()


def test_unreachable_address_fails_fast_and_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    base = [
        "bench",
        "--suite",
        "tiny",
        "--detectors",
        "msp",
        "--executor",
        "ray",
        "--out",
        str(out),
        "--quiet",
    ]
    # A closed port, and an address that nothing on this network answers as a Ray head would.
    for address in (f"127.0.0.1:{_free_port()}", "10.255.255.1:6379"):
        t0 = time.monotonic()
        assert run([*base, "--address", address]) == 1
        assert time.monotonic() - t0 < 30
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and address in err[0], err
        assert "no Ray cluster reachable" in err[0] or "could not join the Ray cluster" in err[0]
        assert not out.exists()
        assert not ray.is_initialized()


def test_ray_missing_is_one_line_with_the_install_command(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    out = tmp_path / "out"
    assert run(["bench", "--suite", "tiny", "--executor", "ray", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --executor ray needs Ray, which is not installed: pip install 'oodlab[ray]'"]
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resources", "score=cpus:1"], "--address and --resources apply to --executor ray"),
        (["--address", "127.0.0.1:6379"], "--address and --resources apply to --executor ray"),
        (["--executor", "ray", "--resources", "fit=cpus:1"], "--resources takes KIND=cpus:N[,gpus:G]"),
        (["--executor", "ray", "--resources", "train=cpus:0"], "a task needs a whole number of CPUs >= 1"),
        (["--executor", "ray", "--resources", "train=cpus:1.5"], "CPUs must be a whole number"),
        (["--executor", "ray", "--resources", "train=mem:1"], "expected cpus:N and/or gpus:G"),
        (["--executor", "ray", "--address", "nohost"], "--address takes HOST:PORT"),
    ],
)
def test_bad_executor_options_are_one_line(tmp_path: Path, capsys, args, message) -> None:
    out = tmp_path / "out"
    assert run(["bench", "--suite", "tiny", "--out", str(out), "--quiet", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()
