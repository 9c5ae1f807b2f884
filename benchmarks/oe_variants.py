"""Outlier-exposure settings chosen on validation data: fine-tuning variants of one base network.

Each variant fine-tunes the suite's cached base network with outlier exposure (one setting
changed from the detector's defaults) and is scored with its MSP. The **selection rule, fixed
before any run**: the variant with the highest AUROC on the blind protocol's validation pair
(ID validation images vs the synthetic OOD validation set, :func:`oodlab.data.synthetic_ood_validation`,
whose kinds differ from every auxiliary set). The real OOD test set's AUROC is printed beside it
for the record only; it chooses nothing. Training seconds are measured per variant, and the
base network's own training seconds are read from its checkpoint (the cost target: a
fine-tuning no longer than the base training).

    .venv/bin/python benchmarks/oe_variants.py [--suite fmnist-vs-mnist] [--seed 0] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from oodlab import features
from oodlab.bench.suites import build_suite, get_suite
from oodlab.detectors import create_detector
from oodlab.metrics import auroc, classification_accuracy
from oodlab.training.recipes import make_network

#: name → outlier-exposure parameters (the detector's defaults changed in one place).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},  # lam 0.5, lr 0.01, 1 epoch, aux id-synthetic, n_aux 20,000
    "lr-0.001": {"lr": 0.001},  # the reference's fine-tuning rate
    "lam-1": {"lam": 1.0},
    "aux-edges": {"aux": "edges"},
    "aux-smooth-noise": {"aux": "smooth-noise"},
    "epochs-2": {"epochs": 2},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="fmnist-vs-mnist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    suite = get_suite(args.suite)
    data = build_suite(suite, args.seed, "blind", {}, [])
    ood_name, ood_test = next(iter(data.ood_tests.items()))
    rows = []
    for name in args.variants.split(","):
        det = create_detector("outlier-exposure", **VARIANTS[name])
        t0 = time.perf_counter()
        model, meta = make_network(
            det.network(dataclasses.replace(suite.train, seed=args.seed)), data.id_train, progress=False
        )
        wall = time.perf_counter() - t0
        # One forward pass per set, shared by the scores and the ID accuracy.
        with features.using_cache(features.OutputsCache(max_entries=8)):
            det.fit(model, data.id_train, id_val=data.id_val, ood_val=data.ood_val)
            sets = {"id_val": data.id_val, "ood_val": data.ood_val, "id_test": data.id_test}
            sets["ood_test"] = ood_test
            s = {k: det.score_set(v).numpy() for k, v in sets.items()}
            accuracy = classification_accuracy(features.outputs(model, data.id_test).logits, data.id_test.y)
        row = {
            "variant": name,
            "params": VARIANTS[name],
            "val_auroc": float(auroc(s["id_val"], s["ood_val"])),
            f"test_auroc_{ood_name}": float(auroc(s["id_test"], s["ood_test"])),
            "id_test_accuracy": accuracy,
            "train_seconds": float(meta["train_seconds"]),
            "base_train_seconds": meta.get("base_train_seconds"),
            "cached": meta["cached"],
            "wall_seconds": wall,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: r["val_auroc"])
    print(f"chosen on validation: {best['variant']}")
    if args.out:
        args.out.write_text(
            json.dumps(
                {"suite": args.suite, "seed": args.seed, "rows": rows, "chosen": best["variant"]}, indent=1
            )
        )


if __name__ == "__main__":
    main()
