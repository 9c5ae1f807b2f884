"""Speed benchmark: what each detector costs relative to one plain forward pass.

Every figure is a ratio to the plain forward throughput measured in the same run, so it holds
on any machine. Run from the repository root:

    .venv/bin/python benchmarks/speed.py                      # LeNet on fmnist-vs-mnist + small ResNet
    .venv/bin/python benchmarks/speed.py --skip-resnet --out /tmp/speed.md

Measured (see README.md "Speed"):

- plain forward throughput over the 20k test images of fmnist-vs-mnist (10k ID + 10k MNIST);
- per detector: fit time (its own pass over the training set included), scoring throughput
  alone (its own forward pass included), and that throughput as a ratio to the plain forward;
- all gradient-free detectors together from one shared pass, as a multiple of one forward pass;
- the same detectors each with its own forward passes (the naive path, kept only here): the
  speed-up of the shared path;
- fitting every feature-based detector together, as a multiple of one pass over the training set;
- ODIN's (T, ε) tuning: backward and forward passes over the validation set, counted;
- peak resident memory of fitting `knn` and `mahalanobis` on the training set (own process).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tabulate import tabulate

from oodlab import features
from oodlab.bench import build_suite, get_suite
from oodlab.data import ImageSet
from oodlab.detectors import create_detector, list_detectors
from oodlab.detectors.base import Detector
from oodlab.features import OutputsCache, extract
from oodlab.models import create_model
from oodlab.training import fit_or_load

#: Fixed hyperparameters for throughput (tuning cost is measured separately).
FIXED = {
    "odin": {"temperature": 1000.0, "noise": 0.0014},
    "temperature": {"temperature": 1000.0},
    "mahalanobis": {"noise": 0.0},
    "mahalanobis-ensemble": {"noise": 0.0},
    "fssd": {"perturbation": 0.0},
    "fssd-ensemble": {"perturbation": 0.0},
}
FIXED_GRADIENT = {"mahalanobis": {"noise": 0.0014}}


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def concat(name: str, *sets: ImageSet) -> ImageSet:
    xs = [s.x.astype(np.float32) / 255.0 if s.x.dtype == np.uint8 else s.x for s in sets]
    return ImageSet(name, np.concatenate(xs).astype(np.float32))


def make_detector(name: str, params: dict[str, Any] | None = None) -> Detector:
    return create_detector(name, **(params if params is not None else FIXED.get(name, {})))


def fit(det: Detector, model: torch.nn.Module, data: Any) -> Detector:
    return det.fit(model, data.id_train, id_val=data.id_val, ood_val=data.ood_val)


def measure_model(label: str, model: torch.nn.Module, data: Any, names: list[str]) -> dict[str, Any]:
    """All figures for one model."""
    test = concat(
        "test20k", data.id_test, *(s for k, s in data.ood_tests.items() if k not in ("gaussian", "uniform"))
    )
    extract(model, test.subset(slice(0, 512)))  # warm-up
    # The fastest of three plain passes: the reference every ratio divides by, taken at its best
    # so that a slow moment of the machine never flatters a detector.
    t_fwd = min(timed(lambda: extract(model, test))[1] for _ in range(3))
    fwd_ips = len(test) / t_fwd
    # For reference only: a user's own loop, model(x) in PyTorch's default memory layout (oodlab's
    # passes run conv models channels-last, so they are faster than this; ratios use the faster).
    t_user = min(timed(lambda: user_loop_forward(model, test))[1] for _ in range(2))
    print(f"[{label}] plain forward: {fwd_ips:.0f} images/s ({len(test)} images, {t_fwd:.2f} s)", flush=True)
    rows, fitted = [], {}
    for name in names:
        with features.using_cache(OutputsCache()):  # every detector pays for its own passes
            det, t_fit = timed(lambda: fit(make_detector(name), model, data))  # noqa: B023
            grad = "input_grad" in det.needs
            _, t_score = timed(lambda: det.score(test.tensor()) if grad else det.score_set(test))  # noqa: B023
        fitted[name] = det
        ips = len(test) / t_score
        rows.append(
            {
                "model": label,
                "detector": name,
                "gradient": grad,
                "fit_s": t_fit,
                "score_ips": ips,
                "ratio_to_forward": ips / fwd_ips,
            }
        )
        print(
            f"[{label}] {name}: fit {t_fit:.2f} s, score {ips:.0f} images/s ({ips / fwd_ips:.2f}x forward)",
            flush=True,
        )
    free = [n for n in names if "input_grad" not in fitted[n].needs]
    # Shared path: one pass with every tap, then every detector reads it.
    score_from_shared: dict[str, float] = {}
    with features.using_cache(OutputsCache()) as cache:
        taps = features.unique_specs(t for n in free for t in fitted[n].required_taps(model))
        t0 = time.perf_counter()
        _, t_shared_pass = timed(lambda: cache.get(model, test, taps))
        for n in free:
            _, score_from_shared[n] = timed(lambda: fitted[n].score_set(test))  # noqa: B023
        t_shared = time.perf_counter() - t0
    # Naive path: each detector runs its own forward pass on the raw images.
    with features.using_cache(OutputsCache(max_entries=0)):
        _, t_naive = timed(lambda: [fitted[n].score(test.tensor()) for n in free])
    # Fitting every gradient-free detector together: one shared pass over each set fitting reads
    # (training set, ID validation, OOD validation), as the bench runner does.
    fit_sets = [data.id_train, data.id_val, data.ood_val]
    t_fwd_fit_sets = min(timed(lambda: [extract(model, s) for s in fit_sets])[1] for _ in range(2))
    with features.using_cache(OutputsCache()) as cache:

        def fit_all() -> None:
            for s in fit_sets:
                cache.get(model, s, taps)
            for n in free:
                fit(make_detector(n), model, data)

        _, t_fit_all = timed(fit_all)
    summary = {
        "model": label,
        "forward_ips": fwd_ips,
        "default_layout_forward_ips": len(test) / t_user,
        "n_test": len(test),
        "n_train": len(data.id_train),
        "shared_all_free_x_forward": t_shared / t_fwd,
        "shared_pass_x_forward": t_shared_pass / t_fwd,
        "score_from_shared_x_forward": {n: t / t_fwd for n, t in score_from_shared.items()},
        "naive_over_shared": t_naive / t_shared,
        "fit_all_free_x_train_forward": t_fit_all / t_fwd_fit_sets,
        "fit_sets_images": sum(len(s) for s in fit_sets),
        "gradient_free": free,
    }
    print(
        f"[{label}] all {len(free)} gradient-free, shared pass: {t_shared / t_fwd:.2f}x one forward; "
        f"naive/shared {t_naive / t_shared:.1f}x; fitting them all: {t_fit_all / t_fwd_fit_sets:.2f}x one "
        "training pass",
        flush=True,
    )
    return {"rows": rows, "summary": summary}


@torch.no_grad()
def user_loop_forward(model: torch.nn.Module, images: ImageSet, batch_size: int = 256) -> None:
    """``model(x)`` over ``images`` in batches, in PyTorch's default layout: what a plain loop costs."""
    x = images.tensor()
    for i in range(0, len(x), batch_size):
        model(x[i : i + batch_size])


