"""BIN, BINC, VIB and VIBY against MSP, temperature scaling and ODIN of the same base network.

Runs ``oodlab bench`` once per (suite, seed), blind protocol (nothing is tuned on an OOD test
set), on ``fmnist-vs-mnist``, ``mnist-vs-fmnist`` and ``mnist-holdout0``, each against its
real-image OOD set and the Gaussian set, with the detectors ``msp``, ``temperature``, ``odin``
(the suite's base network) and the methods ``bin``, ``binc``, ``vib``, ``viby-1``, ``viby-2``
(each trained from scratch with the suite's own recipe; ``viby-1``/``viby-2`` share one
network). Every run is resumable and every network cached. Then it writes mean ± std tables
over the seeds found: FPR@95, detection error, AUROC, AUPR-In, AUPR-Out, and ID test accuracy,
and checks the survey's claims against them. From the repository root:

    nice -n 15 .venv/bin/python benchmarks/survey.py                      # seeds 0,1,2, LeNet-5
    .venv/bin/python benchmarks/survey.py --seeds 0 --recipe lenet        # one seed, the suites' LeNet
    .venv/bin/python benchmarks/survey.py --aggregate-only                # re-tabulate saved runs

The default recipe is ``lenet5`` (LeNet-5, 5 epochs): on the shared 2-core machine one
training step of the suites' own LeNet (1.2M parameters) costs about 9 times the CPU time of
LeNet-5's. On a machine shared with other jobs, set ``OMP_NUM_THREADS=1``: there a two-thread
PyTorch spent 28 times the CPU time per LeNet-5 step (its threads spin while waiting). Output:
``benchmarks/results/survey-RECIPE.md`` and ``.json``; each run's ``results.json``,
``results.md`` and ``models.json`` under ``benchmarks/results/survey/RECIPE/``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from _bench_cli import run_bench
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


def run(root: Path, suite: str, seed: int, detectors: str, recipe: str) -> float:
    """One resumable ``oodlab bench`` run; returns its wall time."""
    args = ["--suite", suite, "--seed", str(seed), "--detectors", detectors, "--recipe", recipe]
    seconds = run_bench(run_dir(root, suite, seed), *args)
    print(f"done in {seconds:.0f} s", flush=True)
    return seconds


def collect(
    root: Path, suites: list[str], seeds: list[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every saved row and every network summary (``models.json``) of the runs that exist."""
    rows: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    for suite in suites:
        for seed in seeds:
            d = run_dir(root, suite, seed)
            if (d / "results.json").exists():
                rows += json.loads((d / "results.json").read_text())
            if (d / "models.json").exists():
                models += json.loads((d / "models.json").read_text())
    return rows, models


def fmt(values: list[float], scale: float = 100.0) -> str:
    a = scale * np.asarray(values, dtype=float)
    if len(a) == 0:
        return "—"
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if len(a) > 1 else f"{a.mean():.2f}"


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def by_cell(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """Rows grouped by (suite, OOD set, detector), sorted by seed."""
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[(r["suite"], r["ood"], r["detector"])].append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in out.items()}


def verdict(ok: list[bool]) -> str:
    if not ok:
        return "not measured"
    if all(ok):
        return f"**holds** ({len(ok)} of {len(ok)})"
    if not any(ok):
        return f"**does not hold** (0 of {len(ok)})"
    return f"**holds in {sum(ok)} of {len(ok)}**"


