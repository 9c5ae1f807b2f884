"""Methods that train their network, against the post-hoc scores of the suite's own network.

Runs ``oodlab bench`` once per (suite, seed), blind protocol, with the post-hoc baselines
(``msp``, ``energy``) and the methods (``outlier-exposure``, ``energy-finetune``,
``deep-ensemble``, ``mc-dropout``), each run in its own resumable folder; every network is
trained once per (suite, seed) and cached (``$OODLAB_CACHE/models``). Then it measures scoring
throughput (seconds to score 2,000 ID test images by default, relative to one plain forward pass of the
base network, interleaved in one process, median of 3) and writes mean ± std tables over seeds:
AUROC and FPR@95 on the real-image OOD set, ID test accuracy of each method's network, its
training wall time and its scoring cost. From the repository root:

    .venv/bin/python benchmarks/methods.py                          # both suites, seeds 0,1,2
    .venv/bin/python benchmarks/methods.py --suites fmnist-vs-mnist --seeds 0
    .venv/bin/python benchmarks/methods.py --aggregate-only          # re-tabulate saved runs
    .venv/bin/python benchmarks/methods.py --cost-untrained          # scoring cost only (no training)

Output: ``benchmarks/results/methods.md`` and ``methods.json``; the runs' ``results.json``,
``results.md`` and ``models.json`` under ``benchmarks/results/methods/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from _bench_cli import run_bench
from tabulate import tabulate

SUITES = ("fmnist-vs-mnist", "mnist-holdout0")
MAIN_OOD = {"fmnist-vs-mnist": "mnist", "mnist-holdout0": "mnist-0"}
BASELINES = ("msp", "energy")
METHODS = ("outlier-exposure", "energy-finetune", "deep-ensemble", "mc-dropout")
#: Which post-hoc score of the base network each method is compared with.
COMPARED_WITH = {
    "outlier-exposure": "msp",
    "energy-finetune": "energy",
    "deep-ensemble": "msp",
    "mc-dropout": "msp",
}
FILES = ("results.json", "results.md", "models.json")


def run_dir(root: Path, suite: str, seed: int) -> Path:
    return root / f"{suite}-seed{seed}"


def run(root: Path, suite: str, seed: int, detectors: str) -> float:
    """One resumable ``oodlab bench`` run; returns its wall time."""
    args = ["--suite", suite, "--seed", str(seed), "--detectors", detectors]
    return run_bench(run_dir(root, suite, seed), *args)


def throughput(
    suite: str, seed: int, detectors: list[str], n: int = 2000, repeats: int = 3, untrained: bool = False
) -> dict[str, float]:
    """Seconds to score ``n`` ID test images per detector, divided by one forward pass of the base network.

    With ``untrained``, every network is built from its recipes at initialisation instead of
    loaded from the checkpoint cache: the cost of a forward pass does not depend on the weights.
    """
    import torch

    from oodlab.bench import build_suite, get_suite
    from oodlab.detectors import create_detector
    from oodlab.features import extract
    from oodlab.models.ensemble import EnsembleModel
    from oodlab.training import build_model, make_network

    torch.manual_seed(0)
    data = build_suite(get_suite(suite), seed)
    recipe = dataclasses.replace(get_suite(suite).train, seed=seed)
    num_classes = int(data.id_train.y.max()) + 1
    x = data.id_test.tensor(0, n)

    def network(det: Any) -> Any:
        net = det.network(recipe)
        if untrained:
            models = [build_model(cfg, num_classes, data.id_train.shape).eval() for cfg in net.members]
            return models[0] if len(models) == 1 else EnsembleModel(models).eval()
        model, meta = make_network(net, data.id_train, progress=False)
        if not meta["cached"]:
            raise SystemExit(f"{det.name}: its network was not in the cache; run the benchmark first")
        return model

    fitted = {name: (det := create_detector(name)).fit(network(det), data.id_train) for name in detectors}
    base = network(create_detector("msp"))
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeats):
        t0 = time.perf_counter()
        extract(base, x)
        times["forward"].append(time.perf_counter() - t0)
        for name, det in fitted.items():
            t0 = time.perf_counter()
            det.score(x)
            times[name].append(time.perf_counter() - t0)
    forward = statistics.median(times["forward"])
    ratios = {k: statistics.median(v) / forward for k, v in times.items() if k != "forward"}
    return {"forward_seconds": forward, "images": n, **ratios}


def aux_fingerprint(cfg: Any, id_train: Any) -> str | None:
    """The content hash of the auxiliary set ``cfg`` trains on (part of its checkpoint key)."""
    from oodlab.training import build_aux

    return None if cfg.aux is None else build_aux(cfg.aux, id_train, cfg.n_aux, cfg.seed).fingerprint


def subset_rows(suite: str, seed: int, detectors: list[str], n: int) -> list[dict[str, Any]]:
    """AUROC / FPR@95 of each detector whose network is cached, on seeded subsets of ``n`` ID test
    and ``n`` OOD test images (the real-image OOD set), through the Python API.

    For a machine too loaded to score the full test sets (MC dropout scores every image 32
    times): the same seeded subset for every detector, so they compare with each other.
    """
    import numpy as np
    import torch

    from oodlab.bench import build_suite, get_suite
    from oodlab.data.sources import cache_dir
    from oodlab.detectors import create_detector
    from oodlab.metrics import auroc, classification_accuracy, fpr_at_tpr
    from oodlab.training import make_network

    data = build_suite(get_suite(suite), seed)
    recipe = dataclasses.replace(get_suite(suite).train, seed=seed)
    rng = np.random.default_rng(seed)
    ood = data.ood_tests[MAIN_OOD[suite]]
    id_sub = data.id_test.subset(np.sort(rng.choice(len(data.id_test), min(n, len(data.id_test)), False)))
    ood_sub = ood.subset(np.sort(rng.choice(len(ood), min(n, len(ood)), False)))
    rows = []
    for name in detectors:
        det = create_detector(name)
        net = det.network(recipe)
        paths = [
            cache_dir()
            / "models"
            / f"{c.model}-{c.key(data.id_train.fingerprint, aux_fingerprint(c, data.id_train))}.safetensors"
            for c in net.members
        ]
        if not all(p.exists() for p in paths):
            print(f"{suite} seed {seed} {name}: network not trained yet, skipped", flush=True)
            continue
        model, meta = make_network(net, data.id_train, progress=False)
        if not meta["cached"]:
            print(f"{suite} seed {seed} {name}: trained its network here", flush=True)
        torch.manual_seed(seed)
        det.fit(model, data.id_train)
        s_id, s_ood = det.score_set(id_sub).numpy(), det.score_set(ood_sub).numpy()
        with torch.no_grad():
            acc = classification_accuracy(model(id_sub.tensor()), id_sub.y)
        rows.append(
            {
                "suite": suite,
                "seed": seed,
                "detector": name,
                "ood": MAIN_OOD[suite],
                "n_id": len(id_sub),
                "n_ood": len(ood_sub),
                "auroc": auroc(s_id, s_ood),
                "fpr95": fpr_at_tpr(s_id, s_ood, 0.95),
                "id_accuracy_subset": acc,
                "network": meta["network"],
                "train_seconds": meta["train_seconds"],
            }
        )
        print(rows[-1], flush=True)
    return rows


def mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    a = scale * np.asarray(values, dtype=float)
    if len(a) == 0:
        return "—"
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f}" if len(a) > 1 else f"{a.mean():.{digits}f}"


def collect(root: Path, suites: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for suite in suites:
        for seed in seeds:
            path = run_dir(root, suite, seed) / "results.json"
            if path.exists():
                rows += json.loads(path.read_text())
    return rows


def train_seconds(
    rows: list[dict[str, Any]], models: dict[tuple[str, int], dict[str, Any]], r: dict[str, Any]
) -> float:
    """The wall time that made the network a row's detector scores."""
    if "network" in r:
        return float(r["network"]["train_seconds"])
    return float(models[(r["suite"], r["seed"])]["stats"]["train_seconds"])