def odin_tuning_passes(model: torch.nn.Module, data: Any) -> dict[str, float]:
    """Count forward and backward passes (in units of the validation set) of ODIN's full tuning.

    Forward passes are counted by a hook on the model (images per call); backward passes by
    wrapping :func:`torch.autograd.grad`, the only way ODIN takes a gradient (images per call).
    """
    counts = {"forward_images": 0, "backward_images": 0}

    def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        counts["forward_images"] += len(args[0])

    real_grad = torch.autograd.grad

    def counting_grad(outputs: Any, inputs: Any, *a: Any, **kw: Any) -> Any:
        first = inputs[0] if isinstance(inputs, list | tuple) else inputs
        counts["backward_images"] += len(first)
        return real_grad(outputs, inputs, *a, **kw)

    handle = model.register_forward_pre_hook(hook)
    torch.autograd.grad = counting_grad  # type: ignore[assignment]
    try:
        det, t = timed(lambda: fit(create_detector("odin"), model, data))
    finally:
        torch.autograd.grad = real_grad  # type: ignore[assignment]
        handle.remove()
    chosen = det.tuning()["chosen"]
    n_val = chosen["n_id_val"] + chosen["n_ood_val"]  # the images tuning used (tune_max per set)
    n_t, n_eps = len(det.temperatures), len(det.noises)
    return {
        "seconds": t,
        "n_val": n_val,
        "temperatures": n_t,
        "noises": n_eps,
        "backward_passes": counts["backward_images"] / n_val,
        "forward_passes": counts["forward_images"] / n_val,
        "chosen": det.tuning()["chosen"],
    }


def _status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_child(name: str, suite: str, epochs: int | None, queue: Any) -> None:
    data, model = load(suite, epochs)
    base = _status_mib("VmRSS")
    # Reset the process's peak resident set (Linux: writing 5 to clear_refs), so the peak read
    # after fitting is the fit's own, not data loading's.
    Path("/proc/self/clear_refs").write_text("5")
    det, t = timed(lambda: fit(make_detector(name), model, data))
    peak = _status_mib("VmHWM")
    queue.put({"detector": name, "fit_s": t, "peak_rss_mib": peak, "before_fit_rss_mib": base})


def peak_memory(name: str, suite: str, epochs: int | None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(name, suite, epochs, queue))
    p.start()
    result = queue.get()
    p.join()
    return result


