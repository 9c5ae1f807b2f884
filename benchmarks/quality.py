"""Quality benchmark: every detector on the three suites, both tuning protocols, several seeds.

Runs ``oodlab bench`` once per (suite, protocol, seed), each into its own resumable folder —
models are trained once per seed and cached, so the second protocol reuses them; a folder that
already holds a finished run is resumed at no cost — then writes mean ± std tables (over seeds) and the gap
between each detector's blind figure and its paper-protocol figure. From the repository root:

    .venv/bin/python benchmarks/quality.py      # 3 suites × 2 protocols × seeds 0,1,2
    .venv/bin/python benchmarks/quality.py --suites fmnist-vs-mnist --seeds 0 --protocols blind
    .venv/bin/python benchmarks/quality.py --aggregate-only              # re-tabulate saved runs
    .venv/bin/python benchmarks/quality.py --recipe resnet18 --protocols blind \
        --root benchmarks/results/quality-resnet18 --out benchmarks/results/quality-resnet18.md
    .venv/bin/python benchmarks/quality.py --recipe resnet18 --epochs 8 ...   # longer training

Output: ``benchmarks/results/quality.md`` (and the raw runs under ``benchmarks/results/quality/``).
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

SUITES = ("fmnist-vs-mnist", "mnist-holdout0", "mnist-vs-fmnist")
PROTOCOLS = ("blind", "paper")
#: The OOD set each suite is judged on (the real-image one; noise sets are easy for every detector).
MAIN_OOD = {"fmnist-vs-mnist": "mnist", "mnist-holdout0": "mnist-0", "mnist-vs-fmnist": "fashion_mnist"}


def run_dir(root: Path, suite: str, protocol: str, seed: int) -> Path:
    return root / f"{suite}-{protocol}-seed{seed}"


def run(
    root: Path, suite: str, protocol: str, seed: int, detectors: str, recipe: str, epochs: int | None
) -> float:
    out = run_dir(root, suite, protocol, seed)
    cmd = [
        sys.executable,
        "-m",
        "oodlab.cli",
        "bench",
        "--suite",
        suite,
        "--protocol",
        protocol,
        "--seed",
        str(seed),
        "--detectors",
        detectors,
        "--recipe",
        recipe,
        "--out",
        str(out),
        "--quiet",
        *(["--epochs", str(epochs)] if epochs is not None else []),
    ]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def mean_std(values: list[float], sign: bool = False) -> str:
    a = 100 * np.asarray(values)
    m = f"{a.mean():+.2f}" if sign else f"{a.mean():.2f}"
    return f"{m} ± {a.std(ddof=1):.2f}" if len(a) > 1 else m


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], dict[str, list[float]]]:
    groups: dict[tuple[str, str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        g = groups[(r["suite"], r["protocol"], r["detector"], r["ood"])]
        for m in ("auroc", "fpr95", "aupr_in", "aupr_out", "detection_error", "id_accuracy"):
            g[m].append(r[m])
        g["seed"].append(r["seed"])
        g["fit_seconds"].append(r.get("fit_seconds", float("nan")))
    return groups


def paired_diffs(blind: dict[str, list[float]], paper: dict[str, list[float]], metric: str) -> list[float]:
    """``blind − paper`` of ``metric`` for every seed run under both protocols."""
    b = dict(zip(blind["seed"], blind[metric], strict=True))
    p = dict(zip(paper["seed"], paper[metric], strict=True))
    return [b[s] - p[s] for s in sorted(b.keys() & p.keys())]


def tables(rows: list[dict[str, Any]]) -> str:
    groups = aggregate(rows)
    recipes = sorted({r["config"].get("recipe", "lenet") for r in rows})
    lines = [
        "# Quality benchmark" + ("" if recipes == ["lenet"] else f" — recipe {', '.join(recipes)}"),
        "",
        "AUROC and FPR@95 in percent, mean ± std over the seeds listed; ID positive. `blind` tunes on ID "
        "validation + synthetic OOD validation only; `paper` tunes on 500 + 500 images cut from each "
        "test set (FSSD reference protocol, for comparison with published tables).",
        "",
    ]
    suites = sorted({k[0] for k in groups}, key=lambda s: SUITES.index(s) if s in SUITES else 99)
    for suite in suites:
        keys = [k for k in groups if k[0] == suite]
        oods = sorted({k[3] for k in keys}, key=lambda o: (o != MAIN_OOD.get(suite), o))
        detectors = sorted({k[2] for k in keys})
        protocols = [p for p in PROTOCOLS if any(k[1] == p for k in keys)]
        acc = [v for k, g in groups.items() if k[0] == suite for v in g["id_accuracy"]]
        seeds = {
            p: sorted({s for k, g in groups.items() if k[0] == suite and k[1] == p for s in g["seed"]})
            for p in protocols
        }
        lines += [
            f"## {suite}",
            "",
            "Seeds: "
            + "; ".join(f"{p} {seeds[p]}" for p in protocols)
            + f". Model ID test accuracy {mean_std(sorted(set(acc)))}%.",
            "",
        ]
        header = ["detector"] + [
            f"{p} {o} {m}" for o in oods[:1] for p in protocols for m in ("AUROC", "FPR@95")
        ]
        header += [f"blind {o} AUROC" for o in oods[1:]]
        body = []
        for d in detectors:
            row = [d]
            for o in oods[:1]:
                for p in protocols:
                    g = groups.get((suite, p, d, o))
                    row += [mean_std(g["auroc"]), mean_std(g["fpr95"])] if g else ["", ""]
            for o in oods[1:]:
                g = groups.get((suite, "blind", d, o))
                row.append(mean_std(g["auroc"]) if g else "")
            body.append(row)
        lines += [tabulate(body, headers=header, tablefmt="github"), ""]
        if set(protocols) == set(PROTOCOLS):
            main = oods[0]
            gaps = []
            for d in detectors:
                b, p = groups.get((suite, "blind", d, main)), groups.get((suite, "paper", d, main))
                if b and p:
                    # Paired by seed: the same trained model under both protocols.
                    da, df = paired_diffs(b, p, "auroc"), paired_diffs(b, p, "fpr95")
                    if da:
                        gaps.append([d, mean_std(da, sign=True), mean_std(df, sign=True)])
            paired = sorted(set(seeds["blind"]) & set(seeds["paper"]))
            lines += [
                f"Blind minus paper on `{main}`, paired by seed (seeds {paired}; AUROC, FPR@95 in points):",
                "",
                tabulate(
                    gaps, headers=["detector", "ΔAUROC", "ΔFPR@95"], tablefmt="github", disable_numparse=True
                ),
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--detectors", default="all")
    ap.add_argument("--recipe", default="lenet", help="training recipe (oodlab list recipes)")
    ap.add_argument("--epochs", type=int, default=None, help="train this many epochs instead of the recipe's")
    ap.add_argument("--root", type=Path, default=Path("benchmarks/results/quality"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/quality.md"))
    ap.add_argument("--aggregate-only", action="store_true")
    args = ap.parse_args(argv)
    walls = {}
    if not args.aggregate_only:
        for seed in (int(s) for s in args.seeds.split(",")):
            for suite in args.suites.split(","):
                for protocol in args.protocols.split(","):
                    key = f"{suite}/{protocol}/seed {seed}"
                    walls[key] = run(
                        args.root, suite, protocol, seed, args.detectors, args.recipe, args.epochs
                    )
    rows = []
    for path in sorted(args.root.glob("*-seed*/results.json")):
        rows += json.loads(path.read_text())
    text = tables(rows)
    if walls:
        text += (
            "\nWall time of each run of this invocation (a resumed run costs nothing; models "
            "are cached after the first protocol): "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in walls.items())
            + "\n"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
