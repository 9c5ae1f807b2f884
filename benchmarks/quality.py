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
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from _bench_cli import run_bench
from tabulate import tabulate

from oodlab.io import atomic_write_text

SUITES = ("fmnist-vs-mnist", "mnist-holdout0", "mnist-vs-fmnist")
PROTOCOLS = ("blind", "paper")
#: The OOD set each suite is judged on (the real-image one; noise sets are easy for every detector).
MAIN_OOD = {"fmnist-vs-mnist": "mnist", "mnist-holdout0": "mnist-0", "mnist-vs-fmnist": "fashion_mnist"}


def run_dir(root: Path, suite: str, protocol: str, seed: int) -> Path:
    return root / f"{suite}-{protocol}-seed{seed}"


def run(
    root: Path, suite: str, protocol: str, seed: int, detectors: str, recipe: str, epochs: int | None
) -> float:
    args = ["--suite", suite, "--protocol", protocol, "--seed", str(seed), "--detectors", detectors]
    args += ["--recipe", recipe, *(["--epochs", str(epochs)] if epochs is not None else [])]
    return run_bench(run_dir(root, suite, protocol, seed), *args, plots=True)


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


def ensemble_table(rows: list[dict[str, Any]]) -> str:
    """Each ensemble beside its best member on each real OOD set (blind rows that record members).

    The best member is the one with the highest *mean over seeds* test AUROC; the ensemble meets
    the bar when its own mean is at least that.
    """
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get("members") and r["ood"] not in ("gaussian", "uniform"):
            groups[(r["suite"], r["protocol"], r["detector"], r["ood"])].append(r)
    if not groups:
        return ""
    body = []
    for (suite, protocol, det, ood), g in sorted(groups.items()):
        taps = list(g[0]["members"])
        means = {t: float(np.mean([r["members"][t]["auroc"] for r in g])) for t in taps}
        best = max(taps, key=lambda t: means[t])
        ens = [r["auroc"] for r in g]
        chosen = sorted({r["tuning"]["chosen"].get("combination", "logistic") for r in g})
        body.append(
            [
                suite,
                protocol,
                ood,
                det,
                mean_std(ens),
                f"{best} {mean_std([r['members'][best]['auroc'] for r in g])}",
                " / ".join(f"{t} {100 * means[t]:.2f}" for t in taps),
                ", ".join(chosen),
                "yes" if np.mean(ens) >= means[best] else "no",
            ]
        )
    header = [
        "suite",
        "protocol",
        "OOD",
        "ensemble",
        "AUROC",
        "best member",
        "members (mean)",
        "chose",
        "≥ best",
    ]
    return "\n".join(
        [
            "## Ensembles beside their members",
            "",
            "Each member is the ensemble's own single-tap score (same fit, same ε or perturbation), on the "
            "same test images; mean ± std over the seeds.",
            "",
            tabulate(body, headers=header, tablefmt="github", disable_numparse=True),
            "",
        ]
    )


def selection_table(rows: list[dict[str, Any]]) -> str:
    """The validation-chosen detector beside the test-best, per (suite, seed), on the real OOD set."""
    from oodlab.bench.selection import select_by_validation

    rows = [r for r in rows if r.get("val_auroc") is not None and r["protocol"] == "blind"]
    if not rows:
        return ""
    picks = [p for p in select_by_validation(rows) if p["ood"] == MAIN_OOD.get(p["suite"])]
    body = [
        [
            p["suite"],
            p["seed"],
            p["chosen"],
            f"{100 * p['chosen_auroc']:.2f} / {100 * p['chosen_fpr95']:.2f}",
            p["test_best"],
            f"{100 * p['best_auroc']:.2f} / {100 * p['best_fpr95']:.2f}",
            f"{100 * p['gap']:.2f}",
            f"{p['spearman']:.2f}",
        ]
        for p in picks
    ]
    within = sum(p["gap"] <= 0.003 for p in picks)
    rho = [p["spearman"] for p in picks if p["spearman"] == p["spearman"]]
    others = []
    for criterion in ("val_auroc", "val_worst_auroc"):
        alt = [p for p in select_by_validation(rows, criterion) if p["ood"] == MAIN_OOD.get(p["suite"])]
        alt_rho = [p["spearman"] for p in alt if p["spearman"] == p["spearman"]]
        others.append(
            f"ranked by `{criterion}` instead: within 0.3 in {sum(p['gap'] <= 0.003 for p in alt)} of "
            f"{len(alt)}, Spearman mean " + (f"{np.mean(alt_rho):.2f}" if alt_rho else "–")
        )
    header = [
        "suite",
        "seed",
        "chosen on validation",
        "AUROC / FPR@95",
        "test-best",
        "AUROC / FPR@95",
        "gap",
        "Spearman",
    ]
    return "\n".join(
        [
            "## Blind selection (`--detectors auto`)",
            "",
            "Per suite and seed, the detector with the highest AUROC on ID validation vs the near-OOD "
            "kinds of the synthetic OOD validation set (patch-shuffled images, class chimeras), its test "
            "figures on the real OOD set, and the detector best on that test set; "
            "Spearman: rank correlation of validation and test AUROC over the detectors.",
            "",
            tabulate(body, headers=header, tablefmt="github", disable_numparse=True),
            "",
            f"Chosen within 0.3 AUROC points of the test-best in {within} of {len(picks)} cases; Spearman "
            + (f"mean {np.mean(rho):.2f}, min {min(rho):.2f}, max {max(rho):.2f}" if rho else "–")
            + " (ranked by `val_near_auroc`, the AUROC against the near-OOD validation kinds; "
            + "; ".join(others)
            + ").",
            "",
        ]
    )


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
    text += "\n" + "\n".join(t for t in (ensemble_table(rows), selection_table(rows)) if t)
    if walls:
        text += (
            "\nWall time of each run of this invocation (a resumed run costs nothing; models "
            "are cached after the first protocol): "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in walls.items())
            + "\n"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
