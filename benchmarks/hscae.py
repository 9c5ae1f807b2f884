"""HSCAE on mnist-holdout0 (digits 1-9 ID, zeros OOD): the report's tables 2 and 3 in shape.

For each seed this script trains (or loads from the checkpoint cache) the suite's LeNet and one
self-conditioned autoencoder per latent dimension, exactly as ``oodlab bench --detectors hscae``
does, and scores four sets: ID test, the held-out zeros (test), ID validation and the synthetic
OOD validation set. Every distance at every level 1-5 comes from one chain of reconstructions
(:func:`oodlab.detectors.hscae.reconstruction_distances`). Post-hoc members (ODIN, KNN, ViM,
energy) are fitted and tuned as ``oodlab bench`` fits them (blind protocol: ID validation +
synthetic OOD validation). Each stage's scores are saved under ``--out`` (``scores-*.npz``), so a
killed run resumes; ``--report`` rebuilds the tables from whatever finished.

Thresholds: "val" figures use the threshold accepting ``--accept-rate`` (0.975) of the ID
*validation* images; "oracle" figures use the threshold accepting that share of the ID *test*
images (what the HSCAE report did: thresholds picked on the test set) and are labelled so.
Choices (distance, level, which two members to combine) are made on validation data only: the
rule is the lowest share of synthetic OOD validation images accepted at the validation
threshold, ties broken by the validation AUROC. The zeros never enter a choice.

    nice -n 15 .venv/bin/python benchmarks/hscae.py --seeds 0,1,2 --latents 8,6,10
    .venv/bin/python benchmarks/hscae.py --report

Latent 8 is scored with every distance, the others with mse and ssim (the classifier-based
distances cost one classifier pass per level). Output: ``--out`` (``benchmarks/results/hscae/``:
``scores-*.npz``, ``timing-*.json``) and the tables beside it (``hscae.md`` / ``hscae.json``).
``--recipe lenet-caffe`` conditions the autoencoder on (and fits the post-hoc members to) another
classifier; give it its own ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

from oodlab import features, metrics
from oodlab.bench import build_suite, get_suite
from oodlab.data.sources import cache_dir
from oodlab.detectors import create_detector
from oodlab.detectors.either import either_scores
from oodlab.detectors.hscae import DISTANCES, reconstruction_distances
from oodlab.io import atomic_write_bytes, atomic_write_text
from oodlab.training import DEFAULT_RECIPE, fit_or_load, make_network, with_recipe

SUITE = "mnist-holdout0"
OOD = "mnist-0"
LEVELS = 5
SETS = ("id_test", "zeros", "id_val", "ood_val")
POST_HOC = ("odin", "knn", "vim", "energy")
#: The other latents are scored with the distances that need no classifier pass per level (time).
PIXEL_DISTANCES = ("mse", "ssim")
#: Column titles of the figures every table row shows.
FIGURE_COLUMNS = (
    "AUROC / FPR@95",
    "val: ID accepted / zeros rejected",
    "oracle: ID accepted / zeros rejected",
)
ROOT = Path(__file__).resolve().parent / "results"


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _sets(data: Any) -> dict[str, Any]:
    return {
        "id_test": data.id_test,
        "zeros": data.ood_tests[OOD],
        "id_val": data.id_val,
        "ood_val": data.ood_val,
    }


def post_hoc_scores(
    name: str, base: torch.nn.Module, data: Any, seed: int
) -> tuple[dict[str, np.ndarray], Any]:
    """A post-hoc member fitted and tuned as ``oodlab bench`` fits it (blind): its scores on the
    four sets, and the settings its tuning chose."""
    torch.manual_seed(seed)
    det = create_detector(name).fit(base, data.id_train, id_val=data.id_val, ood_val=data.ood_val)
    scores = {s: det.score_set(images).numpy() for s, images in _sets(data).items()}
    return scores, det.tuning().get("chosen", {})


def distance_scores(
    net: torch.nn.Module, base: torch.nn.Module, images: Any, distances: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Per distance, ``(LEVELS, N)`` negated distances of one image set (higher = more ID); the
    classifier's logits come from the outputs cache, the chain of reconstructions runs once."""
    logits = features.outputs(base, images).logits
    x = images.tensor()
    parts = [
        reconstruction_distances(net, x[i : i + 500], LEVELS, distances, logits[i : i + 500])
        for i in range(0, len(x), 500)
    ]
    return {d: -torch.cat([p[d] for p in parts], dim=1).numpy() for d in distances}


