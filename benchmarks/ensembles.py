"""Ensembles beside their members: per-tap AUROC on every validation kind and on the real OOD test set.

For one trained model (suite, seed, recipe) this fits ``mahalanobis-ensemble`` (ε = 0, the
shared forward pass only) and ``fssd-ensemble`` twice — with the validated combination (the
default) and with the reference's plain logistic regression (``combination="logistic"``) — on
the blind protocol's validation sets, and prints each member's AUROC against ID validation on
every kind of synthetic OOD validation image, pooled, and on the real OOD test set, then both
ensembles' test AUROC. With ``--protocol paper`` the ensembles are fitted on the 500 + 500 cut of
the test sets instead (no kinds). From the repository root:

    .venv/bin/python benchmarks/ensembles.py --suite fmnist-vs-mnist --seed 0 --recipe lenet-caffe

Output: a Markdown block on stdout, and with ``--out`` the same block appended as one file.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from oodlab import features
from oodlab.bench import build_suite, get_suite, with_recipe
from oodlab.data.sources import cache_dir
from oodlab.data.synthetic import OOD_VALIDATION_TRANSFORMS
from oodlab.detectors import create_detector
from oodlab.features import OutputsCache
from oodlab.io import atomic_write_text
from oodlab.metrics import auroc
from oodlab.training import fit_or_load

ENSEMBLES = (("mahalanobis-ensemble", {"noise": 0.0}), ("fssd-ensemble", {}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe", default="lenet-caffe")
    ap.add_argument("--protocol", default="blind", choices=("blind", "paper"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    suite = with_recipe(get_suite(args.suite), args.recipe)
    data = build_suite(suite, args.seed, args.protocol)
    model, _ = fit_or_load(dataclasses.replace(suite.train, seed=args.seed), data.id_train, progress=False)
    real = next(k for k in data.ood_tests if k not in ("gaussian", "uniform"))
    id_val, ood_val = data.validation_for(real)
    id_test, ood_test = data.id_test_for(real), data.ood_tests[real]
    kinds = list(OOD_VALIDATION_TRANSFORMS) if ood_val.y is not None and args.protocol == "blind" else []
    lines = [
        f"### {args.suite}, seed {args.seed}, {args.recipe}, {args.protocol} protocol (OOD `{real}`)",
        "",
    ]
    with features.using_cache(OutputsCache(max_entries=32, disk_dir=cache_dir() / "features")):
        for name, params in ENSEMBLES:
            fitted = {
                c: create_detector(name, combination=c, **params).fit(
                    model, data.id_train, id_val=id_val, ood_val=ood_val
                )
                for c in ("validated", "logistic")
            }
            det = fitted["validated"]
            vi, vo = det.member_scores_set(id_val).numpy(), det.member_scores_set(ood_val).numpy()
            ti, to = det.member_scores_set(id_test).numpy(), det.member_scores_set(ood_test).numpy()
            header = ["member", *kinds, "all OOD validation", f"test `{real}`"]
            lines += [
                f"`{name}` {params or ''}",
                "",
                "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header),
            ]
            for j, tap in enumerate(det.taps_):
                cells = [auroc(vi[:, j], vo[ood_val.y == g, j]) for g in range(len(kinds))]
                cells += [auroc(vi[:, j], vo[:, j]), auroc(ti[:, j], to[:, j])]
                lines.append(f"| {tap} | " + " | ".join(f"{100 * v:.2f}" for v in cells) + " |")
            lines.append("")
            for c, d in fitted.items():
                s_id, s_ood = d.member_scores_set(id_test), d.member_scores_set(ood_test)
                a = auroc(d.scores_from_members(s_id).numpy(), d.scores_from_members(s_ood).numpy())
                chosen = d.tuning()["chosen"]
                weights = chosen.get("weights", chosen.get("alpha", {}))
                lines.append(
                    f"- `combination={c}`: test AUROC **{100 * a:.2f}**, chose `{chosen['combination']}`, "
                    "weights " + ", ".join(f"{t} {w:+.4f}" for t, w in weights.items())
                )
            lines.append("")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    if args.out is not None:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
