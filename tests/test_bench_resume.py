"""Resumable benchmarks: a run killed at a random point and restarted loses and recomputes nothing.

This module also registers the tiny suites other bench tests use, and runs the CLI on them in a
subprocess (a subprocess cannot see pytest's monkeypatches): ``python -m tests.test_bench_resume
ARGS`` patches the data loader and the suite registry, then calls :func:`oodlab.cli.main`.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from oodlab.bench import suites as suites_mod
from oodlab.bench.suites import Suite
from oodlab.cli import main
from oodlab.data import ImageSet
from oodlab.training import TrainConfig

try:
    from .conftest import dark_images, pattern_images
except ImportError:  # run as a script
    from tests.conftest import dark_images, pattern_images

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("fit_seconds", "score_seconds")
MLP = TrainConfig(
    model="mlp",
    model_kwargs={"hidden": [32, 16]},
    optimizer="adam",
    lr=1e-2,
    schedule="none",
    epochs=2,
    batch_size=32,
)
TINY_SUITES = {
    "tiny": Suite(
        name="tiny",
        description="test suite",
        id_dataset="patterns",
        ood_datasets={"dark": "dark"},
        train=MLP,
        n_val=100,
        n_ood_val=100,
    ),
    "tiny-corruptions": Suite(
        name="tiny-corruptions",
        description="test corruption suite",
        id_dataset="patterns",
        synthetic=(),
        train=MLP,
        n_val=100,
        n_ood_val=100,
        corruptions=("blur", "contrast", "invert"),
        n_id_test=200,
    ),
}


def _fake_data() -> dict[tuple[str, str], ImageSet]:
    return {
        ("patterns", "train"): pattern_images(700, seed=10),
        ("patterns", "test"): pattern_images(300, seed=11),
        ("dark", "test"): dark_images(3100, seed=12),
    }


def install_tiny_suites(
    setattr_: Callable[[Any, str, Any], None], setitem: Callable[[Any, str, Any], None]
) -> None:
    """Register the tiny suites and their fake data (through ``monkeypatch`` or plain assignment)."""
    fake = _fake_data()
    setattr_(suites_mod, "load_dataset", lambda name, split: fake[(name, split)])
    for name, suite in TINY_SUITES.items():
        setitem(suites_mod.SUITES, name, suite)


@pytest.fixture()
def tiny(monkeypatch, tmp_path) -> Path:
    """The tiny suites registered, caches isolated; returns the cache folder."""
    install_tiny_suites(monkeypatch.setattr, monkeypatch.setitem)
    monkeypatch.setenv("OODLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without the wall-clock timings (which no two runs share)."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def install_tiny_suites_here() -> None:
    """Register the tiny suites in this process (a Ray worker's setup hook: workers see no monkeypatch).

    With ``OODLAB_TEST_CELL_DELAY`` set, every cell task also sleeps that long first, so that a
    test can kill the worker running it.
    """
    install_tiny_suites(setattr, lambda d, k, v: d.__setitem__(k, v))
    delay = float(os.environ.get("OODLAB_TEST_CELL_DELAY", "0"))
    if delay:
        from oodlab.bench import runner

        run_cell = runner.run_cell

        def slow_cell(*a: Any, **kw: Any) -> Any:
            time.sleep(delay)
            return run_cell(*a, **kw)

        runner.run_cell = slow_cell  # type: ignore[assignment]


def tiny_ray_env(cache: Path, cell_delay: float = 0.0) -> dict[str, Any]:
    """Ray's runtime environment for runs on the tiny suites: every worker registers them first
    and keeps its checkpoints and model outputs in ``cache``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, "OODLAB_CACHE": str(cache), "OODLAB_TEST_CELL_DELAY": str(cell_delay)}
    return {"worker_process_setup_hook": "tests.test_bench_resume.install_tiny_suites_here", "env_vars": env}


def _subprocess_main() -> None:
    install_tiny_suites(setattr, lambda d, k, v: d.__setitem__(k, v))
    if "--executor" in sys.argv:  # Ray workers register the tiny suites too, and share OODLAB_CACHE
        from oodlab.bench import executors

        create = executors.create_executor

        def create_for_tiny(*args: Any) -> Any:
            executor = create(*args)
            if isinstance(executor, executors.RayExecutor):
                executor.runtime_env = tiny_ray_env(Path(os.environ["OODLAB_CACHE"]))
            return executor

        executors.create_executor = create_for_tiny
    delay = float(os.environ.get("OODLAB_TEST_CELL_DELAY", "0"))
    if delay:  # slow each cell down so that a test can kill the run between cells
        from oodlab.bench.cells import CellStore

        write = CellStore.write

        def slow_write(self: CellStore, *a: Any, **kw: Any) -> Path:
            time.sleep(delay)
            return write(self, *a, **kw)

        CellStore.write = slow_write  # type: ignore[method-assign]
    main(sys.argv[1:])


