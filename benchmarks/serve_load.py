"""Load test of `oodlab serve` on loopback, against in-process scoring on the same machine.

The LeNet bundle of fmnist-vs-mnist (see ``_serve_common.make_bundle``) is served by a real
``oodlab serve`` process; C client threads, each with its own keep-alive connection, post
requests of B Fashion-MNIST images (``.npy``) for D seconds. In-process throughput is
``Bundle.score`` on the same B-image batches in this process, measured in phases interleaved
with the served ones (the machine's speed drifts). Figures: images/s, requests/s, latency
p50/p99 per request.

    .venv/bin/python benchmarks/serve_load.py [--clients 8] [--seconds 60] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import torch
from _serve_common import ROOT, Client, Server, free_port, make_bundle, npy, test_images

from oodlab.bundle import load_bundle


def served(port: int, batch: int, clients: int, seconds: float) -> dict[str, float]:
    bodies = [npy(test_images(batch, seed=i)) for i in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        c = Client(port)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            status, _ = c.post(bodies[i])
            latencies[i].append(time.perf_counter() - t0)
            errors[i] += status != 200
        c.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array([v for per in latencies for v in per])
    return {
        "requests": int(len(lat)),
        "errors": int(sum(errors)),
        "images_per_s": len(lat) * batch / wall,
        "requests_per_s": len(lat) / wall,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
    }


def in_process(bundle_dir: Path, batch: int, seconds: float) -> dict[str, float]:
    bundle = load_bundle(bundle_dir)
    x = torch.from_numpy(test_images(batch).astype(np.float32) / 255)
    n, lat = 0, []
    stop = time.monotonic() + seconds
    t0, cpu0 = time.perf_counter(), time.process_time()
    while time.monotonic() < stop:
        t1 = time.perf_counter()
        bundle.score(x)
        lat.append(time.perf_counter() - t1)
        n += batch
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "images_per_s": n / wall,
        # CPU seconds this process used per wall second: below the thread count when other
        # processes take the cores.
        "cpu_share": cpu / wall,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--bundle", type=Path, default=ROOT / "results" / "serve-bundle")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads, in-process and in the server")
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    bundle_dir = make_bundle(args.bundle)
    primary = json.loads((bundle_dir / "manifest.json").read_text())["primary"]
    port = free_port()
    server = Server(bundle_dir, port, threads=args.threads)
    result: dict[str, object] = {
        "detector": primary,
        "clients": args.clients,
        "seconds": args.seconds,
        "threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
    }
    try:
        phase = args.seconds / 4
        # Interleaved: in-process, served, in-process, served ... so drift hits both alike.
        for batch in (64, 1):
            inproc_a = in_process(bundle_dir, batch, phase)
            srv = served(port, batch, args.clients, args.seconds)
            inproc_b = in_process(bundle_dir, batch, phase)
            ref = (inproc_a["images_per_s"] + inproc_b["images_per_s"]) / 2
            result[f"batch{batch}"] = {
                "served": srv,
                "in_process": [inproc_a, inproc_b],
                "in_process_images_per_s": ref,
                "served_over_in_process": srv["images_per_s"] / ref,
            }
            print(
                f"{batch:3d}-image requests, {args.clients} clients, {args.seconds:.0f} s: served "
                f"{srv['images_per_s']:8.0f} images/s ({srv['requests_per_s']:.0f} req/s, "
                f"p50 {srv['p50_ms']:.1f} ms, "
                f"p99 {srv['p99_ms']:.1f} ms, {srv['errors']} errors); in-process {ref:8.0f} images/s "
                f"→ served/in-process {srv['images_per_s'] / ref:.2f}",
                flush=True,
            )
        _, health = Client(port).get("/health")
        result["server_counters"] = health
        print(f"server: {health}")
    finally:
        server.kill()
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