def load(suite_name: str, epochs: int | None) -> tuple[Any, torch.nn.Module]:
    suite = get_suite(suite_name)
    if epochs is not None:
        suite = dataclasses.replace(suite, train=dataclasses.replace(suite.train, epochs=epochs))
    data = build_suite(suite, seed=0)
    model, _ = fit_or_load(suite.train, data.id_train, progress=False)
    return data, model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="fmnist-vs-mnist")
    ap.add_argument("--epochs", type=int, default=None, help="override the suite's epochs (uses the cache)")
    ap.add_argument("--detectors", default="all")
    ap.add_argument("--resnet-width", type=float, default=0.25)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.md"))
    args = ap.parse_args(argv)
    names = list_detectors() if args.detectors == "all" else args.detectors.split(",")
    data, lenet = load(args.suite, args.epochs)
    results = [measure_model("lenet", lenet, data, names)]
    if not args.skip_resnet:
        torch.manual_seed(0)
        # Untrained weights: throughput does not depend on them (stated in the report).
        resnet = create_model("resnet18", num_classes=10, in_channels=1, width=args.resnet_width).eval()
        small = dataclasses.replace(data, id_train=data.id_train.subset(slice(0, 10000)))
        results.append(measure_model(f"resnet18-w{args.resnet_width}", resnet, small, names))
    odin = odin_tuning_passes(lenet, data) if "odin" in names else None
    memory = [peak_memory(n, args.suite, args.epochs) for n in ("knn", "mahalanobis") if n in names]
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpus": mp.cpu_count(),
    }
    write_report(args.out, results, odin, memory, env, args)


def write_report(
    out: Path,
    results: list[dict[str, Any]],
    odin: dict[str, Any] | None,
    memory: list[dict[str, Any]],
    env: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    lines = [
        "# Speed benchmark",
        "",
        f"`{' '.join(sys.argv)}` on {env['cpus']} CPU cores "
        f"({env['machine']}, torch {env['torch']}, {env['threads']} threads).",
        "",
    ]
    for res in results:
        s = res["summary"]
        lines += [
            f"## {s['model']}",
            "",
            f"Plain forward: **{s['forward_ips']:.0f} images/s** over {s['n_test']} test images "
            f"(oodlab's pass, channels-last; a `model(x)` loop in PyTorch's default layout: "
            f"{s['default_layout_forward_ips']:.0f} images/s); training set {s['n_train']} images.",
            "",
        ]
        table = [
            [
                r["detector"],
                "yes" if r["gradient"] else "",
                f"{r['fit_s']:.2f}",
                f"{r['score_ips']:.0f}",
                f"{r['ratio_to_forward']:.2f}",
            ]
            for r in res["rows"]
        ]
        lines += [
            tabulate(
                table, headers=["detector", "grad", "fit s", "score images/s", "× forward"], tablefmt="github"
            ),
            "",
        ]
        lines += [
            f"- all {len(s['gradient_free'])} gradient-free detectors from one shared pass: "
            f"**{s['shared_all_free_x_forward']:.2f}×** one forward pass — the pass with every tap "
            f"{s['shared_pass_x_forward']:.2f}×, then scoring from it: "
            + ", ".join(f"{n} {v:.2f}×" for n, v in s["score_from_shared_x_forward"].items() if v >= 0.01)
            + " (the others < 0.01× each)",
            f"- the same detectors each with its own forward passes take **{s['naive_over_shared']:.1f}×** "
            "as long as the shared path",
            f"- fitting all of them together: **{s['fit_all_free_x_train_forward']:.2f}×** one plain "
            f"forward pass over the sets fitting reads (training set + ID and OOD validation, "
            f"{s['fit_sets_images']} images)",
            "",
        ]
    if odin:
        lines += [
            "## ODIN tuning",
            "",
            f"{odin['temperatures']} temperatures × {odin['noises']} perturbation sizes on "
            f"{odin['n_val']} validation images: **{odin['backward_passes']:.1f} backward passes** and "
            f"**{odin['forward_passes']:.1f} forward passes** over the validation set (the budget: "
            f"{odin['temperatures']} backward, one forward per (T, ε) = "
            f"{odin['temperatures'] * odin['noises']}), {odin['seconds']:.1f} s; "
            f"chose T = {odin['chosen']['temperature']}, ε = {odin['chosen']['noise']}.",
            "",
        ]
    if memory:
        lines += [
            "## Peak memory of fitting (own process, resident set)",
            "",
            tabulate(
                [
                    [
                        m["detector"],
                        f"{m['before_fit_rss_mib']:.0f}",
                        f"{m['peak_rss_mib']:.0f}",
                        f"{m['fit_s']:.1f}",
                    ]
                    for m in memory
                ],
                headers=["detector", "RSS before fit MiB", "peak RSS while fitting MiB", "fit s"],
                tablefmt="github",
            ),
            "",
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(
        json.dumps(
            {"results": results, "odin": odin, "memory": memory, "environment": env}, indent=1, default=str
        )
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
