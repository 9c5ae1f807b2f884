"""Overhead of `oodlab bench --executor ray` against the in-process executor, on one machine.

The grid: 2 suites (fmnist-vs-mnist, mnist-holdout0) × the 6 default detectors × seed 0 = 12
cells. Each run is the whole command (Python start, Ray's local runtime starting and stopping,
plots off) in a fresh ``$OODLAB_CACHE`` that shares only the converted data and, with
``--checkpoints DIR``, a copy of the LeNet checkpoints found there (then no run trains: the
pessimistic case for Ray, its fixed costs against the least work). Runs alternate between the
executors so that the machine's drift falls on both. Every run's rows are checked against the
first run's (timings and the executor aside).

    .venv/bin/python benchmarks/executors.py --rounds 2 [--checkpoints ~/.cache/oodlab/models]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OODLAB = str(Path(sys.executable).with_name("oodlab"))
GRID = ["bench", "--suite", "fmnist-vs-mnist,mnist-holdout0", "--detectors", "default"]
GRID += ["--quiet", "--no-plots"]
DATA = Path(os.environ.get("OODLAB_CACHE", Path.home() / ".cache" / "oodlab")) / "data"


def fresh_cache(root: Path, models: Path | None) -> Path:
    cache = Path(tempfile.mkdtemp(dir=root))
    (cache / "data").symlink_to(DATA)
    if models is not None:
        (cache / "models").mkdir()
        for f in models.glob("lenet-*"):
            shutil.copy(f, cache / "models" / f.name)
    return cache


def run(executor: str, root: Path, models: Path | None) -> tuple[float, list[dict], Path]:
    cache = fresh_cache(root, models)
    out = cache / "out"
    cmd = [OODLAB, *GRID, "--executor", executor, "--out", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, "OODLAB_CACHE": str(cache)}, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads((out / "results.json").read_text()), cache


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("fit_seconds", "score_seconds", "config")} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--checkpoints", type=Path, help="copy the LeNet checkpoints of this folder to each run")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="oodlab-executors-"))
    models = args.checkpoints
    times: dict[str, list[float]] = {"in-process": [], "ray": []}
    reference = None
    for i in range(args.rounds):
        order = ("in-process", "ray") if i % 2 == 0 else ("ray", "in-process")
        for executor in order:
            seconds, rows, _ = run(executor, root, models)
            times[executor].append(seconds)
            assert len(rows) == 12 * 3, len(rows)
            if reference is None:
                reference = comparable(rows)
            assert comparable(rows) == reference, f"{executor} rows differ"
            print(f"round {i + 1}: {executor:10s} {seconds:7.1f} s", flush=True)
    for i, (a, b) in enumerate(zip(times["in-process"], times["ray"], strict=True)):
        print(f"round {i + 1}: ray / in-process = {b / a:.2f}")
    total = sum(times["ray"]) / sum(times["in-process"])
    print(f"all rounds: ray / in-process = {total:.2f} (rows identical in every run)")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
