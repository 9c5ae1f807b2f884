"""Executors: where the network tasks and cell tasks of a benchmark grid run.

The runner expresses a grid as :class:`~oodlab.bench.runner.NetworkJob` s: each job's *network
task* trains or loads one network (and runs its shared forward passes), then each of its *cell
tasks* fits and scores one detector on that network. An executor runs those two functions and
hands every finished cell back to the driver, which alone writes the results folder (so a run
interrupted anywhere resumes from the finished cells). Both executors run the same functions:

- :class:`InProcessExecutor` (the default): one job after another in this process.
- :class:`RayExecutor` (``oodlab bench --executor ray [--address ADDR]``, extra ``oodlab[ray]``):
  every network and every cell is a Ray task; a cell task starts once its network task is done
  and receives the network from Ray's object store. Ray retries a task whose worker died.

Cells are deterministic per seed *and torch thread count* (PyTorch's CPU kernels split their
sums by thread), so a Ray task runs torch with as many threads as CPUs it asks for
(:class:`TaskResources`), by default as many as this process uses: then a Ray run equals an
in-process run row for row.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from oodlab.errors import OodlabError

if TYPE_CHECKING:
    from oodlab.bench.cells import CellSpec
    from oodlab.bench.runner import BuiltNetwork, CellResult, NetworkJob

#: What ``--executor`` accepts.
EXECUTORS = ("in-process", "ray")
RAY_INSTALL = "pip install 'oodlab[ray]'"
#: Tries (about a second each) to reach the head of a Ray cluster named by ``--address``.
CONNECT_TRIES = 8

Log = Callable[[str], None]


class NetworkFn(Protocol):
    def __call__(self, job: NetworkJob, *, log: Log, on_start: Log = ...) -> BuiltNetwork: ...


class CellFn(Protocol):
    def __call__(
        self, job: NetworkJob, spec: CellSpec, built: BuiltNetwork, *, log: Log, on_start: Log = ...
    ) -> CellResult: ...


CellDone = Callable[["NetworkJob", "CellSpec", "CellResult"], None]


class Executor(Protocol):
    """Runs a grid's network and cell tasks; ``on_cell`` is called in this process for each cell."""

    name: str

    def start(self) -> None:
        """Get ready (connect to a cluster); raise :class:`OodlabError` if that is impossible."""

    def run(
        self,
        jobs: Sequence[NetworkJob],
        make_network: NetworkFn,
        run_cell: CellFn,
        on_cell: CellDone,
        *,
        log: Log,
        on_start: Log,
    ) -> None: ...

    def close(self) -> None:
        """Release what :meth:`start` took (a local Ray runtime stops here)."""


class InProcessExecutor:
    """Every job in this process, in order: its network, then its cells."""

    name = "in-process"

    def start(self) -> None:
        pass

    def run(
        self,
        jobs: Sequence[NetworkJob],
        make_network: NetworkFn,
        run_cell: CellFn,
        on_cell: CellDone,
        *,
        log: Log,
        on_start: Log,
    ) -> None:
        for job in jobs:
            built = make_network(job, log=log, on_start=on_start)
            for spec in job.cells:
                on_cell(job, spec, run_cell(job, spec, built, log=log, on_start=on_start))

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class TaskResources:
    """What one Ray task asks the cluster for; torch runs with ``cpus`` threads in it.

    ``gpus`` only reserves devices through Ray's scheduler (it sets ``CUDA_VISIBLE_DEVICES``):
    oodlab's trainer and detectors run on the CPU today.
    """

    cpus: int
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.cpus, bool) or not isinstance(self.cpus, int) or self.cpus < 1:
            raise OodlabError(f"a task needs a whole number of CPUs >= 1, got {self.cpus!r}")
        if not self.gpus >= 0:
            raise OodlabError(f"a task's GPUs must be >= 0, got {self.gpus!r}")

    def options(self) -> dict[str, Any]:
        return {"num_cpus": self.cpus, "num_gpus": self.gpus}


TASK_KINDS = ("train", "score")