def run_seed(
    seed: int, latents: list[int], out: Path, log: Any = print, recipe_name: str = DEFAULT_RECIPE
) -> None:
    """Score the four sets with each post-hoc member and each (latent, level, distance) of one seed.

    Order: the first latent's autoencoder, ODIN, that autoencoder's distances, the other post-hoc
    members, then the other latents; every stage is saved as soon as it finishes.
    """
    suite = with_recipe(get_suite(SUITE), recipe_name)
    data = build_suite(suite, seed)
    recipe = replace(suite.train, seed=seed)
    sets = _sets(data)
    t0 = time.perf_counter()
    base, meta = fit_or_load(recipe, data.id_train)
    log(f"seed {seed}: LeNet {'loaded' if meta['cached'] else 'trained'} ({time.perf_counter() - t0:.0f} s)")

    def train_seconds(latent: int) -> float:
        net = create_detector("hscae", latent_dim=latent).network(recipe)
        return float(make_network(net, data.id_train, progress=False)[1]["train_seconds"])

    def network(latent: int) -> torch.nn.Module:
        net, meta = make_network(create_detector("hscae", latent_dim=latent).network(recipe), data.id_train)
        how = "loaded from cache" if meta["cached"] else "trained"
        log(f"seed {seed}: autoencoder latent {latent} {how} (training took {meta['train_seconds']:.0f} s)")
        return net

    def post_hoc(name: str) -> None:
        path = out / f"scores-{name}-seed{seed}.npz"
        if path.exists():
            return
        t0 = time.perf_counter()
        scores, tuning = post_hoc_scores(name, base, data, seed)
        _save(path, scores)
        took = time.perf_counter() - t0
        log(f"seed {seed}: {name} scored in {took:.0f} s ({tuning})")

    def grid(latent: int, distances: tuple[str, ...]) -> None:
        path = out / f"scores-hscae-L{latent}-seed{seed}.npz"
        if path.exists():
            return
        net = network(latent)
        t0 = time.perf_counter()
        arrays = {}
        for s, images in sets.items():
            for d, scores in distance_scores(net, base, images, distances).items():
                arrays[f"{d}/{s}"] = scores
        _save(path, arrays)
        log(f"seed {seed}: latent {latent} scored in {time.perf_counter() - t0:.0f} s")

    if latents:
        picture(network(latents[0]), data, out / f"reconstructions-L{latents[0]}-seed{seed}")
    post_hoc("odin")
    if latents:
        grid(latents[0], DISTANCES)
    timing = out / f"timing-seed{seed}.json"
    if not timing.exists() and latents:
        net = network(latents[0])
        seconds = {"train_seconds": train_seconds(latents[0])}
        atomic_write_text(timing, json.dumps({**seconds, **speed(base, net, data)}, indent=1))
    for name in POST_HOC[1:]:
        post_hoc(name)
    for latent in latents[1:]:
        grid(latent, PIXEL_DISTANCES)


def picture(net: Any, data: Any, stem: Path, n: int = 8) -> None:
    """The report's picture: n ID test digits and n zeros, and their reconstructions at levels 1-5."""
    if stem.with_suffix(".png").exists():
        return
    import matplotlib

    from oodlab.bench.plots import _RC, _save, reconstruction_figure

    det = create_detector("hscae").fit(net, data.id_test)
    grid = det.illustration(data.id_test.tensor(0, n), data.ood_tests[OOD].tensor(0, n))["reconstructions"]
    with matplotlib.rc_context(_RC):
        fig = reconstruction_figure(
            grid, ["ID test (1-9)", "zeros (OOD)"], f"{stem.name}: inputs, levels 1-5"
        )
        _save(fig, stem)


def speed(base: torch.nn.Module, net: Any, data: Any, n: int = 1000) -> dict[str, Any]:
    """Seconds per image of one classifier forward pass and of HSCAE scoring (MSE) at each level."""
    x = data.id_test.tensor(0, n)

    def clock(fn: Any) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            with torch.no_grad():
                for i in range(0, n, 250):
                    fn(x[i : i + 250])
            best = min(best, time.perf_counter() - t0)
        return best / n

    clf = clock(base)
    out: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "classifier_s_per_image": clf,
    }
    for h in range(1, LEVELS + 1):
        t = clock(lambda xb, h=h: reconstruction_distances(net, xb, h, ("mse",)))
        out[f"level{h}_s_per_image"] = t
        out[f"level{h}_relative"] = t / clf
    return out


