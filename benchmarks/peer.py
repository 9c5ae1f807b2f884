"""Side by side with pytorch-ood 0.4.0: same networks, same images, one run, interleaved.

``make peer`` sets up ``.venv-peer`` (oodlab with ``constraints.txt`` plus pytorch-ood from
``benchmarks/peer-requirements.txt``; pytorch-ood is never a dependency of oodlab) and runs

    .venv-peer/bin/python benchmarks/peer.py

For every detector both libraries have, with the same untuned settings on both sides (ODIN at
T = 1000, ε = 0.0014; KNN k = 50; ViM with oodlab's default subspace dimension; ReAct at the
90th percentile; Mahalanobis on the penultimate layer without input preprocessing;
temperature scaling as each library defines it), each library is used the way its documentation
shows: oodlab ``create_detector(...).fit(model, id_train)`` and ``score_set(images)``
(oodlab runs one forward pass per image set and every detector reads it), pytorch-ood
``Detector(model).fit(loader)`` and ``predict(x)`` per batch of 128 (each detector runs the
network itself). Measured, in pairs whose order alternates, median over ``--repeats``:

1. **The whole table**: fit every shared detector on the ID training set and score the ID test
   set and every OOD test set of the suite (real and noise), wall time for each library;
2. **per detector**: fit time and scoring throughput on the 20,000 test images (10k ID + 10k
   real OOD), each library's own passes included; throughput also as a ratio to one plain
   forward pass (oodlab's, channels-last) timed right before it;
3. **KNN's search against its floor** (``benchmarks/knn_floor.py``);
4. **AUROC agreement** per detector and OOD set, from the table's scores, on the first model
   and on every further ``--suites`` model (scored once).

pytorch-ood imports torchvision at import time (for its model zoo and datasets, unused here);
PyPI's torchvision does not import beside the CPU torch build this project pins, so a
placeholder ``torchvision`` module is registered before the import when the real one fails.

Output: ``benchmarks/results/peer.md`` and ``peer.json``.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import platform
import sys
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from oodlab import features, metrics
from oodlab.bench.suites import build_suite, get_suite
from oodlab.data import ImageSet
from oodlab.detectors import create_detector, list_detectors
from oodlab.detectors.knn import l2_normalize
from oodlab.detectors.vim import default_dim
from oodlab.features import OutputsCache, extract
from oodlab.io import atomic_write_text
from oodlab.models.base import PENULTIMATE
from oodlab.training.trainer import fit_or_load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from knn_floor import matmul_topk_floor  # noqa: E402

ODIN_T, ODIN_EPS, KNN_K, REACT_P = 1000.0, 0.0014, 50, 90.0
BATCH = features.BATCH_SIZE
#: Why a pair's AUROCs may differ: its row is left out of the agreement target and explained.
NOTES = {
    "temperature": "definitions differ: oodlab tunes T for OOD separation on ID + synthetic OOD validation "
    "images; pytorch-ood fits T by likelihood on labelled ID validation images (calibration)",
    "mahalanobis": "definitions differ when the covariance is singular (ReLU units that never fire on the "
    "training set): pytorch-ood inverts the class-centred scatter plus a 1e-6 ridge in float32, oodlab "
    "takes the float64 pseudo-inverse; with pytorch-ood's ridge inverse in oodlab's scoring the AUROCs "
    "agree to the second decimal (`benchmarks/peer_mahalanobis.py`)",
}


def notes_for(names: Iterable[str]) -> dict[str, str]:
    """The :data:`NOTES` of the detectors ``names`` that have one."""
    return {n: NOTES[n] for n in names if n in NOTES}


# -- importing pytorch-ood without torchvision ---------------------------------------------


class _Placeholder(types.ModuleType):
    """Stands in for a torchvision module: any attribute is an inert mock (touched at import only)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return MagicMock(name=f"{self.__name__}.{name}")


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers every ``import torchvision[.…]`` with a :class:`_Placeholder` package."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _Placeholder(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def import_pytorch_ood() -> tuple[Any, str]:
    try:
        import torchvision  # noqa: F401

        placeholder = False
    except Exception:
        sys.modules.pop("torchvision", None)
        sys.meta_path.insert(0, _PlaceholderFinder())
        placeholder = True
    try:
        import pytorch_ood
        import pytorch_ood.detector as detectors
    except ImportError:
        raise SystemExit(
            "pytorch-ood is not installed in this environment: run `make peer` (it builds .venv-peer)"
        ) from None
    note = f"pytorch-ood {pytorch_ood.__version__}" + (" (torchvision placeholder)" if placeholder else "")
    print(note, flush=True)
    return detectors, pytorch_ood.__version__


