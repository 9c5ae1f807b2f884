"""Which network to benchmark: the suites' LeNet against other recipes, chosen on validation only.

The detectors give pytorch-ood's numbers on any given network (``peer.py``),
so the distance to the quality targets is a property of the network. This script compares the
blind-protocol quality runs of several training recipes (``oodlab bench --recipe``) and picks,
per suite, the recipe with the highest mean **ID validation accuracy** — the held-out training
images, the criterion a user has before seeing any OOD data. The OOD test sets decide nothing
here; their figures are only reported. From the repository root, after running the quality
benchmark once per recipe (``benchmarks/quality.py --recipe NAME --protocols blind --root
benchmarks/results/quality-NAME``):

    R=benchmarks/results
    .venv/bin/python benchmarks/recipes.py \\
        --runs lenet=$R/quality,lenet5=$R/quality-lenet5,resnet18=$R/quality-resnet18

Output: ``benchmarks/results/recipes.md``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from quality import MAIN_OOD, SUITES, mean_std
from tabulate import tabulate

from oodlab.io import atomic_write_text

#: The issue's blind-protocol targets: (min AUROC, max FPR@95 or None), in %.
TARGETS = {"fmnist-vs-mnist": (99.9, None), "mnist-holdout0": (99.85, 0.2)}


def load(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows and model summaries of the blind runs under ``root``."""
    rows: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    for run in sorted(root.glob("*-blind-seed*")):
        if (run / "results.json").exists():
            rows += json.loads((run / "results.json").read_text())
            models += json.loads((run / "models.json").read_text())
    return rows, models


def summarise(runs: dict[str, Path]) -> str:
    per: dict[str, dict[str, Any]] = {}
    for recipe, root in runs.items():
        rows, models = load(root)
        per[recipe] = {"rows": rows, "models": models}
    lines = [
        "# Choosing the network on validation data",
        "",
        "Blind protocol (detectors tuned on ID validation + synthetic OOD validation), mean ± std over "
        "the seeds run. Per suite the recipe with the highest mean ID *validation* accuracy is chosen "
        "(marked ✓); the OOD test figures below played no part in the choice. The best detector is the one "
        "with the highest mean test AUROC, as in the issue's targets. AUROC / FPR@95 in %, on the suite's "
        "real-image OOD set. `oodlab list recipes` describes each recipe.",
        "",
    ]
    suites = [s for s in SUITES if any(r["suite"] == s for p in per.values() for r in p["rows"])]
    for suite in suites:
        ood = MAIN_OOD[suite]
        summary = []
        by_detector: dict[str, dict[str, str]] = defaultdict(dict)
        val_acc = {}
        for recipe, p in per.items():
            ms = [m for m in p["models"] if m["suite"] == suite]
            if not ms:
                continue
            if any("id_val_accuracy" not in m for m in ms):
                print(f"skipping {recipe} on {suite}: its models.json predates id_val_accuracy; rerun it")
                continue
            val_acc[recipe] = float(np.mean([m["id_val_accuracy"] for m in ms]))
        if not val_acc:
            continue
        chosen = max(val_acc, key=val_acc.__getitem__)
        for recipe in val_acc:
            ms = [m for m in per[recipe]["models"] if m["suite"] == suite]
            rows = [r for r in per[recipe]["rows"] if r["suite"] == suite and r["ood"] == ood]
            auroc: dict[str, list[float]] = defaultdict(list)
            fpr: dict[str, list[float]] = defaultdict(list)
            for r in rows:
                auroc[r["detector"]].append(r["auroc"])
                fpr[r["detector"]].append(r["fpr95"])
            for d in auroc:
                by_detector[d][recipe] = mean_std(auroc[d])
            best = max(auroc, key=lambda d: float(np.mean(auroc[d])))
            summary.append(
                [
                    recipe + (" ✓" if recipe == chosen else ""),
                    sorted({m["seed"] for m in ms}),
                    mean_std([m["id_val_accuracy"] for m in ms]),
                    mean_std([m["id_accuracy"] for m in ms]),
                    f"{best}: {mean_std(auroc[best])} / {mean_std(fpr[best])}",
                    ", ".join(
                        f"{100 * a:.2f} / {100 * f:.2f}" for a, f in zip(auroc[best], fpr[best], strict=True)
                    ),
                ]
            )
        target = TARGETS.get(suite)
        lines += [
            f"## {suite} (OOD `{ood}`)",
            "",
            (
                f"Target (blind): best detector AUROC ≥ {target[0]}"
                + (f" with FPR@95 ≤ {target[1]}" if target[1] is not None else "")
                + "."
                if target
                else "No target."
            ),
            "",
            tabulate(
                summary,
                headers=[
                    "recipe",
                    "seeds",
                    "ID val. acc.",
                    "ID test acc.",
                    "best detector (test AUROC / FPR@95)",
                    "its per-seed figures",
                ],
                tablefmt="github",
                disable_numparse=True,
            ),
            "",
            "Test AUROC of every detector:",
            "",
            tabulate(
                [[d, *(by_detector[d].get(r, "") for r in val_acc)] for d in sorted(by_detector)],
                headers=["detector", *val_acc],
                tablefmt="github",
                disable_numparse=True,
            ),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, help="RECIPE=ROOT,... (quality-run folders per recipe)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/recipes.md"))
    args = ap.parse_args(argv)
    runs = {k: Path(v) for k, v in (item.split("=", 1) for item in args.runs.split(","))}
    text = summarise(runs)
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