# -- tables -------------------------------------------------------------------------------------


def figures(s: dict[str, np.ndarray], rate: float) -> dict[str, float]:
    """Test AUROC / FPR@95, accepted / rejected at the validation and the oracle threshold, and the
    validation figures the choices use (synthetic OOD validation accepted, validation AUROC)."""
    m = metrics.ood_metrics(s["id_test"], s["zeros"])
    t_val = metrics.threshold_at_accept_rate(s["id_val"], rate)
    t_orc = metrics.threshold_at_accept_rate(s["id_test"], rate)
    acc_v, rej_v = metrics.accuracy_at_threshold(s["id_test"], s["zeros"], t_val)
    acc_o, rej_o = metrics.accuracy_at_threshold(s["id_test"], s["zeros"], t_orc)
    _, val_rej = metrics.accuracy_at_threshold(s["id_val"], s["ood_val"], t_val)
    return {
        "auroc": m["auroc"],
        "fpr95": m["fpr95"],
        "id_accepted": acc_v,
        "ood_rejected": rej_v,
        "oracle_id_accepted": acc_o,
        "oracle_ood_rejected": rej_o,
        "val_ood_accepted": 1 - val_rej,
        "val_auroc": metrics.auroc(s["id_val"], s["ood_val"]),
    }


def load(out: Path, seed: int, what: str) -> dict[str, np.ndarray] | None:
    """Saved scores of one stage: ``"odin"``, ``"knn"``, … or ``"hscae-L8"``."""
    path = out / f"scores-{what}-seed{seed}.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def member(
    arrays: dict[str, np.ndarray], key: str | None = None, level: int | None = None
) -> dict[str, np.ndarray]:
    """The four sets' scores of one member: a post-hoc stage, or an HSCAE ``key`` (distance) at ``level``."""
    if key is None:
        return {s: arrays[s] for s in SETS}
    return {s: arrays[f"{key}/{s}"][level - 1] for s in SETS}


def combine(*members: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``either`` over the members: percentiles among each member's ID validation scores."""
    return {s: either_scores([m["id_val"] for m in members], [m[s] for m in members]) for s in SETS}


def choose(cands: dict[str, dict[str, float]]) -> str:
    """The candidate accepting the fewest synthetic OOD validation images; ties: higher val AUROC."""
    return min(cands, key=lambda k: (cands[k]["val_ood_accepted"], -cands[k]["val_auroc"], k))


def mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    a = scale * np.asarray(values, dtype=np.float64)
    if len(a) == 1:
        return f"{a[0]:.{digits}f}"
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f}"


def collect(out: Path, seeds: list[int], latents: list[int], rate: float) -> list[dict[str, Any]]:
    """One row of figures per (seed, scored thing): members, HSCAE grid, either pairs."""
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        post = {n: a for n in POST_HOC if (a := load(out, seed, n)) is not None}
        for n, a in post.items():
            rows.append({"seed": seed, "what": n, **figures(member(a), rate)})
        pool: dict[str, dict[str, np.ndarray]] = {n: member(a) for n, a in post.items()}
        for latent in latents:
            ae = load(out, seed, f"hscae-L{latent}")
            if ae is None:
                continue
            for d, h in itertools.product(DISTANCES, range(1, LEVELS + 1)):
                if f"{d}/id_test" not in ae:
                    continue
                m = member(ae, d, h)
                rows.append(
                    {
                        "seed": seed,
                        "what": "hscae",
                        "latent": latent,
                        "distance": d,
                        "level": h,
                        **figures(m, rate),
                    }
                )
                if latent == 8:
                    pool[f"hscae(distance={d}, levels={h})"] = m
                if "odin" in post:
                    rows.append(
                        {
                            "seed": seed,
                            "what": "either-odin",
                            "latent": latent,
                            "distance": d,
                            "level": h,
                            **figures(combine(member(post["odin"]), m), rate),
                        }
                    )
        # The best either of two, chosen on validation data among every pair of the pool.
        pairs = {
            f"either({a}, {b})": figures(combine(pool[a], pool[b]), rate)
            for a, b in itertools.combinations(sorted(pool), 2)
            if not (a.startswith("hscae") and b.startswith("hscae"))
        }
        if pairs:
            best = choose(pairs)
            rows.append(
                {"seed": seed, "what": "best-pair", "pair": best, "candidates": len(pairs), **pairs[best]}
            )
    return rows


