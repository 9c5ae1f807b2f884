"""Banks of a million: KNN, Mahalanobis and ViM on a synthetic 1,200,000 × 512 feature bank.

The size of ImageNet's training set with ResNet-50-sized features (2.46 GB as float32),
generated, not trained: 1,000 classes of 1,200 features each, ``relu(c_y + ε)`` with class
centres ``c ~ N(0, I)`` and ``ε ~ N(0, I)`` (non-negative, as post-ReLU features are). The
10,000 queries are half new draws from the same classes (ID) and half from 200 other centres
(OOD); ViM's head is the normalised class centres. Run from the repository root:

    .venv/bin/python benchmarks/bank.py                   # everything, about an hour on 2 busy cores
    .venv/bin/python benchmarks/bank.py --n 100000 --out /tmp/bank.md   # a quick look

Each detector runs in its own process, which generates the bank (seeded), fits and scores, and
reports its peak resident memory above what the process held before the bank was made, as a
multiple of the bank's size (target ≤ 2×). Times are set against a floor measured in the same
process, in pairs, alternating which goes first (median over ``--repeats`` pairs):

- ``knn`` (exact, k = 50): the search against ``benchmarks/knn_floor.py``, the same blocked
  bank × queries products plus a top-k per block (target: within 1.3× of it). The bank is
  normalised in place (``fit_features(copy=False)``), so no second bank-sized array exists.
- ``mahalanobis`` and ``vim``: fitting against the ``D × D`` product of the bank with itself in
  float64 blocks (the least a covariance costs), scoring against a plain ``queries × D`` product.
- ``knn index="ivf"`` (needs ``pip install 'oodlab[faiss]'``): build and search time, speed-up
  over the exact search, and recall@k of its k nearest neighbours against the exact ones on
  ``--recall-queries`` of the queries.

Output: ``benchmarks/results/bank.md`` and ``bank.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oodlab.detectors import create_detector
from oodlab.detectors.knn import l2_normalize, search_blocks
from oodlab.io import atomic_write_text
from oodlab.memory import format_bytes, require_memory
from oodlab.metrics import auroc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from knn_floor import matmul_topk_floor  # noqa: E402

BLOCK = 65536


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_bank(
    n: int, dim: int, classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bank ``(n, dim)`` float32, its labels ``(n,)`` and the class centres, block by block."""
    require_memory(4 * n * dim, f"the synthetic bank ({n} × {dim} float32)", "pass a smaller --n")
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.arange(n) % classes
    bank = torch.empty(n, dim)
    for s in range(0, n, BLOCK):
        block = bank[s : s + BLOCK]
        torch.randn(block.shape, generator=g, out=block)
        block += centres[labels[s : s + BLOCK]]
        block.relu_()
    return bank, labels, centres


def make_queries(n: int, centres: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, int]:
    """``n`` queries: the first half from the bank's classes (ID), the rest (OOD) from 200 new
    centres, each the mean of two of the bank's (between classes, so not trivially far)."""
    g = torch.Generator().manual_seed(seed)
    n_id = n // 2
    pairs_ = torch.randint(len(centres), (200, 2), generator=g)
    novel = centres[pairs_].mean(dim=1)
    ids = torch.randint(len(centres), (n_id,), generator=g)
    oods = torch.randint(len(novel), (n - n_id,), generator=g)
    x = torch.randn(n, centres.shape[1], generator=g)
    x[:n_id] += centres[ids]
    x[n_id:] += novel[oods]
    return x.relu_(), n_id


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def pairs(fn: Any, floor: Any, repeats: int) -> tuple[list[float], list[float], Any]:
    """``repeats`` pairs of (floor, fn), alternating which runs first; times and fn's last result."""
    t_fn, t_floor, result = [], [], None
    for r in range(repeats):
        order = ("floor", "fn") if r % 2 == 0 else ("fn", "floor")
        for which in order:
            if which == "floor":
                t_floor.append(timed(floor)[1])
            else:
                result, t = timed(fn)
                t_fn.append(t)
    return t_fn, t_floor, result


def gram_floor(bank: torch.Tensor) -> torch.Tensor:
    """``Σ_b X_bᵀ X_b`` in float64 over blocks: the one product any covariance of the bank needs."""
    g = torch.zeros(bank.shape[1], bank.shape[1], dtype=torch.float64)
    for block in bank.split(BLOCK):
        b64 = block.to(torch.float64)
        g += b64.T @ b64
    return g