def parse_resources(values: Sequence[str], default_cpus: int | None = None) -> dict[str, TaskResources]:
    """``["train=cpus:2,gpus:1", "score=cpus:1"]`` → resources per task kind.

    ``train`` is a network task (train or load, shared forward passes), ``score`` a cell task
    (fit and score one detector). A kind not named asks for ``default_cpus`` CPUs (this
    process's torch threads) and no GPU.
    """
    cpus = default_cpus or torch.get_num_threads()
    out = {kind: TaskResources(cpus) for kind in TASK_KINDS}
    named: set[str] = set()
    for value in values:
        kind, sep, spec = value.partition("=")
        kind = kind.strip()
        if not sep or kind not in TASK_KINDS or not spec.strip():
            raise OodlabError(
                f"--resources takes KIND=cpus:N[,gpus:G] with KIND one of {', '.join(TASK_KINDS)}, "
                f"got {value!r}"
            )
        if kind in named:
            raise OodlabError(f"--resources names {kind} twice")
        named.add(kind)
        fields: dict[str, str] = {}
        for item in spec.split(","):
            name, colon, amount = item.strip().partition(":")
            if not colon or name not in ("cpus", "gpus") or name in fields:
                raise OodlabError(f"--resources {kind}: expected cpus:N and/or gpus:G, got {spec!r}")
            fields[name] = amount
        try:
            n_cpus = int(fields["cpus"]) if "cpus" in fields else cpus
            n_gpus = float(fields.get("gpus", 0))
        except ValueError:
            raise OodlabError(
                f"--resources {kind}: CPUs must be a whole number, GPUs a number; got {spec!r}"
            ) from None
        out[kind] = TaskResources(n_cpus, n_gpus)
    return out


