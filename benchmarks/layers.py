"""The layer-study benchmark: ``oodlab layers`` on fmnist-vs-mnist, mnist-vs-fmnist and
mnist-holdout0 for seeds 0-2, into ``benchmarks/results/layers`` (cells, layers.md, plots,
report.html). Finished (suite, seed) cells are reused, so a killed run resumes; extra arguments
are passed on (``--seeds 0`` for one seed, ``--no-plots``).

Run: ``python benchmarks/layers.py`` (about 15 minutes of two CPU cores per suite and seed).
"""

from __future__ import annotations

import sys

from oodlab.cli import main

if __name__ == "__main__":
    main(["layers", "--seeds", "0,1,2", "--out", "benchmarks/results/layers", *sys.argv[1:]])