# -- the pairs -----------------------------------------------------------------------------


class Penultimate(nn.Module):
    """The encoder pytorch-ood's feature detectors call: ``x ↦`` penultimate features ``(N, D)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_taps(x, {PENULTIMATE})[1][PENULTIMATE].flatten(1)


@dataclass
class Pair:
    name: str  # oodlab's detector
    params: dict[str, Any]
    theirs: str  # pytorch-ood's class
    build: Callable[[Any, nn.Module, Any], Any]  # (P, model, data) -> unfitted pytorch-ood detector
    fit_on: str | None  # "train", "val" or None (pytorch-ood fits nothing)
    gradient: bool = False


def pairs_for(model: nn.Module) -> list[Pair]:
    enc = Penultimate(model).eval()
    dim = default_dim(model.num_features)
    head = model.head
    return [
        Pair("msp", {}, "MaxSoftmax", lambda P, m, d: P.MaxSoftmax(m), None),
        Pair("energy", {}, "EnergyBased", lambda P, m, d: P.EnergyBased(m), None),
        Pair("maxlogit", {}, "MaxLogit", lambda P, m, d: P.MaxLogit(m), None),
        Pair("entropy", {}, "Entropy", lambda P, m, d: P.Entropy(m), None),
        Pair(
            "temperature",
            {},
            "TemperatureScaling",
            lambda P, m, d: P.TemperatureScaling(m),
            "val",
        ),
        Pair(
            "odin",
            {"temperature": ODIN_T, "noise": ODIN_EPS},
            "ODIN",
            lambda P, m, d: P.ODIN(m, eps=ODIN_EPS, temperature=ODIN_T),
            None,
            gradient=True,
        ),
        Pair(
            "mahalanobis",
            {"noise": 0.0},
            "Mahalanobis",
            lambda P, m, d: P.Mahalanobis(enc),
            "train",
        ),
        Pair("knn", {"k": KNN_K}, "KNN", lambda P, m, d: P.KNN(enc, k=KNN_K), "train"),
        Pair(
            "vim",
            {"dim": dim},
            "ViM",
            lambda P, m, d: P.ViM(enc, d=dim, w=head.weight.detach(), b=head.bias.detach()),
            "train",
        ),
        Pair(
            "react",
            {"percentile": REACT_P},
            "ReAct",
            lambda P, m, d: P.ReAct(backbone=enc, head=head, percentile=REACT_P / 100),
            "train",
        ),
    ]


# -- running each library --------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def loader(images: ImageSet) -> DataLoader:
    return DataLoader(TensorDataset(images.tensor(), images.labels()), batch_size=BATCH, shuffle=False)


def ours_fit(pair: Pair, model: nn.Module, data: Any) -> Any:
    return create_detector(pair.name, **pair.params).fit(
        model, data.id_train, id_val=data.id_val, ood_val=data.ood_val
    )


def theirs_fit(P: Any, pair: Pair, model: nn.Module, data: Any) -> Any:
    det = pair.build(P, model, data)
    if pair.fit_on is not None:
        if hasattr(det, "to"):
            det.to("cpu")
        det.fit(loader(data.id_train if pair.fit_on == "train" else data.id_val))
    return det


def theirs_score(det: Any, x: Tensor, gradient: bool) -> Tensor:
    """pytorch-ood's outlier scores, negated to oodlab's convention (higher = more ID)."""
    parts = []
    for i in range(0, len(x), BATCH):
        if gradient:
            parts.append(det.predict(x[i : i + BATCH]).detach())
        else:
            with torch.no_grad():
                parts.append(det.predict(x[i : i + BATCH]))
    return -torch.cat(parts).to(torch.float64)


def ours_table(pairs: list[Pair], model: nn.Module, data: Any) -> dict[str, dict[str, np.ndarray]]:
    """Every shared detector fitted and scored on the test sets, oodlab's way (one pass per set)."""
    sets = {"id": data.id_test, **data.ood_tests}
    with features.using_cache(OutputsCache()):
        out = {}
        for pair in pairs:
            det = ours_fit(pair, model, data)
            out[pair.name] = {k: det.score_set(s).numpy() for k, s in sets.items()}
    return out


