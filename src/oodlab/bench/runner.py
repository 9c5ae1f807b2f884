"""Run detectors over suites: train or load the model, fit, score, measure — one cell at a time.

The unit of work is a *cell*: one detector on one suite for one seed. With an output folder,
every finished cell is written at once (see :mod:`oodlab.bench.cells`), and a run restarted
with the same configuration reuses the finished cells and computes only the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from oodlab import __version__, features
from oodlab.api import parse_detector, parse_detectors, result_row
from oodlab.bench.cells import (
    RUN_FILE,
    CellError,
    CellSpec,
    CellStore,
    check_run_dir,
    file_sha256,
    stable_hash,
    start_run_dir,
)
from oodlab.bench.executors import Executor, InProcessExecutor, describe_executor
from oodlab.bench.selection import AUTO
from oodlab.bench.suites import (
    DEFAULT_SUITES,
    PROTOCOLS,
    Suite,
    SuiteData,
    build_suite,
    check_mixtures,
    get_suite,
    with_corruptions,
    with_epochs,
)
from oodlab.data.corruptions import SEVERITIES, check_corruptions
from oodlab.data.imageset import ImageSet
from oodlab.data.mixtures import MixtureSpec, parse_mixture
from oodlab.data.sources import cache_dir
from oodlab.data.synthetic import near_ood_kinds
from oodlab.detectors import create_detector, get_detector_class, post_hoc_detectors
from oodlab.detectors._ensemble import ValidationEnsemble, group_aurocs
from oodlab.detectors.base import Detector
from oodlab.errors import OodlabError
from oodlab.features import OutputsCache
from oodlab.io import atomic_write_bytes
from oodlab.metrics import auroc, classification_accuracy, fpr_at_tpr, threshold_at_accept_rate
from oodlab.training import DEFAULT_RECIPE, Network, get_recipe, make_network, with_recipe

#: Detectors `oodlab bench` runs when none are named: every one that needs no retraining and
#: is cheap enough for the default benchmark.
DEFAULT_DETECTORS: tuple[str, ...] = ("msp", "temperature", "misp", "maxlogit", "energy", "entropy")


@dataclass
class BenchConfig:
    """Everything that decides a benchmark's numbers; saved with every result row."""

    suites: list[str] = field(default_factory=lambda: list(DEFAULT_SUITES))
    detectors: list[str] = field(default_factory=lambda: list(DEFAULT_DETECTORS))
    seeds: list[int] = field(default_factory=lambda: [0])
    protocol: str = "blind"
    accept_rate: float = 0.95
    extra_ood: dict[str, str] = field(default_factory=dict)
    epochs: int | None = None
    #: Training recipe of every suite's classifier (see ``RECIPES``; ``"lenet"``: the suites' own).
    recipe: str = DEFAULT_RECIPE
    #: Corruptions of the corruption suites (``None``: all of each suite's).
    corruptions: list[str] | None = None
    #: Near/far mixture OOD sets, each ``"NAME=NEAR+FAR:P"`` (see :mod:`oodlab.data.mixtures`).
    mixtures: list[str] = field(default_factory=list)
    #: Hyperparameters of named detectors, ``{detector: {param: value}}`` (others: defaults).
    detector_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``--detectors auto``: also choose one detector per (suite, seed) on validation data alone
    #: and report its test figures beside the test-best's (:mod:`oodlab.bench.selection`).
    select: bool = False

    def __post_init__(self) -> None:
        for s in self.suites:
            get_suite(s)
        for d in self.detectors:
            parse_detector(d)
        for d in self.detector_params:
            if d not in self.detectors:
                raise OodlabError(f"--param names detector {d!r}, which is not in --detectors")
        get_recipe(self.recipe)
        # Building every detector checks its parameters (and each method's network) before
        # anything is trained or written.
        for d in self.detectors:
            det = self.make_detector(d)
            for s in self.suites:
                det.check_network(self.suite(s).train)
        if self.protocol not in PROTOCOLS:
            raise OodlabError(f"unknown protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")
        if not 0.0 < self.accept_rate <= 1.0:
            raise OodlabError(f"--accept-rate must be in (0, 1], got {self.accept_rate}")
        if not self.seeds:
            raise OodlabError("give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise OodlabError(f"--seeds names a seed twice: {self.seeds}")
        if len(set(self.detectors)) != len(self.detectors):
            raise OodlabError(f"--detectors names a detector twice: {', '.join(self.detectors)}")
        if self.corruptions is not None:
            check_corruptions(self.corruptions)
            if not any(get_suite(s).corruptions for s in self.suites):
                raise OodlabError(
                    "--corruptions applies to corruption suites (e.g. mnist-corruptions); none is selected"
                )
        for s in self.suites:
            check_mixtures(self.suite(s), self.mixture_specs(), list(self.extra_ood))
        if self.select:
            no_val = [s for s in self.suites if min(self.suite(s).n_val, self.suite(s).n_ood_val) < 2]
            if no_val:
                raise OodlabError(
                    "--detectors auto chooses a detector on validation data, and suite "
                    f"{', '.join(no_val)} has none (n_val / n_ood_val below 2); name the detectors instead"
                )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.detector_params:
            d.pop("detector_params")  # runs made before detector parameters keep their hash
        return d

    def make_detector(self, name: str) -> Detector:
        """A new detector ``name`` (or variant, ``knn:k=50``) with this run's parameters for it."""
        spec = parse_detector(name)
        return create_detector(spec.name, **{**spec.params, **self.detector_params.get(name, {})})

    def mixture_specs(self) -> list[MixtureSpec]:
        return [parse_mixture(m) for m in self.mixtures]

    def suite(self, name: str) -> Suite:
        """Suite ``name`` as this run uses it (recipe, epochs and corruptions overridden)."""
        suite = with_epochs(with_recipe(get_suite(name), self.recipe), self.epochs)
        return with_corruptions(suite, self.corruptions)

    def identity(self) -> dict[str, Any]:
        """Everything that decides this run's numbers (its hash names the run's folder contents)."""
        # The recipe's name is left out: its whole effect is in the suite definitions, and runs
        # made before recipes could be chosen stay resumable. Selection changes no number.
        config = {k: v for k, v in self.to_dict().items() if k not in ("recipe", "select")}
        networks = {
            f"{s}/{d}": self._network_identity(s, d)
            for s in self.suites
            for d in self.detectors
            if self.make_detector(d).capabilities.trains
        }
        return {
            **config,
            "extra_ood_sha256": {k: file_sha256(Path(v)) for k, v in sorted(self.extra_ood.items())},
            "suite_definitions": {s: dataclasses.asdict(self.suite(s)) for s in self.suites},
            "detector_params": {d: _params(d, self.detector_params.get(d, {})) for d in self.detectors},
            # Only runs with methods that train have this key: older runs keep their hash.
            **({"networks": networks} if networks else {}),
            "oodlab": __version__,
        }

    def _network_identity(self, suite: str, detector: str) -> list[dict[str, Any]]:
        """What makes the network ``detector`` scores on ``suite`` (its seed left at the suite's)."""
        return self.make_detector(detector).network(self.suite(suite).train).identity()

    def cells(self, identity: dict[str, Any] | None = None) -> list[CellSpec]:
        """Every (suite, seed, detector) cell of the run, in report order, keyed by what makes it."""
        ident = identity or self.identity()
        out = []
        for s in self.suites:
            for seed in self.seeds:
                for d in self.detectors:
                    # A method's network (recipe, objective, auxiliary set, members) is part of
                    # its cells' identity; post-hoc detectors score the suite's own network.
                    network = ident.get("networks", {}).get(f"{s}/{d}")
                    key = stable_hash(
                        {
                            **({"network": network} if network is not None else {}),
                            "suite": ident["suite_definitions"][s],
                            "seed": seed,
                            "protocol": self.protocol,
                            "detector": d,
                            "params": ident["detector_params"][d],
                            "accept_rate": self.accept_rate,
                            "extra_ood": ident["extra_ood_sha256"],
                            "mixtures": self.mixtures,
                            "oodlab": __version__,
                        }
                    )
                    out.append(CellSpec(s, seed, d, key))
        return out


def _params(detector: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        spec = parse_detector(detector)
        return create_detector(spec.name, **{**spec.params, **(params or {})}).get_params()
    except Exception:  # a detector that cannot be built without arguments: its class name stands in
        return {"class": get_detector_class(detector.split(":")[0]).__qualname__, **(params or {})}


def environment() -> dict[str, Any]:
    """The software and machine a run used (saved with results; not part of a cell's key)."""
    return {
        "oodlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }


def resolve_detectors(spec: str | None) -> list[str]:
    """``None``/``"default"`` → the default set; ``"all"`` → every post-hoc detector; else a comma list.

    ``"all"`` leaves out the methods that train their network or sample (``deep-ensemble`` alone
    trains five networks, ``mc-dropout`` needs a network with dropout) and the combinations
    spelled with their members (``either:a+b``): name those explicitly.
    ``"auto"`` runs the same detectors as ``"all"``, those that need no input gradient first (the
    cheap ones, so an interrupted run has the most); pass ``select=True`` to :class:`BenchConfig`
    to have one chosen per (suite, seed) on validation data (see :mod:`oodlab.bench.selection`).
    """
    if spec is None or spec == "default":
        return list(DEFAULT_DETECTORS)
    if spec == "all":
        return post_hoc_detectors()
    if spec == AUTO:
        # Those scored from the shared forward pass first: an interrupted run has the most.
        return sorted(post_hoc_detectors(), key=lambda n: get_detector_class(n).capabilities.own_forward)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise OodlabError("--detectors is empty; name at least one detector, 'default' or 'all'")
    return [d.label for d in parse_detectors(spec)]


def _fit(det: Detector, model: torch.nn.Module, data: SuiteData, ood: str) -> float:
    id_val, ood_val = data.validation_for(ood)
    t0 = time.perf_counter()
    det.fit(model, data.id_train, id_val=id_val, ood_val=ood_val)
    return time.perf_counter() - t0


def _ood_kinds(suite: Suite, mixtures: list[MixtureSpec]) -> dict[str, dict[str, Any]]:
    """Extra row fields saying what an OOD set is: ``corruption``/``severity`` or ``mixture``."""
    kinds: dict[str, dict[str, Any]] = {
        f"{c}-{s}": {"corruption": c, "severity": s} for c in suite.corruptions for s in SEVERITIES
    }
    for m in mixtures:
        kinds[m.name] = {"mixture": str(m)}
    return kinds


def _run_detector(
    cfg: BenchConfig,
    det: Detector,
    model: torch.nn.Module,
    data: SuiteData,
    id_accuracy: float,
    kinds: dict[str, dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Fit ``det`` (once, or per OOD set under the paper protocol) and score every OOD set."""
    rows: list[dict[str, Any]] = []
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    per_ood = cfg.protocol == "paper" and det.tunes
    fit_seconds = 0.0 if per_ood else _fit(det, model, data, next(iter(data.ood_tests)))
    # Scores of the sets shared by every OOD set (ID test, ID validation), per fit: a
    # gradient-based detector would otherwise rescore them once per OOD set.
    memo: dict[int, np.ndarray] = {}
    # An ensemble's members are scored once and combined, so each row also says how every
    # member does alone (an ensemble should never do worse than its best member).
    ensemble = det if isinstance(det, ValidationEnsemble) else None
    member_memo: dict[int, np.ndarray] = {}

    def members_of(images: ImageSet) -> np.ndarray:
        assert ensemble is not None
        if id(images) not in member_memo:
            member_memo[id(images)] = ensemble.member_scores_set(images).numpy()
        return member_memo[id(images)]

    def scores_of(images: ImageSet) -> np.ndarray:
        if id(images) not in memo:
            if ensemble is not None:
                memo[id(images)] = ensemble.scores_from_members(torch.from_numpy(members_of(images))).numpy()
            else:
                memo[id(images)] = det.score_set(images).numpy()
        return memo[id(images)]

    for ood_name, ood_set in data.ood_tests.items():
        if per_ood:
            fit_seconds = _fit(det, model, data, ood_name)
            memo.clear()
            member_memo.clear()
        id_val, ood_val = data.validation_for(ood_name)
        t0 = time.perf_counter()
        id_scores = scores_of(data.id_test_for(ood_name))
        ood_scores = scores_of(ood_set)
        memo.pop(id(ood_set))
        score_seconds = time.perf_counter() - t0
        members: dict[str, dict[str, float]] = {}
        if ensemble is not None:
            m_id, m_ood = members_of(data.id_test_for(ood_name)), member_memo.pop(id(ood_set))
            members = {
                tap: {
                    "auroc": auroc(m_id[:, j], m_ood[:, j]),
                    "fpr95": fpr_at_tpr(m_id[:, j], m_ood[:, j], 0.95),
                }
                for j, tap in enumerate(ensemble.taps_)
            }
        val_id_scores, val_ood_scores = scores_of(id_val), scores_of(ood_val)
        near = near_ood_kinds(ood_val)
        threshold = threshold_at_accept_rate(val_id_scores, cfg.accept_rate)
        row = result_row(
            (data.suite.name, data.seed, cfg.protocol),
            det.name,
            det,
            ood_name,
            id_scores,
            ood_scores,
            threshold=threshold,
            id_accuracy=id_accuracy,
            seconds=(fit_seconds, score_seconds),
            tuned_on=(id_val, ood_val),
        )
        rows.append(
            {
                **row,
                # The same metrics on the validation pair: what `--detectors auto` chooses by.
                "val_auroc": auroc(val_id_scores, val_ood_scores),
                "val_worst_auroc": min(group_aurocs(val_id_scores, val_ood_scores, ood_val.y)),
                "val_near_auroc": auroc(
                    val_id_scores, val_ood_scores[near] if near is not None else val_ood_scores
                ),
                "val_fpr95": fpr_at_tpr(val_id_scores, val_ood_scores, 0.95),
                "threshold_on": id_val.name,
                **kinds.get(ood_name, {}),
                **({"members": members} if members else {}),
            }
        )
        scores[ood_name] = (id_scores, ood_scores)
    return rows, scores


@dataclass(frozen=True)
class NetworkJob:
    """One network to make for a suite and seed, and the cells that score with it.

    The grid of a run is a list of these: an executor makes each job's network (a *network
    task*: train or load it, then the shared forward passes) and then runs each of its cells (a
    *cell task*: fit and score one detector on that network). ``after`` names the jobs whose
    network this one starts from (a fine-tuning base, an ensemble's first member): an executor
    that runs jobs side by side starts this one when those are made, so each checkpoint is
    trained once.
    """

    suite: str
    seed: int
    network: Network
    cells: tuple[CellSpec, ...]
    after: tuple[int, ...] = ()

    @property
    def tag(self) -> str:
        return f"[{self.suite} seed {self.seed}]"


@dataclass
class BuiltNetwork:
    """A made network: the model in eval mode and its summary (each cell's ``model``)."""

    model: torch.nn.Module
    info: dict[str, Any]


def plan_jobs(cfg: BenchConfig, cells: list[CellSpec]) -> list[NetworkJob]:
    """Group ``cells`` by the network they score: one job per (suite, seed, network), in order.

    Each detector scores the network it names (:meth:`Detector.network`): post-hoc detectors
    the suite's own, methods that train their fine-tuned network or ensemble.
    """
    groups: dict[tuple[str, int, str], tuple[Network, list[CellSpec]]] = {}
    for spec in cells:
        recipe = dataclasses.replace(cfg.suite(spec.suite).train, seed=spec.seed)
        net = cfg.make_detector(spec.detector).network(recipe)
        key = (spec.suite, spec.seed, stable_hash(net.identity(), 24))
        groups.setdefault(key, (net, []))[1].append(spec)
    jobs = [NetworkJob(s, seed, net, tuple(specs)) for (s, seed, _), (net, specs) in groups.items()]
    made = {
        (j.suite, j.seed, stable_hash(j.network.members[0].identity())): i
        for i, j in enumerate(jobs)
        if len(j.network.members) == 1
    }

    def starts_from(job: NetworkJob) -> set[int]:
        found = set()
        for member in job.network.members:
            cfg_: Any = member
            while cfg_ is not None:
                i = made.get((job.suite, job.seed, stable_hash(cfg_.identity())))
                if i is not None and jobs[i] is not job:
                    found.add(i)
                cfg_ = cfg_.init_from
        return found

    return [dataclasses.replace(j, after=tuple(sorted(starts_from(j)))) for j in jobs]


#: The data and model-output cache of the (suite, seed) this process worked on last: consecutive
#: tasks of one suite and seed (every cell of a job, in-process) build the data once and share
#: one forward pass per image set. ``release_workspace`` frees it.
_workspace: dict[str, tuple[str, SuiteData, OutputsCache]] = {}


def _suite_data(
    cfg: BenchConfig, suite_name: str, seed: int, feature_cache: bool
) -> tuple[SuiteData, OutputsCache]:
    """The data of one suite and seed and its outputs cache, kept for the next task of the same."""
    suite = cfg.suite(suite_name)
    extra = {k: Path(v) for k, v in cfg.extra_ood.items()}
    what = [dataclasses.asdict(suite), seed, cfg.protocol, cfg.extra_ood, cfg.mixtures, feature_cache]
    key = stable_hash(what)
    held = _workspace.get("current")
    if held is not None and held[0] == key:
        return held[1], held[2]
    release_workspace()
    data = build_suite(suite, seed, cfg.protocol, extra, cfg.mixture_specs())
    # A cache with room for every set of one network, and (unless disabled) the on-disk cache
    # so that a later run with the same model and data skips the forward passes. Stochastic
    # detectors never read it (they run the model themselves).
    n_sets = 4 + len(data.ood_tests) + 2 * len(data.paper_val)
    disk = cache_dir() / "features" if feature_cache else None
    cache = OutputsCache(max_entries=n_sets + 8, disk_dir=disk)
    _workspace["current"] = (key, data, cache)
    return data, cache


def release_workspace() -> None:
    """Forget the data and model outputs kept for the last (suite, seed)."""
    _workspace.clear()


def make_job_network(
    cfg: BenchConfig,
    job: NetworkJob,
    *,
    log: Callable[[str], None],
    progress: bool = False,
    feature_cache: bool = True,
    on_start: Callable[[str], None] = lambda _: None,
    device: str = "cpu",
) -> BuiltNetwork:
    """The network task: train or load ``job``'s network and run its shared forward passes.

    Every network is trained or loaded once (each checkpoint cached on its own), and the
    shared-pass detectors of one network read one forward pass per image set.
    """
    tag = job.tag
    on_start("data")
    data, cache = _suite_data(cfg, job.suite, job.seed, feature_cache)
    net = job.network
    dets = [cfg.make_detector(c.detector) for c in job.cells]
    with features.using_cache(cache):
        log(f"{tag} network {net.describe()}: {len(data.id_train)} training images")
        on_start(f"network of {', '.join(d.name for d in dets)}")
        model, meta = make_network(
            net, data.id_train, progress=progress, log=lambda m: log(f"{tag} {m}"), device=device
        )
        how = "loaded from cache" if meta["cached"] else "trained"
        log(f"{tag} network {how}: {meta['checkpoints'][0]}")
        shared = [d for d in dets if d.capabilities.shared_pass]
        # One forward pass per image set, with every tap a shared-pass detector reads (on
        # the training set only the taps fitting reads, and only if some detector fits there).
        taps = features.unique_specs(t for d in shared for t in d.required_taps(model))
        train_taps = features.unique_specs(t for d in shared for t in d.train_taps(model))
        sets: list[ImageSet] = []
        if shared:
            sets = [data.id_train] if train_taps else []
            sets += [data.id_test, *data.ood_tests.values()]
            sets += [
                s for pair in ([(data.id_val, data.ood_val)] + list(data.paper_val.values())) for s in pair
            ]
        on_start("features")
        for s in sets:
            features.outputs(model, s, train_taps if s is data.id_train else taps)
        id_accuracy = classification_accuracy(features.outputs(model, data.id_test).logits, data.id_test.y)
        # The held-out training images: what a user may choose a network by (the test split never).
        id_val_accuracy = classification_accuracy(features.outputs(model, data.id_val).logits, data.id_val.y)
    log(f"{tag} ID accuracy: test {100 * id_accuracy:.2f}%, validation {100 * id_val_accuracy:.2f}%")
    model_info = {
        "suite": job.suite,
        "seed": job.seed,
        "id_accuracy": id_accuracy,
        "id_val_accuracy": id_val_accuracy,
        "checkpoint": meta["checkpoints"][0],
        "recipe": net.members[0].to_dict(),
        "cached": meta["cached"],
        "stats": {"train_seconds": meta["train_seconds"]},
    }
    if any(d.capabilities.trains for d in dets):
        model_info["network"] = {k: v for k, v in meta.items() if k != "cached"}
    return BuiltNetwork(model, model_info)


#: A cell's rows, its model summary, its scores (``{ood: (ID scores, OOD scores)}``) and the
#: arrays of its detector's illustration (:meth:`Detector.illustration`; often empty).
CellResult = tuple[
    list[dict[str, Any]], dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]
]
#: Images per set (ID test, first OOD test set) in a detector's illustration.
ILLUSTRATED = 8


def run_cell(
    cfg: BenchConfig,
    job: NetworkJob,
    spec: CellSpec,
    built: BuiltNetwork,
    *,
    log: Callable[[str], None],
    feature_cache: bool = True,
    on_start: Callable[[str], None] = lambda _: None,
) -> CellResult:
    """The cell task: fit and score detector ``spec.detector`` on ``job``'s made network.

    Returns:
        The cell's rows, its model summary, its scores (``{ood: (ID scores, OOD scores)}``) and
        its detector's illustration arrays.
    """
    data, cache = _suite_data(cfg, spec.suite, spec.seed, feature_cache)
    det = cfg.make_detector(spec.detector)
    on_start(spec.detector)
    with features.using_cache(cache):
        # Each cell draws its own random numbers: its numbers do not depend on which other
        # cells this process computed before it (so a resumed run equals an uninterrupted one).
        torch.manual_seed(spec.seed)
        kinds = _ood_kinds(cfg.suite(spec.suite), cfg.mixture_specs())
        rows, scores = _run_detector(cfg, det, built.model, data, built.info["id_accuracy"], kinds)
    for r in rows:
        r["detector"] = spec.detector  # each cell is named as its detector was spelled ("knn:k=50")
        if "network" in built.info:
            r["network"] = built.info["network"]
    shown = ", ".join(f"{r['ood']} AUROC {100 * r['auroc']:.2f}" for r in rows[:6])
    log(f"{job.tag} {spec.detector}: {shown}{', …' if len(rows) > 6 else ''}")
    first_ood = next(iter(data.ood_tests.values()))
    with features.using_cache(cache):
        extras = det.illustration(data.id_test.tensor(0, ILLUSTRATED), first_ood.tensor(0, ILLUSTRATED))
    return rows, built.info, scores, extras


def run_suite(
    cfg: BenchConfig,
    suite_name: str,
    seed: int,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every detector of ``cfg`` on one suite and seed, in memory (nothing written).

    Returns:
        One row per (detector, OOD test set), and a summary of the model.
    """
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}

    def keep(job: NetworkJob, spec: CellSpec, result: CellResult) -> None:
        rows.extend(result[0])
        info.update(result[1])

    cells = [CellSpec(suite_name, seed, d, "") for d in cfg.detectors]
    try:
        InProcessExecutor().run(
            plan_jobs(cfg, cells),
            functools.partial(make_job_network, cfg, progress=progress, device=device),
            functools.partial(run_cell, cfg),
            keep,
            log=log,
            on_start=lambda _: None,
        )
    finally:
        release_workspace()
    return rows, info


def make_manifest(cfg: BenchConfig) -> dict[str, Any]:
    """The ``run.json`` of a run of ``cfg``: configuration, its hash, environment and cells."""
    ident = cfg.identity()
    return {
        "format": 1,
        "oodlab": __version__,
        "config": cfg.to_dict(),
        "identity": ident,
        "config_hash": stable_hash(ident, 24),
        "environment": environment(),
        "cells": [c.to_dict() for c in cfg.cells(ident)],
    }


def run_bench(
    cfg: BenchConfig,
    *,
    out_dir: Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    feature_cache: bool = True,
    executor: Executor | None = None,
    device: str = "cpu",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run ``cfg``; every row carries the run's configuration under ``"config"``.

    ``device`` (``auto``, ``cpu``, ``cuda``: :func:`oodlab.device.resolve_device`) is where the
    networks train and run; each model's ``checkpoint`` in the results names a CUDA-trained one.

    ``executor`` runs the grid's network and cell tasks (:mod:`oodlab.bench.executors`; default:
    in this process); it is started before anything is written, and this process alone writes
    ``out_dir``.

    With ``feature_cache``, logits and vector taps are kept on disk (``$OODLAB_CACHE/features``)
    keyed by the model's and the images' content hashes, and reused by later runs.

    With ``out_dir``, each finished cell is written there as it completes, and cells a previous
    run of the same configuration finished are reused instead of recomputed. A folder holding
    another configuration is an error unless ``overwrite``.

    Returns:
        The rows (one per suite × seed × detector × OOD set) and one model summary per suite × seed.
    """
    executor = executor or InProcessExecutor()
    manifest = make_manifest(cfg)
    manifest["environment"]["executor"] = describe_executor(executor)
    specs = [CellSpec.from_dict(c) for c in manifest["cells"]]
    store = CellStore(out_dir) if out_dir is not None else None
    # The folder is only written once the first cell is finished: a run refused before that
    # (bad input, corrupt checkpoint, a Ray cluster that cannot be joined) leaves it exactly as it was.
    started = False
    if store is not None:
        resumed = started = check_run_dir(store.root, manifest, overwrite=overwrite)
        if resumed:
            saved = _saved_manifest(store.root, manifest)
            manifest = {**manifest, "environment": saved.get("environment", manifest["environment"])}
            if saved.get("config") != json.loads(json.dumps(manifest["config"])):
                # Same numbers, other reporting (--recipe spelled out, --detectors auto): keep the
                # saved environment, take this run's configuration.
                atomic_write_bytes(
                    store.root / RUN_FILE,
                    json.dumps({**saved, "config": manifest["config"]}, indent=1).encode(),
                )
            if store.clean_temporary():
                log(f"removed temporary files of an interrupted run in {store.root}")
    done: dict[CellSpec, dict[str, Any]] = {}
    if store is not None and started:  # without it, cells there are --overwrite's to replace
        for spec in specs:
            if not store.exists(spec):
                continue
            try:
                done[spec] = store.load(spec)
            except CellError as e:
                log(f"{e}; recomputing it")
                store.remove(spec)
                continue
            log(f"[{spec.suite} seed {spec.seed}] {spec.detector}: reused finished cell {spec.stem}.json")
    todo = [s for s in specs if s not in done]
    bar = tqdm(
        total=len(specs),
        initial=len(specs) - len(todo),
        desc="cells",
        unit="cell",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )

    def say(msg: str) -> None:
        if bar.disable:
            log(msg)
        else:
            with tqdm.external_write_mode(file=sys.stderr):
                log(msg)

    def start(what: str) -> None:
        bar.set_description_str(what)

    def finish(job: NetworkJob, spec: CellSpec, result: CellResult) -> None:
        nonlocal started
        rows, model, scores, extras = result
        if store is not None:
            if not started:
                start_run_dir(store.root, manifest)
                started = True
            store.write(spec, rows, model, scores, extras)
        done[spec] = {"rows": rows, "model": model}
        bar.update(1)

    try:
        if todo:
            executor.start()
            executor.run(
                plan_jobs(cfg, todo),
                functools.partial(
                    make_job_network, cfg, progress=progress, feature_cache=feature_cache, device=device
                ),
                functools.partial(run_cell, cfg, feature_cache=feature_cache),
                finish,
                log=say,
                on_start=start,
            )
    finally:
        bar.close()
        executor.close()
        release_workspace()
    return assemble([done[s] for s in specs], manifest)


def _saved_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    from oodlab.bench.cells import read_manifest

    return read_manifest(root)


def assemble(
    cells: list[dict[str, Any]], manifest: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (each with the run's ``config``) and one model summary per (suite, seed), from cell documents."""
    config = {**manifest["config"], "environment": manifest["environment"]}
    rows: list[dict[str, Any]] = []
    models: dict[tuple[str, int, str], dict[str, Any]] = {}
    for cell in cells:
        for r in cell["rows"]:
            rows.append({**r, "config": config})
        m = cell["model"]
        # One summary per network: the suite's own, and each method's that trains.
        models.setdefault((m["suite"], m["seed"], m.get("network", {}).get("network", "")), m)
    return rows, list(models.values())