def child(kind: str, args: dict[str, Any], queue: Any) -> None:
    torch.manual_seed(0)
    before = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to now
    (bank, labels, centres), t_gen = timed(lambda: make_bank(args["n"], args["dim"], args["classes"]))
    queries, n_id = make_queries(args["queries"], centres)
    bank_bytes = bank.numel() * 4
    k, repeats = args["k"], args["repeats"]
    res: dict[str, Any] = {"detector": kind, "generate_s": t_gen}
    if kind == "knn":
        det, t_fit = timed(lambda: create_detector("knn", k=k).fit_features(bank, copy=False))
        m = args["knn_queries"]  # half ID, half OOD, from the same queries as the others
        queries = torch.cat([queries[: m // 2], queries[n_id : n_id + m - m // 2]])
        n_id = m // 2
        nq = l2_normalize(queries)
        t_search, t_floor, scores = pairs(
            lambda: det.score_features(queries), lambda: matmul_topk_floor(nq, det.bank_, k), repeats
        )
        res.update(fit_s=t_fit, search_s=t_search, floor_s=t_floor, queries=len(queries))
        res["blocks"] = search_blocks(len(bank), len(queries))
    elif kind == "mahalanobis":
        t_fits, t_floor, det = pairs(
            lambda: create_detector("mahalanobis", noise=0.0).fit_features(bank, labels),
            lambda: gram_floor(bank),
            repeats,
        )
        q64 = queries.to(torch.float64)
        t_score, t_score_floor, scores = pairs(
            lambda: det.score_features(queries), lambda: q64 @ det.precision_, repeats
        )
        res.update(fit_s=t_fits, fit_floor_s=t_floor, score_s=t_score, score_floor_s=t_score_floor)
    elif kind == "vim":
        w = torch.nn.functional.normalize(centres, dim=1)
        t_fits, t_floor, det = pairs(
            lambda: create_detector("vim").fit_features(bank, w), lambda: gram_floor(bank), repeats
        )
        q64 = queries.to(torch.float64)
        t_score, t_score_floor, scores = pairs(
            lambda: det.score_features(queries), lambda: q64 @ det.null_space_, repeats
        )
        res.update(
            fit_s=t_fits, fit_floor_s=t_floor, score_s=t_score, score_floor_s=t_score_floor, dim=det.dim_
        )
    elif kind == "ivf":
        nlist = args["nlist"]
        det, t_build = timed(
            lambda: create_detector("knn", k=k, index="ivf", nlist=nlist, nprobe=args["nprobe"]).fit_features(
                bank
            )
        )
        index = det._index
        t_ivf = []
        for _ in range(repeats):
            scores, t = timed(lambda: det.score_features(queries))
            t_ivf.append(t)
        # exact neighbours of some of the queries, for recall@k: the bank normalised in place
        m = min(args["recall_queries"], len(queries))
        sub = torch.cat([torch.arange(m // 2), n_id + torch.arange(m - m // 2)])
        nq = l2_normalize(queries[sub])
        _, found = index.search(np.ascontiguousarray(nq.numpy()), k)
        l2_normalize(bank, out=bank)
        exact = exact_ids(nq, bank, k)
        recall = float(np.mean([len(set(found[i]) & set(exact[i].tolist())) / k for i in range(len(sub))]))
        exact_det = create_detector("knn", k=k).fit_features(bank, copy=False)
        s_exact_sub = exact_det.score_features(queries[sub])
        s_ivf_sub = scores[sub]
        res.update(
            build_s=t_build,
            search_s=t_ivf,
            nlist=index.nlist,
            nprobe=index.nprobe,
            recall_at_k=recall,
            recall_queries=m,
            kth_distance_rel_err=float(((s_ivf_sub - s_exact_sub).abs() / s_exact_sub.abs()).median()),
        )
    s = scores.numpy()
    res["auroc"] = float(auroc(s[:n_id], s[n_id:]))
    res["peak_above_start_bytes"] = (status_mib("VmHWM") - before) * 2**20
    res["bank_bytes"] = bank_bytes
    res["peak_x_bank"] = res["peak_above_start_bytes"] / bank_bytes
    queue.put(res)


def exact_ids(queries: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(len(queries), k)`` of the exact k nearest rows of ``bank`` (float32 ranking)."""
    bank_sq = torch.cat([(b * b).sum(1) for b in bank.split(BLOCK)])
    vals, idx = [], []
    for s in range(0, len(bank), BLOCK):
        d = bank_sq[s : s + BLOCK] - 2 * queries @ bank[s : s + BLOCK].T
        v, i = torch.topk(d, min(k, d.shape[1]), dim=1, largest=False)
        vals.append(v)
        idx.append(i + s)
    _, pos = torch.topk(torch.cat(vals, 1), k, dim=1, largest=False)
    return torch.cat(idx, 1).gather(1, pos)


def run_child(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=child, args=(kind, args, queue))
    p.start()
    res = queue.get()
    p.join()
    print(json.dumps(res, default=str), flush=True)
    return res


def med(v: Any) -> float:
    return float(np.median(v)) if isinstance(v, list) else float(v)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--knn-queries", type=int, default=None, help="queries of the exact KNN pairs (default --queries)"
    )
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--recall-queries", type=int, default=1000)
    ap.add_argument("--detectors", default="mahalanobis,vim,knn,ivf")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bank.md"))
    a = ap.parse_args(argv)
    a.knn_queries = a.knn_queries or a.queries
    args = vars(a).copy()
    args.pop("out")
    results = {}
    for kind in a.detectors.split(","):
        if kind == "ivf":
            try:
                import faiss  # noqa: F401
            except ImportError:
                print("skipping ivf: faiss is not installed (pip install 'oodlab[faiss]')", flush=True)
                continue
        results[kind] = run_child(kind, args)
        write(a, args, results, environment())  # what is finished so far


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": mp.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def write(a: argparse.Namespace, args: dict[str, Any], results: dict[str, Any], env: dict[str, Any]) -> None:
    bank = 4 * a.n * a.dim
    lines = [
        "# Banks of a million",
        "",
        f"`{' '.join(['benchmarks/bank.py', *sys.argv[1:]])}`: a synthetic {a.n:,} × {a.dim} float32 bank "
        f"({format_bytes(bank)}; {a.classes} classes), {a.queries:,} queries (half ID, half OOD), "
        f"k = {a.k}; {env['cpus']} CPU cores shared with other jobs ({env['cpu_capability']} kernels, "
        f"torch {env['torch']}, {env['threads']} threads). Times are medians over {a.repeats} pairs "
        "with their floor, each pair in the same process, alternating which runs first. Peak memory: "
        "the process's peak resident set above what it held before making the bank (bank included).",
        "",
        "| detector | fit s | score s | floor s | × floor | peak memory | × bank | AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    r = results.get("knn")
    if r:
        lines.append(
            f"| `knn` exact, k = {a.k} | {r['fit_s']:.1f} | {med(r['search_s']):.1f} "
            f"({r['queries']:,} queries) | "
            f"{med(r['floor_s']):.1f} (matmul + top-k) | "
            f"**{np.median([s / f for s, f in zip(r['search_s'], r['floor_s'], strict=True)]):.2f}** | "
            f"{format_bytes(r['peak_above_start_bytes'])} | **{r['peak_x_bank']:.2f}** | "
            f"{100 * r['auroc']:.2f} |"
        )
    for kind in ("mahalanobis", "vim"):
        r = results.get(kind)
        if not r:
            continue
        fit_x = np.median([s / f for s, f in zip(r["fit_s"], r["fit_floor_s"], strict=True)])
        score_x = np.median([s / f for s, f in zip(r["score_s"], r["score_floor_s"], strict=True)])
        lines.append(
            f"| `{kind}` | {med(r['fit_s']):.1f} (**{fit_x:.2f}×** its floor {med(r['fit_floor_s']):.1f} s, "
            f"the bank's float64 Gram product) | {med(r['score_s']):.2f} | "
            f"{med(r['score_floor_s']):.3f} (queries × D product) | {score_x:.1f} | "
            f"{format_bytes(r['peak_above_start_bytes'])} | **{r['peak_x_bank']:.2f}** | "
            f"{100 * r['auroc']:.2f} |"
        )
    r = results.get("ivf")
    if r:
        exact = results.get("knn")
        speedup = f"{med(exact['search_s']) / med(r['search_s']):.1f}×" if exact else "n/a"
        lines += [
            "",
            f'**faiss IVF** (`knn index="ivf" nlist={r["nlist"]} nprobe={r["nprobe"]}`, '
            "`pip install 'oodlab[faiss]'`): "
            f"build {r['build_s']:.1f} s, search {med(r['search_s']):.1f} s for {a.queries:,} queries "
            f"(**{speedup}** faster than the exact search above), recall@{a.k} **{r['recall_at_k']:.3f}** "
            f"against the exact {a.k} nearest on {r['recall_queries']} queries, median relative error of "
            f"the k-th distance {r['kth_distance_rel_err']:.4f}, AUROC {100 * r['auroc']:.2f}; peak memory "
            f"{format_bytes(r['peak_above_start_bytes'])} ({r['peak_x_bank']:.2f}× the bank: the caller's "
            "bank plus the index's own copy).",
        ]
    out = a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + "\n")
    atomic_write_text(
        out.with_suffix(".json"),
        json.dumps({"args": args, "results": results, "environment": env}, indent=1, default=str),
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