def tables(rows: list[dict[str, Any]], suites: list[str], recipe: str) -> tuple[str, dict[str, Any]]:
    cells = by_cell(rows)
    present = [s for s in suites if any(k[0] == s for k in cells)]
    summary: dict[str, Any] = {"metrics": {}, "accuracy": {}, "claims": {}, "targets": {}}
    lines = [
        "# BIN, BINC, VIB and VIBY against MSP, temperature scaling and ODIN",
        "",
        "Blind protocol: `temperature` and `odin` tune T (and ε) on ID validation images and the suite's "
        "synthetic OOD validation set, never on an OOD test set; the methods tune nothing. `msp`, "
        f"`temperature` and `odin` score the suite's base network (recipe `{recipe}`); "
        "`bin`, `binc`, `vib` and `viby` are each "
        "trained from scratch with the same recipe (network, optimiser, schedule, epochs, seed) and their "
        "own objective and head (`viby-1` and `viby-2` are two scores of one network). Percent, mean ± std "
        "(ddof 1) over the seeds in each heading. Made by `benchmarks/survey.py`.",
        "",
    ]
    missing = {s: [d for d in DETECTORS if (s, REAL_OOD[s], d) not in cells] for s in suites}
    missing = {s: ds for s, ds in missing.items() if ds}
    if missing:
        lines += [
            "**Incomplete**: no results yet for "
            + "; ".join(f"{s}: {', '.join(f'`{d}`' for d in ds)}" for s, ds in missing.items())
            + " (runs not finished; rerun the command to resume them).",
            "",
        ]
    for suite in present:
        seeds = sorted({r["seed"] for r in rows if r["suite"] == suite})
        for ood in (REAL_OOD[suite], GAUSSIAN):
            body = []
            for d in DETECTORS:
                rs = cells.get((suite, ood, d), [])
                if not rs:
                    continue
                body.append([f"`{d}`", *(fmt([r[m] for r in rs]) for m, _ in METRICS)])
                summary["metrics"].setdefault(suite, {}).setdefault(ood, {})[d] = {
                    m: [r[m] for r in rs] for m, _ in METRICS
                } | {"seeds": [r["seed"] for r in rs]}
            lines += [
                f"## {suite}: OOD set `{ood}` (seeds {', '.join(map(str, seeds))})",
                "",
                tabulate(body, ["detector", *(h for _, h in METRICS)], tablefmt="github"),
                "",
            ]
    # Accuracy: of the base network (the msp rows) and of each method's network.
    lines += ["## ID test accuracy", ""]
    acc_body = []
    for suite in present:
        real = REAL_OOD[suite]
        base = [r["id_accuracy"] for r in cells.get((suite, real, "msp"), [])]
        row = [suite, fmt(base)]
        summary["accuracy"][suite] = {"base": base}
        for d in ("bin", "binc", "vib", "viby-1"):
            acc = [r["id_accuracy"] for r in cells.get((suite, real, d), [])]
            summary["accuracy"][suite][d] = acc
            delta = 100 * (mean(acc) - mean(base)) if acc and base else float("nan")
            row.append(f"{fmt(acc)} ({delta:+.2f})" if acc else "—")
        acc_body.append(row)
    lines += [
        tabulate(
            acc_body,
            ["suite", "base (msp, temperature, odin)", "bin", "binc", "vib", "viby"],
            tablefmt="github",
        ),
        "",
        "In parentheses: the difference from the base network, in points (mean over seeds).",
        "",
    ]
    return "\n".join(lines) + "\n", summary