def import_ray() -> Any:
    """The ``ray`` module, or a one-line :class:`OodlabError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise OodlabError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear error when nothing listens at ``HOST:PORT``."""
    if address == "auto" or "://" in address:
        return
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise OodlabError(
            f"--address takes HOST:PORT of a Ray head node (e.g. 10.0.0.1:6379), got {address!r}"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise OodlabError(
            f"no Ray cluster reachable at {address} ({e.strerror or e}); start one with "
            "`ray start --head` there, or check --address"
        ) from None


@contextmanager
def _env(**values: str) -> Iterator[None]:
    """Environment variables set for the ``with`` block (those already set are kept)."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


@contextmanager
def _stderr_muted() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null for the ``with`` block (Ray's C++ core writes there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _network_task(fn: NetworkFn, job: NetworkJob, threads: int, *_after: Any) -> tuple[Any, list[str]]:
    torch.set_num_threads(threads)
    lines: list[str] = []
    return fn(job, log=lines.append), lines


def _cell_task(
    fn: CellFn, job: NetworkJob, spec: CellSpec, threads: int, built: BuiltNetwork
) -> tuple[CellResult, list[str]]:
    torch.set_num_threads(threads)
    lines: list[str] = []
    return fn(job, spec, built, log=lines.append), lines


class RayExecutor:
    """Network and cell tasks on a Ray cluster (``address``), or on a local Ray runtime.

    Without ``address`` a local runtime starts in :meth:`start` and stops in :meth:`close`;
    with it the run joins that cluster (``ray start --head`` on one machine, ``ray start
    --address=HEAD:PORT`` on the others) and leaves it running. Workers build each suite's data
    from their own offline data folder (``$OODLAB_DATA``) and keep checkpoints and model outputs
    in their own cache (``$OODLAB_CACHE``; a folder shared by every machine lets them reuse each
    other's); each made network reaches its cell tasks through Ray's object store, and each
    cell's rows and scores come back to this process, which alone writes the results folder.

    Args:
        address: ``HOST:PORT`` of a running cluster's head (or ``"auto"``); ``None`` starts one.
        resources: CPUs/GPUs per ``"train"`` and ``"score"`` task (see :func:`parse_resources`).
        max_retries: How often Ray reruns a task whose worker process or machine died.
        runtime_env: Ray's runtime environment for the run's workers (``env_vars``,
            ``worker_process_setup_hook``, ...).
        num_cpus: CPUs of a local runtime (default: all of this machine's).
        object_store_memory: Bytes of a local runtime's object store (default: Ray's, 30% of
            the memory; it holds the made networks and the cells' scores in transit).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        resources: dict[str, TaskResources] | None = None,
        *,
        max_retries: int = 3,
        runtime_env: dict[str, Any] | None = None,
        num_cpus: int | None = None,
        object_store_memory: int | None = None,
    ) -> None:
        self.address = address
        self.resources = resources or parse_resources([])
        self.max_retries = max_retries
        self.runtime_env = runtime_env
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self._ray: Any = None

    def start(self) -> None:
        ray = import_ray()
        if self.address is not None:
            check_reachable(self.address)
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "configure_logging": True,
            "runtime_env": self.runtime_env,
        }
        if self.address is None:
            # "local": a new runtime of this run's own, never a cluster already running here.
            kwargs.update(
                address="local", num_cpus=self.num_cpus, object_store_memory=self.object_store_memory
            )
        else:
            kwargs["address"] = self.address
        t0 = time.monotonic()
        try:
            if self.address is None:
                ray.init(**kwargs)
            else:
                # Ray retries a silent head for 20 s by default and logs each try on stderr:
                # give up sooner, and say so in one line.
                with _env(RAY_gcs_server_port_wait_time_s=str(CONNECT_TRIES)), _stderr_muted():
                    ray.init(**kwargs)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "InvalidAuthToken" in str(e.__cause__):
                why = "the cluster wants an authentication token (RAY_AUTH_TOKEN, ~/.ray/auth_token)"
            where = self.address or "a local runtime"
            raise OodlabError(
                f"could not join the Ray cluster at {where} after {time.monotonic() - t0:.0f} s: {why}"
            ) from None
        self._ray = ray
        # A task that fits on no single machine would wait forever: refuse it now.
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        for kind, res in self.resources.items():
            if not any(res.cpus <= n.get("CPU", 0) and res.gpus <= n.get("GPU", 0) for n in nodes):
                biggest = max((n.get("CPU", 0) for n in nodes), default=0)
                self.close()
                raise OodlabError(
                    f"a {kind} task asks for {res.cpus} CPU(s) and {res.gpus:g} GPU(s), but no machine of "
                    f"the Ray cluster has that much (the largest has {biggest:g} CPU(s)); lower --resources"
                )

    def run(
        self,
        jobs: Sequence[NetworkJob],
        make_network: NetworkFn,
        run_cell: CellFn,
        on_cell: CellDone,
        *,
        log: Log,
        on_start: Log,
    ) -> None:
        ray = self._ray
        assert ray is not None, "call start() first"
        train, score = self.resources["train"], self.resources["score"]
        network_task = ray.remote(_network_task).options(
            num_returns=2, max_retries=self.max_retries, **train.options()
        )
        cell_task = ray.remote(_cell_task).options(max_retries=self.max_retries, **score.options())
        built: list[Any] = []
        pending: dict[Any, tuple[NetworkJob, CellSpec | None]] = {}
        for job in jobs:
            net_ref, lines_ref = network_task.remote(
                make_network, job, train.cpus, *[built[i] for i in job.after]
            )
            built.append(net_ref)
            pending[lines_ref] = (job, None)
            for spec in job.cells:
                pending[cell_task.remote(run_cell, job, spec, score.cpus, net_ref)] = (job, spec)
        on_start(f"{len(jobs)} network and {len(pending) - len(jobs)} cell tasks on Ray")
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                job, spec = pending.pop(ref)
                value = self._get(ref)
                if spec is None:
                    for line in value:
                        log(line)
                    continue
                result, lines = value
                for line in lines:
                    log(line)
                on_cell(job, spec, result)

    def _get(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, OodlabError):
                raise OodlabError(str(cause)) from None
            raise

    def close(self) -> None:
        if self._ray is not None and self._ray.is_initialized():
            self._ray.shutdown()
        self._ray = None


def create_executor(
    name: str, address: str | None = None, resources: Sequence[str] = ()
) -> InProcessExecutor | RayExecutor:
    """The executor ``--executor NAME`` names, with ``--address`` and ``--resources``."""
    if name == "ray":
        import_ray()
        return RayExecutor(address, parse_resources(resources))
    if name != "in-process":
        raise OodlabError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
    if address is not None or resources:
        raise OodlabError("--address and --resources apply to --executor ray")
    return InProcessExecutor()


def describe_executor(executor: Executor) -> dict[str, Any]:
    """What ran a grid, for ``run.json``'s environment: the executor and its tasks' resources."""
    if isinstance(executor, RayExecutor):
        return {
            "name": executor.name,
            "address": executor.address,
            **{kind: {"cpus": r.cpus, "gpus": r.gpus} for kind, r in executor.resources.items()},
        }
    return {"name": executor.name}