def theirs_table(P: Any, pairs: list[Pair], model: nn.Module, data: Any) -> dict[str, dict[str, np.ndarray]]:
    sets = {"id": data.id_test, **data.ood_tests}
    tensors = {k: s.tensor() for k, s in sets.items()}
    out = {}
    for pair in pairs:
        det = theirs_fit(P, pair, model, data)
        out[pair.name] = {k: theirs_score(det, x, pair.gradient).numpy() for k, x in tensors.items()}
    return out


def aurocs(table: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    return {
        name: {k: 100 * metrics.auroc(s["id"], v) for k, v in s.items() if k != "id"}
        for name, s in table.items()
    }


def concat(name: str, *sets: ImageSet) -> ImageSet:
    xs = [s.x.astype(np.float32) / 255.0 if s.x.dtype == np.uint8 else s.x for s in sets]
    return ImageSet(name, np.concatenate(xs).astype(np.float32))


def real_ood(data: Any) -> ImageSet:
    return next(s for k, s in data.ood_tests.items() if k not in ("gaussian", "uniform"))


def load(suite_name: str, n_train: int | None = None, n_test: int | None = None) -> tuple[Any, nn.Module]:
    """The suite's seed-0 data and LeNet (trained on the whole training set); then, for a
    shorter run, a seeded sample of ``n_train`` training and ``n_test`` images per test set,
    the same images for both libraries."""
    suite = get_suite(suite_name)
    data = build_suite(suite, seed=0)
    model, _ = fit_or_load(suite.train, data.id_train, progress=False)
    rng = np.random.default_rng(0)

    def sample(s: ImageSet, n: int | None) -> ImageSet:
        if n is None or n >= len(s):
            return s
        return s.subset(np.sort(rng.choice(len(s), size=n, replace=False)))

    data = replace(
        data,
        id_train=sample(data.id_train, n_train),
        id_test=sample(data.id_test, n_test),
        ood_tests={k: sample(v, n_test) for k, v in data.ood_tests.items()},
    )
    return data, model.eval()


# -- the measurements ------------------------------------------------------------------------


def alternate(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> list[tuple[float, float]]:
    """``repeats`` pairs ``(t_a, t_b)``, ``a`` first in even pairs and ``b`` first in odd ones."""
    runs = []
    for r in range(repeats):
        if r % 2 == 0:
            ta, tb = timed(a)[1], timed(b)[1]
        else:
            tb, ta = timed(b)[1], timed(a)[1]
        runs.append((ta, tb))
    return runs


def per_detector(
    P: Any, pairs: list[Pair], model: nn.Module, data: Any, test: ImageSet, repeats: int
) -> list[dict[str, Any]]:
    x = test.tensor()

    def forward() -> Any:
        return extract(model, test)

    rows = []
    for pair in pairs:
        fitted: dict[str, Any] = {}

        def fit_ours(pair: Pair = pair, fitted: dict[str, Any] = fitted) -> None:
            fitted["ours"] = features_free(lambda: ours_fit(pair, model, data))

        def fit_theirs(pair: Pair = pair, fitted: dict[str, Any] = fitted) -> None:
            fitted["theirs"] = theirs_fit(P, pair, model, data)

        fits = alternate(fit_ours, fit_theirs, repeats)
        ours, theirs = fitted["ours"], fitted["theirs"]
        scores = []
        for r in range(repeats):
            _, t_ref = timed(forward)
            if r % 2 == 0:
                t_o = timed(lambda: features_free(lambda: ours.score_set(test)))[1]  # noqa: B023
                t_t = timed(lambda: theirs_score(theirs, x, pair.gradient))[1]  # noqa: B023
            else:
                t_t = timed(lambda: theirs_score(theirs, x, pair.gradient))[1]  # noqa: B023
                t_o = timed(lambda: features_free(lambda: ours.score_set(test)))[1]  # noqa: B023
            scores.append((t_ref, t_o, t_t))
        row = {
            "detector": pair.name,
            "pytorch_ood": pair.theirs,
            "gradient": pair.gradient,
            "fit_s_oodlab": float(np.median([a for a, _ in fits])) if pair.fit_on else 0.0,
            "fit_s_pytorch_ood": float(np.median([b for _, b in fits])) if pair.fit_on else 0.0,
            "fit_runs": fits,
            "score_ips_oodlab": len(test) / float(np.median([o for _, o, _ in scores])),
            "score_ips_pytorch_ood": len(test) / float(np.median([t for _, _, t in scores])),
            "x_forward_oodlab": float(np.median([r / o for r, o, _ in scores])),
            "x_forward_pytorch_ood": float(np.median([r / t for r, _, t in scores])),
            # > 1: oodlab faster; each pair's ratio, then the median
            "score_speedup": float(np.median([t / o for _, o, t in scores])),
            "fit_speedup": float(np.median([b / a for a, b in fits])) if pair.fit_on else None,
            "score_runs": scores,
        }
        rows.append(row)
        print(
            f"{pair.name}: fit {row['fit_s_oodlab']:.2f} s vs {row['fit_s_pytorch_ood']:.2f} s; score "
            f"{row['x_forward_oodlab']:.2f}x vs {row['x_forward_pytorch_ood']:.2f}x forward "
            f"(oodlab {row['score_speedup']:.2f}x as fast)",
            flush=True,
        )
    return rows


def features_free(fn: Callable[[], Any]) -> Any:
    """``fn()`` with an empty outputs cache, so oodlab pays for every pass it makes."""
    with features.using_cache(OutputsCache()):
        return fn()


def knn_floor(model: nn.Module, data: Any, test: ImageSet, repeats: int) -> dict[str, Any]:
    """oodlab's exact KNN search (k = 50, from the shared pass) against its floor, in pairs."""
    det = ours_fit(Pair("knn", {"k": KNN_K}, "KNN", lambda *a: None, "train"), model, data)
    z = extract(model, test, (PENULTIMATE,)).tap(PENULTIMATE)
    queries = l2_normalize(z)[:, det.live_].contiguous()
    out = extract(model, test, (PENULTIMATE,))
    runs = alternate(
        lambda: det.score_outputs(out), lambda: matmul_topk_floor(queries, det.bank_, KNN_K), repeats
    )
    return {
        "bank": list(det.bank_.shape),
        "queries": len(queries),
        "search_s": float(np.median([a for a, _ in runs])),
        "floor_s": float(np.median([b for _, b in runs])),
        "search_x_floor": float(np.median([a / b for a, b in runs])),
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--suites",
        default="fmnist-vs-mnist,mnist-holdout0,mnist-vs-fmnist",
        help="models (suite LeNets, seed 0): the first is timed, every one is checked for AUROC",
    )
    ap.add_argument("--repeats", type=int, default=3, help="pairs per timing (median)")
    ap.add_argument("--table-repeats", type=int, default=3, help="pairs of whole-table runs (median)")
    ap.add_argument("--detectors", default=None, help="comma-separated subset of the shared detectors")
    ap.add_argument("--n-train", type=int, default=None, help="fit on a seeded sample of this many images")
    ap.add_argument("--n-test", type=int, default=None, help="score a seeded sample of each test set")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/peer.md"))
    ap.add_argument(
        "--from-json", action="store_true", help="only rewrite the tables from --out's .json (notes as now)"
    )
    args = ap.parse_args(argv)
    if args.from_json:
        r = json.loads(args.out.with_suffix(".json").read_text())
        r["notes"] = notes_for(d["detector"] for d in r["detectors"])
        write(args.out, r)
        return
    P, version = import_pytorch_ood()
    torch.manual_seed(0)
    suites = args.suites.split(",")
    data, model = load(suites[0], args.n_train, args.n_test)
    pairs = pairs_for(model)
    if args.detectors:
        keep = args.detectors.split(",")
        pairs = [p for p in pairs if p.name in keep]
    test = concat("test20k", data.id_test, real_ood(data))
    extract(model, test.subset(slice(0, 512)))  # warm-up
    # 1. the whole table, both libraries, interleaved
    tables: dict[str, Any] = {}

    def run_ours() -> None:
        tables["oodlab"] = ours_table(pairs, model, data)

    def run_theirs() -> None:
        tables["pytorch_ood"] = theirs_table(P, pairs, model, data)

    table_runs = alternate(run_ours, run_theirs, args.table_repeats)
    print(
        f"whole table: oodlab {[round(a, 1) for a, _ in table_runs]} s, pytorch-ood "
        f"{[round(b, 1) for _, b in table_runs]} s",
        flush=True,
    )
    agreement = {
        suites[0]: {"oodlab": aurocs(tables["oodlab"]), "pytorch_ood": aurocs(tables["pytorch_ood"])}
    }
    # 2. per detector; 3. KNN's floor
    rows = per_detector(P, pairs, model, data, test, args.repeats)
    floor = knn_floor(model, data, test, args.repeats) if any(p.name == "knn" for p in pairs) else None
    if floor:
        print(f"knn search {floor['search_x_floor']:.2f}x its floor", flush=True)
    # 4. AUROC on the other models
    for name in suites[1:]:
        d, m = load(name, args.n_train, args.n_test)
        ps = [p for p in pairs_for(m) if p.name in {q.name for q in pairs}]
        agreement[name] = {
            "oodlab": aurocs(ours_table(ps, m, d)),
            "pytorch_ood": aurocs(theirs_table(P, ps, m, d)),
        }
        print(f"AUROC checked on {name}", flush=True)
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_ood": version,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }
    result = {
        "suites": suites,
        "n_test": len(test),
        "n_train": len(data.id_train),
        "n_per_test_set": {k: len(v) for k, v in {"id": data.id_test, **data.ood_tests}.items()},
        "command": " ".join(["benchmarks/peer.py", *sys.argv[1:]]),
        "table_runs": table_runs,
        "table_s_oodlab": float(np.median([a for a, _ in table_runs])),
        "table_s_pytorch_ood": float(np.median([b for _, b in table_runs])),
        "table_speedup": float(np.median([b / a for a, b in table_runs])),
        "detectors": rows,
        "knn_floor": floor,
        "auroc": agreement,
        "notes": notes_for(p.name for p in pairs),
        "not_in_pytorch_ood": [n for n in list_detectors() if n not in {p.name for p in pairs_for(model)}],
        "environment": env,
        "repeats": args.repeats,
        "table_repeats": args.table_repeats,
    }
    write(args.out, result)


def write(out: Path, r: dict[str, Any]) -> None:
    env = r["environment"]
    lines = [
        "# oodlab vs pytorch-ood, side by side",
        "",
        f"`{r['command']}` (`make peer` runs it with defaults): pytorch-ood {env['pytorch_ood']} and oodlab "
        "in one process "
        f"(torch {env['torch']}, {env['threads']} threads, {env['cpu_capability']} kernels), the seed-0 "
        f"suite LeNets, untuned settings on both sides. The machine's speed drifts: every "
        f"comparison is a ratio within pairs run back to back, order alternating, median over "
        f"{r['repeats']} pairs ({r['table_repeats']} for the whole table).",
        "",
        f"## The whole table ({r['suites'][0]})",
        "",
        f"Every shared detector fitted on the ID training set ({r['n_train']:,} images) and scored on the ID "
        "test set and each OOD test set ("
        + ", ".join(f"{k} {v:,}" for k, v in r["n_per_test_set"].items())
        + "): "
        f"oodlab **{r['table_s_oodlab']:.1f} s**, pytorch-ood **{r['table_s_pytorch_ood']:.1f} s** "
        f"(median); oodlab **{r['table_speedup']:.2f}×** as fast (median of the pairs' ratios; target ≥ 2×).",
        "",
        f"## Per detector ({r['n_test']:,} test images; fit on the training set)",
        "",
        "| detector | pytorch-ood | fit s oodlab | fit s pytorch-ood | score images/s oodlab | "
        "score images/s pytorch-ood | × forward oodlab | × forward pytorch-ood | oodlab speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in r["detectors"]:
        fit = f"{d['fit_speedup']:.2f}× fit, " if d["fit_speedup"] is not None else ""
        lines.append(
            f"| `{d['detector']}` | `{d['pytorch_ood']}` | {d['fit_s_oodlab']:.2f} | "
            f"{d['fit_s_pytorch_ood']:.2f} | "
            f"{d['score_ips_oodlab']:.0f} | {d['score_ips_pytorch_ood']:.0f} | {d['x_forward_oodlab']:.2f} | "
            f"{d['x_forward_pytorch_ood']:.2f} | {fit}{d['score_speedup']:.2f}× score |"
        )
    lines += [
        "",
        "Speed-up: pytorch-ood's time over oodlab's within each pair, median (> 1: oodlab faster; the "
        "target: no detector below 0.91). × forward: throughput over that of one plain oodlab forward "
        "pass timed right before.",
    ]
    f = r.get("knn_floor")
    if f:
        lines += [
            "",
            f"KNN's exact search (k = {KNN_K}, {f['queries']:,} queries against a {f['bank'][0]:,} × "
            f"{f['bank'][1]} bank, from the shared pass): {f['search_s']:.2f} s against its floor "
            f"{f['floor_s']:.2f} s (the same blocked matmul + top-k, `benchmarks/knn_floor.py`): "
            f"**{f['search_x_floor']:.2f}×** (target ≤ 1.3×).",
        ]
    lines += ["", "## AUROC agreement (%)", ""]
    worst = 0.0
    for suite, a in r["auroc"].items():
        lines += [
            f"### {suite}",
            "",
            "| detector | OOD set | oodlab | pytorch-ood | Δ |",
            "|---|---|---|---|---|",
        ]
        for name, per_set in a["oodlab"].items():
            for k, v in per_set.items():
                w = a["pytorch_ood"][name][k]
                if name not in r["notes"]:
                    worst = max(worst, abs(v - w))
                lines.append(f"| `{name}` | {k} | {v:.2f} | {w:.2f} | {v - w:+.3f} |")
        lines.append("")
    lines.append(f"Largest |Δ| where the definitions match: **{worst:.4f}** AUROC points (target ≤ 0.01).")
    for name, note in r["notes"].items():
        lines.append(f"- `{name}`: {note}.")
    lines.append(
        "- No pytorch-ood counterpart with the same definition, so not in the comparison: "
        + ", ".join(f"`{n}`" for n in r["not_in_pytorch_ood"])
        + "."
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_text(out.with_suffix(".json"), json.dumps(r, indent=1, default=str))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