def claims(rows: list[dict[str, Any]], suites: list[str], summary: dict[str, Any]) -> str:
    """The survey's claims and the issue's targets, checked on the means over seeds.

    A comparison is made only where every detector it names has results; the rest are counted
    as not measured, never as failures.
    """
    cells = by_cell(rows)
    pairs = [(s, o) for s in suites for o in (REAL_OOD[s], GAUSSIAN) if (s, o, "msp") in cells]
    run_suites = list(dict.fromkeys(s for s, _ in pairs))

    def has(suite: str, ood: str, *dets: str) -> bool:
        return all((suite, ood, d) in cells for d in dets)

    def m(suite: str, ood: str, det: str, metric: str) -> float:
        return mean([r[metric] for r in cells[(suite, ood, det)]])

    def acc(suite: str, det: str) -> float:
        return mean([r["id_accuracy"] for r in cells[(suite, REAL_OOD[suite], det)]])

    def delta(det: str) -> dict[str, float]:
        return {s: 100 * (acc(s, det) - acc(s, "msp")) for s in run_suites if has(s, REAL_OOD[s], det)}

    def listed(values: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:+.2f}" for k, v in values.items()) or "not measured"

    free = ("auroc", "aupr_in", "aupr_out")
    out = ["## The survey's claims, here", ""]
    d_bin, d_binc = delta("bin"), delta("binc")
    out.append(
        f"1. *BIN loses about 1.2 points of accuracy, BINC keeps it.* BIN − base: {listed(d_bin)}; "
        f"BINC − base: {listed(d_binc)}. "
        f"BIN loses ≥ 0.6 points: {verdict([v <= -0.6 for v in d_bin.values()])}; "
        f"BINC within 0.5 points of base or better: {verdict([v >= -0.5 for v in d_binc.values()])}."
    )

    def better(a: str, b: str) -> list[bool]:
        return [m(s, o, a, k) >= m(s, o, b, k) for s, o in pairs if has(s, o, a, b) for k in free]

    checks = {
        "2. *BINC ≥ BIN* (AUROC, AUPR-In, AUPR-Out; per suite × OOD set × metric)": better("binc", "bin"),
        "3a. *VIBY ≥ VIB on the threshold-free metrics*, VIBY-I": better("viby-1", "vib"),
        "3b. the same, VIBY-II": better("viby-2", "vib"),
        "4. *VIBY-II ≥ VIBY-I* (AUROC, AUPR-In, AUPR-Out)": better("viby-2", "viby-1"),
        "5. *ODIN is the best of them* (highest AUROC of all eight, per suite × OOD set)": [
            all(m(s, o, "odin", "auroc") >= m(s, o, d, "auroc") for d in DETECTORS)
            for s, o in pairs
            if has(s, o, *DETECTORS)
        ],
    }
    for label, ok in checks.items():
        out.append(f"{label}: {verdict(ok)}.")
        summary["claims"][label] = ok
    best = {
        (s, o): max((d for d in DETECTORS if has(s, o, d)), key=lambda d: m(s, o, d, "auroc"))
        for s, o in pairs
    }
    out.append(
        "   Highest mean AUROC among the detectors with results: "
        + "; ".join(f"{s} / {o}: `{d}`" for (s, o), d in best.items())
        + "."
    )
    summary["claims"]["best_auroc"] = {f"{s}/{o}": d for (s, o), d in best.items()}
    out += ["", "## Targets of the issue", ""]
    g = {s: 100 * m(s, GAUSSIAN, "viby-2", "auroc") for s in run_suites if has(s, GAUSSIAN, "viby-2")}
    if any(v < 99.4 for v in g.values()):
        verdict_g = "not met"
    else:
        verdict_g = "met" if len(g) == len(SUITES) else "not measured in every suite"
    out.append(
        "- VIBY-II AUROC ≥ 99.4 on the Gaussian set of every suite: "
        + (", ".join(f"{s} {v:.2f}" for s, v in g.items()) or "not measured")
        + f" → {verdict_g}."
    )
    summary["targets"]["viby2_gaussian_auroc"] = g
    if has("fmnist-vs-mnist", "mnist", "msp"):
        msp = 100 * m("fmnist-vs-mnist", "mnist", "msp", "auroc")
        gains = {
            d: 100 * m("fmnist-vs-mnist", "mnist", d, "auroc") - msp
            for d in METHODS
            if has("fmnist-vs-mnist", "mnist", d)
        }
        verdict_gain = (
            "met"
            if any(v >= 5 for v in gains.values())
            else "not met"
            if len(gains) == len(METHODS)
            else "not measured"
        )
        out.append(
            f"- One of the four beats MSP ({msp:.2f}) on fmnist-vs-mnist's MNIST by ≥ 5 AUROC points: "
            + (", ".join(f"`{d}` {v:+.2f}" for d, v in gains.items()) or "no method measured")
            + f" → {verdict_gain}."
        )
        summary["targets"]["gain_over_msp_fmnist_vs_mnist"] = gains
    within = {(s, d): v for d in ("bin", "binc", "vib", "viby-1") for s, v in delta(d).items()}
    bad = {k: v for k, v in within.items() if abs(v) > 1.5}
    out.append(
        f"- Each method's ID accuracy within 1.5 points of the base network's ({len(within)} suite × method "
        "pairs measured): "
        + (
            "not met for " + ", ".join(f"{d} on {s} ({v:+.2f})" for (s, d), v in bad.items())
            if bad
            else "met"
            if len(within) == 4 * len(SUITES)
            else "not measured for every suite and method"
        )
        + "."
    )
    summary["targets"]["accuracy_outside_1.5"] = {f"{s}/{d}": v for (s, d), v in bad.items()}
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--detectors", default=",".join(DETECTORS))
    ap.add_argument("--recipe", default="lenet5", help="the suites' network recipe (oodlab list recipes)")
    ap.add_argument("--root", type=Path, default=None, help="default: benchmarks/results/survey/RECIPE")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/survey-RECIPE.md")
    ap.add_argument("--aggregate-only", action="store_true", help="tabulate the saved runs")
    args = ap.parse_args()
    suites = [s for s in args.suites.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    args.root = args.root or Path("benchmarks/results/survey") / args.recipe
    args.out = args.out or Path(f"benchmarks/results/survey-{args.recipe}.md")
    if not args.aggregate_only:
        for seed in seeds:
            for suite in suites:
                run(args.root, suite, seed, args.detectors, args.recipe)
    rows, _ = collect(args.root, suites, seeds)
    text, summary = tables(rows, suites, args.recipe)
    text += "\n" + claims(rows, suites, summary)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(text)


if __name__ == "__main__":
    main()