def _spawn(args: list[str], cache: Path, delay: float = 0.0) -> subprocess.Popen[str]:
    env = {**os.environ, "OODLAB_CACHE": str(cache), "OODLAB_TEST_CELL_DELAY": str(delay)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.test_bench_resume", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


ARGS = ["bench", "--suite", "tiny", "--seeds", "0,1", "--detectors", "msp,energy,temperature,maxlogit"]
N_CELLS = 2 * 4


def _finished(out: Path) -> dict[str, tuple[int, int, int, int]]:
    """Finished cells (their .json exists): stem → (inode, mtime) of the .json and the .npz."""
    found = {}
    for js in sorted((out / "cells").rglob("*.json")):
        npz = js.with_suffix(".npz")
        a, b = js.stat(), npz.stat()
        found[str(js.relative_to(out).with_suffix(""))] = (a.st_ino, a.st_mtime_ns, b.st_ino, b.st_mtime_ns)
    return found


def kill_after_first_cell(
    args: list[str], cache: Path, out: Path, n_cells: int, timeout: float = 180.0
) -> dict[str, tuple[int, int, int, int]]:
    """Run ``oodlab ARGS`` (cells written slowly), SIGKILL it at a random point after its first
    cell file appears, and return the finished cells (between one and all but one)."""
    proc = _spawn(args, cache, delay=0.4)
    deadline = time.monotonic() + timeout
    while not list((out / "cells").rglob("*.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no cell was written in {timeout:.0f} s"
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.6))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    finished = _finished(out)
    assert 1 <= len(finished) < n_cells, "kill the run between its first and its last cell"
    return finished


@pytest.mark.slow
def test_killed_run_resumes_without_losing_or_redoing_cells(tiny: Path, tmp_path: Path) -> None:
    # The reference: one uninterrupted run.
    ref = tmp_path / "ref"
    assert run([*ARGS, "--out", str(ref), "--quiet", "--no-plots"]) == 0
    expected = comparable(json.loads((ref / "results.json").read_text()))
    assert len(expected) == N_CELLS * 3

    # A run killed with SIGKILL at a random point after its first cell file appears.
    out = tmp_path / "out"
    finished = kill_after_first_cell([*ARGS, "--out", str(out), "--quiet", "--no-plots"], tiny, out, N_CELLS)
    assert not (out / "results.json").exists()

    # Restarted with the same arguments: the finished cells are reused, untouched; the rest computed.
    proc = _spawn([*ARGS, "--out", str(out), "--quiet", "--no-plots"], tiny)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    reused = re.findall(r"reused finished cell (\S+)\.json", err)
    assert sorted(reused) == sorted(finished), err
    computed = re.findall(r"^\[tiny seed \d\] \w+: dark AUROC", err, flags=re.MULTILINE)
    assert len(computed) == N_CELLS - len(finished), err
    after = _finished(out)
    assert {k: after[k] for k in finished} == finished  # same inode, same mtime: not rewritten
    assert len(after) == N_CELLS
    assert comparable(json.loads((out / "results.json").read_text())) == expected
    assert not list((out / "cells").rglob("*.tmp"))


def test_damaged_cell_is_recomputed_and_said_so(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = [
        "bench",
        "--suite",
        "tiny",
        "--detectors",
        "msp,energy",
        "--out",
        str(out),
        "--quiet",
        "--no-plots",
    ]
    assert run(args) == 0
    expected = comparable(json.loads((out / "results.json").read_text()))
    cells = sorted((out / "cells").rglob("*.json"))
    cells[0].write_text(cells[0].read_text()[:50])  # truncated JSON
    npz = cells[1].with_suffix(".npz")
    npz.write_bytes(npz.read_bytes()[:100])  # truncated scores
    capsys.readouterr()
    assert run(args) == 0
    err = capsys.readouterr().err
    assert f"cell file {cells[0]} is truncated or unreadable" in err and "recomputing it" in err
    assert f"scores file {npz} is truncated" in err
    assert comparable(json.loads((out / "results.json").read_text())) == expected


def test_other_configuration_is_refused_until_overwrite(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    base = ["bench", "--suite", "tiny", "--out", str(out), "--quiet", "--no-plots"]
    assert run([*base, "--detectors", "msp"]) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert run([*base, "--detectors", "msp,energy"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert "different configuration (differs in: detector_params, detectors)" in err[-1]
    assert "--overwrite" in err[-1] and "another --out" in err[-1]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # untouched
    assert run([*base, "--detectors", "msp,energy", "--overwrite"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert {r["detector"] for r in rows} == {"msp", "energy"}
    assert len(list((out / "cells").rglob("*.json"))) == 2  # the old msp cell went with --overwrite
    # A damaged run.json is a one-line error naming it; so is a folder of foreign results.
    (out / "run.json").write_text('{"config": ')
    capsys.readouterr()
    assert run([*base, "--detectors", "msp,energy"]) == 1
    assert f"{out / 'run.json'} is truncated or unreadable" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text("[]")
    assert run(["bench", "--suite", "tiny", "--out", str(other), "--quiet"]) == 1
    assert "pick another --out or pass --overwrite" in capsys.readouterr().err
    assert (other / "results.json").read_text() == "[]"


if __name__ == "__main__":
    _subprocess_main()
