"""One resumable ``oodlab bench`` run as a subprocess: the command every benchmark script builds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def run_bench(out: Path, *args: str, plots: bool = False) -> float:
    """Run ``oodlab bench ARGS --out OUT --quiet`` (``--no-plots`` unless ``plots``) to completion.

    The process is this interpreter's (``python -m oodlab.cli``), so the benchmark measures the
    checkout it runs from. A failed run raises ``CalledProcessError``; a finished folder is
    resumed, not recomputed.

    Returns:
        The run's wall time in seconds.
    """
    cmd = [sys.executable, "-m", "oodlab.cli", "bench", *args, "--out", str(out), "--quiet"]
    if not plots:
        cmd.append("--no-plots")
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0
