"""Choosing a hyperparameter on validation data, the one way every tuned detector does it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from torch import Tensor

from oodlab.metrics import auroc, fpr_at_tpr

if TYPE_CHECKING:
    from oodlab.data.imageset import ImageSet
    from oodlab.detectors.base import Detector

C = TypeVar("C")


def select_on_validation(
    candidates: Sequence[C],
    score_fn: Callable[[C], tuple[Tensor | np.ndarray, Tensor | np.ndarray]],
) -> tuple[C, list[dict[str, float]]]:
    """Pick the candidate with the lowest FPR@95%TPR on (ID validation, OOD validation).

    Ties are broken by the higher AUROC, then by the earlier candidate.

    Args:
        candidates: Hyperparameter values to try, in order.
        score_fn: Maps a candidate to ``(id_val_scores, ood_val_scores)``.

    Returns:
        The chosen candidate and one row per candidate with its ``fpr95`` and ``auroc``.
    """
    if not candidates:
        raise ValueError("no candidates to choose from")
    rows: list[dict[str, float]] = []
    best_key: tuple[float, float] | None = None
    best = candidates[0]
    for cand in candidates:
        s_id, s_ood = score_fn(cand)
        fpr, auc = fpr_at_tpr(s_id, s_ood, 0.95), auroc(s_id, s_ood)
        rows.append({"fpr95": fpr, "auroc": auc})
        key = (fpr, -auc)
        if best_key is None or key < best_key:
            best_key, best = key, cand
    return best, rows


def tune_single_score(
    det: Detector,
    param: str,
    grid: Sequence[float],
    s_id: Mapping[float, Tensor],
    s_ood: Mapping[float, Tensor],
    id_val: ImageSet,
    ood_val: ImageSet,
) -> float:
    """Choose ``param`` from ``grid`` by :func:`select_on_validation` and record it on ``det``.

    ``s_id[v]``/``s_ood[v]`` are the validation scores at value ``v``, shaped ``(N, 1)`` (the
    per-tap layout the feature detectors share). The tuning record gets the choice, the
    criterion, the validation sets and one row per candidate.

    Returns:
        The chosen value.
    """
    best, rows = select_on_validation(grid, lambda v: (s_id[v][:, 0], s_ood[v][:, 0]))
    det._record_tuning({param: float(best), "criterion": "fpr95"}, id_val, ood_val)
    det.tuning_["candidates"] = [{param: v, **r} for v, r in zip(grid, rows, strict=True)]
    return float(best)