def _pick(rows: list[dict[str, Any]], **where: Any) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def _seeds(rows: list[dict[str, Any]], **where: Any) -> str:
    return ",".join(str(r["seed"]) for r in _pick(rows, **where))


def _cell(rows: list[dict[str, Any]], keys: tuple[str, ...], **where: Any) -> str:
    sel = _pick(rows, **where)
    return " / ".join(mean_std([r[k] for r in sel]) for k in keys) if sel else "–"


def section(title: str, note: str) -> list[str]:
    """A Markdown heading and its note."""
    return [f"## {title}", "", note, ""]


def render(rows: list[dict[str, Any]], latents: list[int], rate: float, timing: list[dict[str, Any]]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    latents = [lat for lat in latents if _pick(rows, what="hscae", latent=lat)]
    acc = f"{100 * rate:.1f}%"
    lines = [
        "# HSCAE and either-ensembles on mnist-holdout0 (digits 1–9 ID, zeros OOD)",
        "",
        "Produced by `benchmarks/hscae.py` (see its docstring); blind protocol; seeds with results: "
        f"{', '.join(map(str, seeds)) or 'none'}. Percent. AUROC and FPR@95: ID test vs the held-out zeros. "
        f"**val**: ID accepted / zeros rejected at the threshold accepting {acc} of the ID *validation* "
        f"images. **oracle**: the same at the threshold accepting {acc} of the ID *test* images "
        "(picked on the test set as in the HSCAE report: a bound, not a result). Choices use validation "
        "data only. Cells: mean ± std (ddof 1) over seeds when more than one finished.",
        "",
        "## Table 2 in shape: latent dimension × level (distance mse, HSCAE alone)",
        "",
    ]
    head = ["latent", *(f"level {h}: AUROC / FPR@95" for h in range(1, LEVELS + 1))]
    body = [
        [f"{lat} (seeds {_seeds(rows, what='hscae', latent=lat, distance='mse', level=1)})"]
        + [
            _cell(rows, ("auroc", "fpr95"), what="hscae", latent=lat, distance="mse", level=h)
            for h in range(1, LEVELS + 1)
        ]
        for lat in latents
    ]
    lines += [tabulate(body, head, tablefmt="github"), ""]
    lines += ["Same grid, val and oracle operating points (ID accepted / zeros rejected):", ""]
    head = ["latent", *(f"level {h}: val ; oracle" for h in range(1, LEVELS + 1))]
    body = [
        [str(lat)]
        + [
            _cell(rows, ("id_accepted", "ood_rejected"), what="hscae", latent=lat, distance="mse", level=h)
            + " ; "
            + _cell(
                rows,
                ("oracle_id_accepted", "oracle_ood_rejected"),
                what="hscae",
                latent=lat,
                distance="mse",
                level=h,
            )
            for h in range(1, LEVELS + 1)
        ]
        for lat in latents
    ]
    lines += [tabulate(body, head, tablefmt="github"), ""]
    lines += [
        "Same grid on validation data only (what a choice of latent and level may use): synthetic OOD "
        "validation images accepted at the validation threshold / validation AUROC:",
        "",
    ]
    head = ["latent", *(f"level {h}: val OOD accepted / val AUROC" for h in range(1, LEVELS + 1))]
    body = [
        [str(lat)]
        + [
            _cell(rows, ("val_ood_accepted", "val_auroc"), what="hscae", latent=lat, distance="mse", level=h)
            for h in range(1, LEVELS + 1)
        ]
        for lat in latents
    ]
    lines += [tabulate(body, head, tablefmt="github"), ""]
    lines += ["## Table 3 in shape: ensemble × level (latent 8, distance mse)", ""]
    head = ["method", *FIGURE_COLUMNS]
    keys = (
        ("auroc", "fpr95"),
        ("id_accepted", "ood_rejected"),
        ("oracle_id_accepted", "oracle_ood_rejected"),
    )
    body = [["ODIN", *(_cell(rows, k, what="odin") for k in keys)]]
    for h in range(1, LEVELS + 1):
        body.append(
            [
                f"HSCAE level {h}",
                *(_cell(rows, k, what="hscae", latent=8, distance="mse", level=h) for k in keys),
            ]
        )
    for h in range(1, LEVELS + 1):
        body.append(
            [
                f"either(ODIN, HSCAE level {h})",
                *(_cell(rows, k, what="either-odin", latent=8, distance="mse", level=h) for k in keys),
            ]
        )
    lines += [tabulate(body, head, tablefmt="github"), ""]
    lines += section(
        "The distance and the level on validation (latent 8)",
        "Share of synthetic OOD validation images accepted at the validation threshold / validation AUROC "
        "(ID validation vs synthetic OOD validation), then the test AUROC / FPR@95 of the same cell "
        "(reported, never used to choose).",
    )
    head = ["distance", *(f"level {h}" for h in range(1, LEVELS + 1))]
    body = []
    for d in DISTANCES:
        body.append(
            [f"{d} (val)"]
            + [
                _cell(rows, ("val_ood_accepted", "val_auroc"), what="hscae", latent=8, distance=d, level=h)
                for h in range(1, LEVELS + 1)
            ]
        )
        body.append(
            [f"{d} (test)"]
            + [
                _cell(rows, ("auroc", "fpr95"), what="hscae", latent=8, distance=d, level=h)
                for h in range(1, LEVELS + 1)
            ]
        )
    lines += [tabulate(body, head, tablefmt="github"), ""]
    lines += ["## Post-hoc members alone", ""]
    head = [
        "member",
        *FIGURE_COLUMNS,
        "val: synthetic OOD accepted / AUROC",
    ]
    body = [
        [n, *(_cell(rows, k, what=n) for k in (*keys, ("val_ood_accepted", "val_auroc")))] for n in POST_HOC
    ]
    lines += [tabulate(body, head, tablefmt="github"), ""]
    lines += section(
        "The best either of two, chosen on validation",
        "Per seed, every pair of {odin, knn, vim, energy, hscae latent 8 at every distance and level} "
        "(two HSCAE cells excluded) is ranked by the share of synthetic OOD validation images it accepts at "
        "the validation threshold (ties: validation AUROC); the first is reported on the test set.",
    )
    head = [
        "seed",
        "chosen pair (of n)",
        *FIGURE_COLUMNS,
    ]
    body = [
        [
            r["seed"],
            f"{r['pair']} (of {r['candidates']})",
            *(" / ".join(f"{100 * r[k]:.2f}" for k in kk) for kk in keys),
        ]
        for r in _pick(rows, what="best-pair")
    ]
    if body:
        body.append(["mean", "", *(_cell(rows, kk, what="best-pair") for kk in keys)])
    lines += [tabulate(body, head, tablefmt="github"), ""]
    if timing:
        lines += ["## Speed (this machine: 2 CPU cores, one thread; other benchmark jobs may share them)", ""]
        head = [
            "seed",
            "autoencoder training (s)",
            "classifier forward (ms/image)",
            *(f"level {h}: ms/image (× classifier)" for h in range(1, LEVELS + 1)),
        ]
        body = [
            [
                t["seed"],
                f"{t.get('train_seconds', float('nan')):.0f}",
                f"{1000 * t['classifier_s_per_image']:.2f}",
            ]
            + [
                f"{1000 * t[f'level{h}_s_per_image']:.2f} ({t[f'level{h}_relative']:.1f}×)"
                for h in range(1, LEVELS + 1)
            ]
            for t in timing
        ]
        lines += [tabulate(body, head, tablefmt="github"), ""]
    return "\n".join(lines)


def write(out: Path, seeds: list[int], latents: list[int], rate: float) -> str:
    rows = collect(out, seeds, latents, rate)
    timing = []
    for seed in seeds:
        path = out / f"timing-seed{seed}.json"
        if path.exists():
            timing.append({"seed": seed, **json.loads(path.read_text())})
    text = render(rows, latents, rate, timing)
    atomic_write_text(out.with_suffix(".md"), text)
    atomic_write_text(out.with_suffix(".json"), json.dumps({"rows": rows, "timing": timing}, indent=1))
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--latents", default="8,6,10")
    ap.add_argument("--accept-rate", type=float, default=0.975)
    ap.add_argument("--out", type=Path, default=ROOT / "hscae")
    ap.add_argument("--recipe", default=DEFAULT_RECIPE, help="the classifier's recipe (oodlab list recipes)")
    ap.add_argument("--report", action="store_true", help="only rebuild the tables from saved scores")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    latents = [int(v) for v in args.latents.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if not args.report:
        disk = cache_dir() / "features"
        with features.using_cache(features.OutputsCache(max_entries=16, disk_dir=disk)):
            for seed in seeds:
                run_seed(
                    seed,
                    latents,
                    args.out,
                    log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True),
                    recipe_name=args.recipe,
                )
                write(args.out, seeds, latents, args.accept_rate)
    print(write(args.out, seeds, latents, args.accept_rate))


if __name__ == "__main__":
    main()
