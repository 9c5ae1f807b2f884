"""Run detectors over suites: train or load the model, fit, score, measure."""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from oodlab import __version__, features
from oodlab.bench.suites import DEFAULT_SUITES, PROTOCOLS, SuiteData, build_suite, get_suite, with_epochs
from oodlab.detectors import create_detector, get_detector_class, list_detectors
from oodlab.detectors.base import Detector
from oodlab.errors import OodlabError
from oodlab.metrics import classification_accuracy, ood_metrics, threshold_at_accept_rate
from oodlab.training import fit_or_load

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

    def __post_init__(self) -> None:
        for s in self.suites:
            get_suite(s)
        for d in self.detectors:
            get_detector_class(d)
        if self.protocol not in PROTOCOLS:
            raise OodlabError(f"unknown protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")
        if not 0.0 < self.accept_rate <= 1.0:
            raise OodlabError(f"--accept-rate must be in (0, 1], got {self.accept_rate}")
        if not self.seeds:
            raise OodlabError("give at least one seed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_detectors(spec: str | None) -> list[str]:
    """``None``/``"default"`` → the default set; ``"all"`` → every registered; else a comma list."""
    if spec is None or spec == "default":
        return list(DEFAULT_DETECTORS)
    if spec == "all":
        return list_detectors()
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise OodlabError("--detectors is empty; name at least one detector, 'default' or 'all'")
    for n in names:
        get_detector_class(n)
    return names


def _fit(det: Detector, model: torch.nn.Module, data: SuiteData, ood: str) -> float:
    id_val, ood_val = data.validation_for(ood)
    t0 = time.perf_counter()
    det.fit(model, data.id_train, id_val=id_val, ood_val=ood_val)
    return time.perf_counter() - t0


def run_suite(
    cfg: BenchConfig,
    suite_name: str,
    seed: int,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every detector of ``cfg`` on one suite and seed.

    Returns:
        One row per (detector, OOD test set), and a summary of the model.
    """
    suite = with_epochs(get_suite(suite_name), cfg.epochs)
    data = build_suite(suite, seed, cfg.protocol, {k: Path(v) for k, v in cfg.extra_ood.items()})
    recipe = dataclasses.replace(suite.train, seed=seed)
    log(f"[{suite_name} seed {seed}] model {recipe.model}: {len(data.id_train)} training images")
    model, meta = fit_or_load(recipe, data.id_train, progress=progress)
    how = "loaded from cache" if meta["cached"] else "trained"
    log(f"[{suite_name} seed {seed}] model {how}: {meta['path']}")
    detectors = [create_detector(n) for n in cfg.detectors]
    # One forward pass per image set, with every tap any detector reads (gradient-based ones fit
    # on the training set's taps too).
    taps = sorted({t for d in detectors for t in d.required_taps(model)})
    sets = [data.id_train, data.id_test, *data.ood_tests.values()]
    sets += [s for pair in ([(data.id_val, data.ood_val)] + list(data.paper_val.values())) for s in pair]
    for s in sets:
        features.outputs(model, s, taps)
    id_accuracy = classification_accuracy(features.outputs(model, data.id_test).logits, data.id_test.y)
    log(f"[{suite_name} seed {seed}] ID test accuracy {100 * id_accuracy:.2f}%")
    rows: list[dict[str, Any]] = []
    for det in detectors:
        per_ood = cfg.protocol == "paper" and det.tunes
        fit_seconds = 0.0 if per_ood else _fit(det, model, data, next(iter(data.ood_tests)))
        for ood_name, ood_set in data.ood_tests.items():
            if per_ood:
                fit_seconds = _fit(det, model, data, ood_name)
            id_val, ood_val = data.validation_for(ood_name)
            t0 = time.perf_counter()
            id_scores = det.score_set(data.id_test_for(ood_name)).numpy()
            ood_scores = det.score_set(ood_set).numpy()
            score_seconds = time.perf_counter() - t0
            threshold = threshold_at_accept_rate(det.score_set(id_val).numpy(), cfg.accept_rate)
            row: dict[str, Any] = {
                "suite": suite_name,
                "seed": seed,
                "protocol": cfg.protocol,
                "detector": det.name,
                "ood": ood_name,
                **ood_metrics(id_scores, ood_scores, threshold=threshold),
                "id_accuracy": id_accuracy,
                "threshold": threshold,
                "n_id": len(id_scores),
                "n_ood": len(ood_scores),
                "fit_seconds": round(fit_seconds, 3),
                "score_seconds": round(score_seconds, 3),
                "params": det.get_params(),
                "tuning": det.tuning(),
                "tuned_on": {"id_val": id_val.name, "ood_val": ood_val.name},
                "threshold_on": id_val.name,
            }
            rows.append(row)
        log(
            f"[{suite_name} seed {seed}] {det.name}: "
            + ", ".join(f"{r['ood']} AUROC {100 * r['auroc']:.2f}" for r in rows if r["detector"] == det.name)
        )
    model_info = {
        "suite": suite_name,
        "seed": seed,
        "id_accuracy": id_accuracy,
        "checkpoint": meta["path"],
        "recipe": recipe.to_dict(),
        "cached": meta["cached"],
        "stats": meta.get("stats", {}),
    }
    return rows, model_info


def run_bench(
    cfg: BenchConfig, *, progress: bool = True, log: Callable[[str], None] = print
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run ``cfg``; every row carries the run's configuration under ``"config"``."""
    rows: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    env = {
        "oodlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }
    for suite_name in cfg.suites:
        for seed in cfg.seeds:
            r, m = run_suite(cfg, suite_name, seed, progress=progress, log=log)
            rows += r
            models.append(m)
    config = {**cfg.to_dict(), "environment": env}
    for r in rows:
        r["config"] = config
    return rows, models
