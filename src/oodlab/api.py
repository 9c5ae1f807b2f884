"""The library's short path: detector variants by name, and :func:`evaluate` for one model.

``evaluate`` does for a user's model and image sets what ``oodlab bench`` does for a suite:
carve ID validation images out of the training set, build the synthetic OOD validation set
from them (the blind protocol: nothing is tuned on a test set), fit and tune each detector,
set each threshold at an acceptance rate of the ID validation images, and measure every OOD
test set. Its forward passes go through an outputs cache of its own, sized to its image sets
and dropped when it returns.

Example:
    >>> rows = evaluate(model, id_train, id_test, {"svhn": svhn}, "knn:k=50,energy")  # doctest: +SKIP
    >>> [(r["detector"], r["ood"], round(r["auroc"], 3)) for r in rows]                       # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from oodlab import __version__, features
from oodlab.data.imageset import ImageSet
from oodlab.data.splits import train_val_split
from oodlab.data.synthetic import synthetic_ood_validation
from oodlab.detectors import Detector, create_detector, get_detector_class, post_hoc_detectors
from oodlab.errors import OodlabError
from oodlab.features import OutputsCache
from oodlab.metrics import classification_accuracy, ood_metrics, threshold_at_accept_rate

#: The detectors ``"default"`` names (the logit detectors, as ``oodlab bench``'s default).
DEFAULT_DETECTORS = ("msp", "temperature", "misp", "maxlogit", "energy", "entropy")
#: Seed offset of the synthetic OOD validation set (as the suites').
_SEED_VAL = 3_000


@dataclass(frozen=True)
class DetectorSpec:
    """A detector name with hyperparameters: ``knn:k=50`` → ``DetectorSpec("knn", {"k": 50})``."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The spelling this spec reads back from (``name`` alone when no parameter is set)."""
        shown = (
            f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
            for k, v in self.params.items()
        )
        return ":".join([self.name, *shown])

    def create(self) -> Detector:
        """A new, unfitted detector."""
        return create_detector(self.name, **self.params)