def tables(
    root: Path, rows: list[dict[str, Any]], speed: dict[str, dict[str, float]]
) -> tuple[str, dict[str, Any]]:
    models: dict[tuple[str, int], dict[str, Any]] = {}
    for path in root.glob("*/models.json"):
        for m in json.loads(path.read_text()):
            if "network" not in m:
                models[(m["suite"], m["seed"])] = m
    summary: dict[str, Any] = {}
    lines = [
        "# Methods that train their network",
        "",
        "Blind protocol (nothing tuned on an OOD test set; the methods tune nothing). AUROC and FPR@95 in "
        "percent on the real-image OOD set, mean ± std (ddof 1) over the seeds listed; ID test accuracy of "
        "the network each method scores; training wall time of that network (the fine-tuning step alone for "
        "the fine-tuned methods; all members for the ensemble; the base network for the post-hoc scores and "
        "MC dropout); scoring time of 2,000 ID test images relative to one forward pass of the base network "
        "(median of 3, same process). Timings are this machine's (2 cores; every training took both), "
        "taken one after another in one run: compare them as ratios within the table.",
        "",
    ]
    for suite in sorted({r["suite"] for r in rows}, key=lambda s: SUITES.index(s) if s in SUITES else 99):
        ood = MAIN_OOD.get(suite) or sorted({r["ood"] for r in rows if r["suite"] == suite})[0]
        sel = [r for r in rows if r["suite"] == suite and r["ood"] == ood]
        by_det: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in sel:
            by_det[r["detector"]].append(r)
        order = [d for d in (*BASELINES, *METHODS) if d in by_det] + sorted(
            set(by_det) - {*BASELINES, *METHODS}
        )
        seeds = sorted({r["seed"] for r in sel})
        body = []
        summary[suite] = {}
        for d in order:
            rs = sorted(by_det[d], key=lambda r: r["seed"])
            ts = [train_seconds(rows, models, r) for r in rs]
            ratio = speed.get(suite, {}).get(d)
            body.append(
                [
                    f"`{d}`",
                    ", ".join(str(r["seed"]) for r in rs),
                    mean_std([r["auroc"] for r in rs]),
                    mean_std([r["fpr95"] for r in rs]),
                    mean_std([r["id_accuracy"] for r in rs]),
                    mean_std(ts, scale=1.0, digits=0),
                    "—" if ratio is None else f"{ratio:.2f}×",
                ]
            )
            summary[suite][d] = {
                "seeds": [r["seed"] for r in rs],
                "auroc": [r["auroc"] for r in rs],
                "fpr95": [r["fpr95"] for r in rs],
                "id_accuracy": [r["id_accuracy"] for r in rs],
                "train_seconds": ts,
                "scoring_cost_vs_forward": ratio,
                "network": rs[0].get("network", {}).get("network", "the suite's own network"),
            }
        header = [
            "method",
            "seeds",
            f"AUROC ({ood})",
            "FPR@95",
            "ID test acc.",
            "training (s)",
            "scoring cost",
        ]
        lines += [
            f"## {suite} (seeds {', '.join(map(str, seeds))})",
            "",
            tabulate(body, header, tablefmt="github"),
            "",
        ]
        lines += ["Per seed (AUROC / FPR@95 / ID test accuracy):", ""]
        for d in order:
            per = "; ".join(
                f"seed {r['seed']}: {100 * r['auroc']:.2f} / {100 * r['fpr95']:.2f} / "
                f"{100 * r['id_accuracy']:.2f}"
                for r in sorted(by_det[d], key=lambda r: r["seed"])
            )
            lines.append(f"- `{d}`: {per}")
        lines.append("")
        nets = {d: by_det[d][0]["network"] for d in order if "network" in by_det[d][0]}
        if nets:
            lines += ["Networks:", ""]
            for d, net in nets.items():
                aux = net.get("aux") or {}
                settled = (net.get("objective") or {}).get("settled") or {}
                extra = f"; auxiliary set `{aux['name']}` ({aux['n']} images)" if aux else ""
                if settled:
                    extra += "; " + ", ".join(f"{k} = {v:.3f}" for k, v in settled.items()) + " (seed 0)"
                lines.append(f"- `{d}`: {net['network']}{extra}")
            lines.append("")
    return "\n".join(lines) + "\n", summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--detectors", default=",".join((*BASELINES, *METHODS)))
    ap.add_argument("--root", type=Path, default=Path("benchmarks/results/methods"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/methods.md"))
    ap.add_argument("--aggregate-only", action="store_true", help="tabulate the saved runs")
    ap.add_argument("--no-throughput", action="store_true", help="skip the scoring-cost measurement")
    ap.add_argument(
        "--cost-untrained",
        action="store_true",
        help="measure scoring cost only, on networks at initialisation (cost does not depend on weights)",
    )
    ap.add_argument(
        "--cost-images", type=int, default=2000, help="ID test images scored per cost measurement"
    )
    ap.add_argument(
        "--subset",
        type=int,
        default=None,
        metavar="N",
        help="score N ID and N OOD test images per (suite, seed) with the networks already cached "
        "(writes <root>/subset-<suite>-seed<k>.json) instead of running the benchmark",
    )
    args = ap.parse_args()
    suites = [s for s in args.suites.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.subset is not None:
        for seed in seeds:
            for suite in suites:
                found = subset_rows(suite, seed, [d for d in args.detectors.split(",") if d], args.subset)
                args.root.mkdir(parents=True, exist_ok=True)
                (args.root / f"subset-{suite}-seed{seed}.json").write_text(json.dumps(found, indent=1))
        return
    if not args.aggregate_only and not args.cost_untrained:
        for seed in seeds:
            for suite in suites:
                run(args.root, suite, seed, args.detectors)
    speed_path = args.out.with_suffix(".speed.json")
    speed: dict[str, dict[str, float]] = json.loads(speed_path.read_text()) if speed_path.exists() else {}
    if args.cost_untrained or (not args.no_throughput and not args.aggregate_only):
        for suite in suites:
            done = [d for d in args.detectors.split(",") if d]
            speed[suite] = throughput(
                suite, seeds[0], done, n=args.cost_images, untrained=args.cost_untrained
            )
            speed[suite]["networks"] = "at initialisation" if args.cost_untrained else "trained"
            print(suite, speed[suite], flush=True)
        speed_path.write_text(json.dumps(speed, indent=1))
    rows = collect(args.root, suites, seeds)
    text, summary = tables(args.root, rows, speed)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(text)


if __name__ == "__main__":
    main()