def _value(text: str) -> Any:
    """``50`` → 50, ``0.1`` → 0.1, ``true``/``false``/``none``, ``[1,2]``, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_post_hoc(specs: Sequence[DetectorSpec], where: str) -> None:
    """One-line error for a method that trains its own network: ``where`` scores the model given."""
    for s in specs:
        if get_detector_class(s.name).capabilities.trains:
            raise OodlabError(
                f"detector {s.label!r} trains a network of its own; {where} scores the model you give "
                "(use a post-hoc detector, or oodlab bench --suite for methods that train)"
            )


def _takes_argument(name: str) -> bool:
    """Whether the registered detector ``name`` is spelled with an argument (``either:a+b``)."""
    try:
        return hasattr(get_detector_class(name), "specialise")
    except OodlabError:
        return False


def parse_detector(spec: str | DetectorSpec | tuple[str, Mapping[str, Any]]) -> DetectorSpec:
    """One detector spec: ``"knn"``, ``"knn:k=50"``, ``"fssd:tap=conv2:perturbation=0"``, a
    ``(name, params)`` pair or a :class:`DetectorSpec`. Parameters are checked by building the
    detector once."""
    if isinstance(spec, DetectorSpec):
        out = spec
    elif isinstance(spec, tuple):
        out = DetectorSpec(spec[0], dict(spec[1]))
    else:
        name, *parts = [p.strip() for p in str(spec).split(":")]
        if parts and "=" not in parts[0] and _takes_argument(name):
            # ``either:odin+hscae``: the class's argument comes first, then any KEY=VALUE.
            name, parts = f"{name}:{parts[0]}", parts[1:]
        params: dict[str, Any] = {}
        for p in parts:
            key, sep, val = p.partition("=")
            if not sep or not key:
                raise OodlabError(f"detector spec {spec!r}: expected NAME:KEY=VALUE[:KEY=VALUE], got {p!r}")
            if key in params:
                raise OodlabError(f"detector spec {spec!r} sets {key!r} twice")
            params[key] = _value(val)
        out = DetectorSpec(name, params)
    get_detector_class(out.name)
    out.create()
    return out


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets (``knn:grid=[1,5],energy`` → two specs)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_detectors(
    spec: str | Sequence[str | DetectorSpec | tuple[str, Mapping[str, Any]]],
) -> list[DetectorSpec]:
    """Detector specs from ``"default"``, ``"all"``, ``"knn:k=50,mahalanobis:noise=0"`` or a list.

    Raises:
        OodlabError: Unknown names, malformed or rejected parameters, or one spec twice.
    """
    if isinstance(spec, str):
        if spec.strip() in ("", "default"):
            items: Sequence[Any] = DEFAULT_DETECTORS if spec.strip() else ()
        elif spec.strip() == "all":
            # As `oodlab bench --detectors all`: the post-hoc, deterministic detectors.
            items = post_hoc_detectors()
        else:
            items = [s for s in _split_top(spec) if s.strip()]
    else:
        items = spec
    out = [parse_detector(s) for s in items]
    if not out:
        raise OodlabError("no detector named; give at least one, 'default' or 'all'")
    labels = [d.label for d in out]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise OodlabError(f"detector {', '.join(twice)} named twice")
    return out


@dataclass
class Validation:
    """The blind protocol's tuning sets: ``id_train`` (what remains for fitting), ``id_val``
    (ID images held out of training) and ``ood_val`` (synthetic, made from ``id_val``)."""

    id_train: ImageSet
    id_val: ImageSet
    ood_val: ImageSet


def blind_validation(
    id_train: ImageSet,
    id_val: ImageSet | None = None,
    *,
    n_val: int | float = 0.1,
    n_ood_val: int | None = None,
    seed: int = 0,
) -> Validation:
    """The blind protocol's validation sets for a user's data.

    Args:
        id_train: ID training images (the classifier's, or any ID images).
        id_val: ID validation images; default ``n_val`` images carved out of ``id_train``.
        n_val: Share (or count) of ``id_train`` carved out when ``id_val`` is not given.
        n_ood_val: Size of the synthetic OOD validation set; default ``len(id_val)``, at most 2000.
        seed: Seed of the carve-out and the synthetic set.
    """
    if id_val is None:
        id_train, id_val = train_val_split(id_train, n_val, seed)
    n = int(n_ood_val) if n_ood_val is not None else min(len(id_val), 2000)
    ood_val = synthetic_ood_validation(id_val, n, seed + _SEED_VAL, name=f"synthetic-{id_val.name}")
    return Validation(id_train, id_val, ood_val)


def fit_detector(
    spec: DetectorSpec, model: nn.Module, val: Validation, *, seed: int = 0
) -> tuple[Detector, float]:
    """Fit ``spec`` on ``val.id_train``, tuned on ``(val.id_val, val.ood_val)``; seeded per
    detector so its result does not depend on which detectors ran before. Returns the detector
    and the seconds fitting took."""
    det = spec.create()
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    det.fit(model, val.id_train, id_val=val.id_val, ood_val=val.ood_val)
    return det, time.perf_counter() - t0


def shared_pass(
    model: nn.Module, detectors: Sequence[Detector], sets: Sequence[ImageSet], train: ImageSet
) -> None:
    """One forward pass per image set with every tap any detector reads (on the training set
    only the taps fitting reads), into the current outputs cache."""
    taps = features.unique_specs(t for d in detectors for t in d.required_taps(model))
    train_taps = features.unique_specs(t for d in detectors for t in d.train_taps(model))
    if train_taps:
        features.outputs(model, train, train_taps)
    for s in sets:
        features.outputs(model, s, taps)


def result_row(
    run: tuple[str, int, str],
    label: str,
    det: Detector,
    ood: str,
    id_scores: np.ndarray,
    ood_scores: np.ndarray,
    *,
    threshold: float,
    id_accuracy: float,
    seconds: tuple[float, float],
    tuned_on: tuple[ImageSet, ImageSet],
) -> dict[str, Any]:
    """The keys every result row shares, for :func:`evaluate` and ``oodlab bench``.

    Args:
        run: ``(suite, seed, protocol)``.
        label: The detector's name in the row.
        det: The fitted detector (its parameters and tuning go in the row).
        ood: The OOD test set's name.
        id_scores: Scores of the ID test images.
        ood_scores: Scores of the OOD test images.
        threshold: The threshold the share metrics are taken at.
        id_accuracy: Classification accuracy on the ID test images.
        seconds: ``(fit, score)`` wall times.
        tuned_on: The ``(ID, OOD)`` validation sets the detector was tuned on.

    Returns:
        ``suite``, ``seed``, ``protocol``, ``detector``, ``ood``, every metric of
        :func:`~oodlab.metrics.ood_metrics`, ``id_accuracy``, ``threshold``, ``n_id``, ``n_ood``,
        ``fit_seconds``, ``score_seconds``, ``params``, ``tuning`` and ``tuned_on``, in this order.
    """
    suite, seed, protocol = run
    return {
        "suite": suite,
        "seed": seed,
        "protocol": protocol,
        "detector": label,
        "ood": ood,
        **ood_metrics(id_scores, ood_scores, threshold=threshold),
        "id_accuracy": id_accuracy,
        "threshold": threshold,
        "n_id": len(id_scores),
        "n_ood": len(ood_scores),
        "fit_seconds": round(seconds[0], 3),
        "score_seconds": round(seconds[1], 3),
        "params": det.get_params(),
        "tuning": det.tuning(),
        "tuned_on": {"id_val": tuned_on[0].name, "ood_val": tuned_on[1].name},
    }


def evaluate(
    model: nn.Module,
    id_train: ImageSet,
    id_test: ImageSet,
    ood_tests: Mapping[str, ImageSet],
    detectors: str | Sequence[Any] = "default",
    protocol: str = "blind",
    *,
    id_val: ImageSet | None = None,
    n_val: int | float = 0.1,
    accept_rate: float = 0.95,
    seed: int = 0,
    name: str = "user",
) -> list[dict[str, Any]]:
    """Benchmark detectors on one model and the user's image sets (what ``oodlab bench`` does).

    Args:
        model: An oodlab model (built-in, or :func:`oodlab.models.wrap` of any ``nn.Module``).
        id_train: ID training images; detectors fit on them (minus the carved-out validation).
        id_test: ID test images.
        ood_tests: ``{name: OOD test images}``; never used for tuning.
        detectors: Specs as :func:`parse_detectors` reads them.
        protocol: ``"blind"``: tune on ID validation images and a synthetic OOD validation set
            made from them. (The paper protocol tunes on cuts of the test sets, which needs a
            suite: ``oodlab bench --suite ... --protocol paper``.)
        id_val: ID validation images; default ``n_val`` of ``id_train``.
        n_val: Share or count of ``id_train`` carved out as validation when ``id_val`` is None.
        accept_rate: Share of ID validation images the reported threshold accepts.
        seed: Seed of the carve-out, the synthetic set and each detector's fit.
        name: The ``suite`` field of the rows.

    Returns:
        One row per (detector, OOD test set) with the keys of ``oodlab bench``'s rows: every
        metric of :func:`oodlab.metrics.ood_metrics`, ``threshold``, ``id_accuracy`` (NaN when
        ``id_test`` is unlabelled), ``tuning``, ``tuned_on``, timings.
    """
    if protocol != "blind":
        raise OodlabError(
            f"evaluate() runs the blind protocol only, got {protocol!r}: the paper protocol tunes on "
            "cuts of the test sets (oodlab bench --suite NAME --protocol paper)"
        )
    if not 0.0 < accept_rate <= 1.0:
        raise OodlabError(f"accept_rate must be in (0, 1], got {accept_rate}")
    if not ood_tests:
        raise OodlabError("give at least one OOD test set")
    specs = parse_detectors(detectors)
    check_post_hoc(specs, "evaluate()")
    val = blind_validation(id_train, id_val, n_val=n_val, seed=seed)
    shapes = {s.name: s.shape for s in (val.id_train, id_test, *ood_tests.values())}
    if len(set(shapes.values())) != 1:
        raise OodlabError(f"image sets of different shapes: {shapes}; resize them to one shape")
    sets = [id_test, *ood_tests.values(), val.id_val, val.ood_val]
    rows: list[dict[str, Any]] = []
    # A cache of this call's own, with room for every set, gone when the call returns: a loop
    # over models never accumulates the outputs of earlier ones.
    with features.using_cache(OutputsCache(max_entries=len(sets) + 2)):
        dets_for_pass = [s.create() for s in specs]
        shared_pass(model, dets_for_pass, sets, val.id_train)
        logits = features.outputs(model, id_test).logits
        # NaN (not None) for an unlabelled ID test set: the reports format it as a number.
        id_accuracy = classification_accuracy(logits, id_test.y) if id_test.y is not None else float("nan")
        for spec in specs:
            det, fit_seconds = fit_detector(spec, model, val, seed=seed)
            t0 = time.perf_counter()
            id_scores = det.score_set(id_test).numpy()
            threshold = threshold_at_accept_rate(det.score_set(val.id_val).numpy(), accept_rate)
            for ood_name, ood in ood_tests.items():
                ood_scores = det.score_set(ood).numpy()
                row = result_row(
                    (name, seed, protocol),
                    spec.label,
                    det,
                    ood_name,
                    id_scores,
                    ood_scores,
                    threshold=threshold,
                    id_accuracy=id_accuracy,
                    seconds=(fit_seconds, time.perf_counter() - t0),
                    tuned_on=(val.id_val, val.ood_val),
                )
                rows.append({**row, "threshold_on": val.id_val.name, "oodlab": __version__})
    return rows


def scores_in_batches(det: Detector, batches: Any) -> np.ndarray:
    """Scores of every image a stream of batches yields (a ``DataLoader`` of ``(x, y)`` or of
    ``x``), one batch at a time: for data that does not fit in memory. Equal to scoring the
    whole set at once."""
    out = []
    for b in batches:
        x = b[0] if isinstance(b, list | tuple) else b
        out.append(det.score(x).numpy())
    if not out:
        raise OodlabError("no images to score (empty stream)")
    return np.concatenate(out)


__all__ = [
    "DEFAULT_DETECTORS",
    "DetectorSpec",
    "Validation",
    "blind_validation",
    "evaluate",
    "fit_detector",
    "parse_detector",
    "parse_detectors",
    "result_row",
    "scores_in_batches",
]
