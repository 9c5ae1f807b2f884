"""Metrics for out-of-distribution (OOD) detection and classification.

Conventions used throughout this module:

* A detector's score is **higher for more in-distribution (ID)** inputs.
* Unless a function says otherwise, **ID is the positive class**.
* An input is *accepted* (called ID) at threshold ``t`` iff ``score >= t``.
* ROC curves are built the way :func:`sklearn.metrics.roc_curve` builds them,
  with ties grouped: there is exactly one ROC point per *distinct* score value
  ``t`` (taken in decreasing order), holding the counts of ID and OOD scores
  ``>= t``. Unlike ``roc_curve``'s default (``drop_intermediate=True``), no
  collinear points are dropped, so every distinct threshold is a candidate.
  That is, this module's curve equals ``roc_curve(..., drop_intermediate=False)``
  without its leading ``(0, 0)`` point at threshold ``+inf``.

All metrics are pure NumPy functions (one sort plus cumulative counts) that
compute in float64 and return Python floats in ``[0, 1]``. Score inputs are
1-D array-likes: NumPy arrays, lists, or torch tensors (any device). Invalid
inputs (NaN/inf values, empty or non-1-D arrays, ...) raise
:class:`~oodlab.errors.OodlabError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from oodlab.errors import OodlabError

__all__ = [
    "accuracy_at_threshold",
    "aupr_in",
    "aupr_out",
    "auroc",
    "classification_accuracy",
    "detection_error",
    "fpr80",
    "fpr95",
    "fpr95_ood_positive",
    "fpr_at_tpr",
    "ood_metrics",
    "threshold_at_accept_rate",
]


# --------------------------------------------------------------------------- #
# Input handling
# --------------------------------------------------------------------------- #


def _to_numpy(x: Any) -> np.ndarray:
    """Convert an array-like (including a torch tensor) to a NumPy array.

    Torch is never imported: anything with a ``detach`` method is treated as a
    tensor and moved to the CPU. Dtypes NumPy lacks (e.g. bfloat16) are
    converted to float32 first.
    """
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        try:
            return t.numpy()
        except (TypeError, RuntimeError):
            return t.float().numpy()
    return np.asarray(x)


def _as_scores(x: Any, name: str) -> np.ndarray:
    """Validate one array of scores and return it as a float64 1-D array.

    Args:
        x: 1-D array-like of finite scores.
        name: The argument's name, used in error messages.

    Returns:
        A float64 NumPy array of shape ``(N,)`` with ``N >= 1``.

    Raises:
        OodlabError: If ``x`` is not numeric, not 1-D, empty, or holds
            NaN or infinite values.
    """
    try:
        arr = np.asarray(_to_numpy(x), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise OodlabError(f"{name} must be a 1-D array of numbers: {exc}") from exc
    if arr.ndim != 1:
        raise OodlabError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    if arr.size == 0:
        raise OodlabError(f"{name} is empty; at least one score is needed")
    n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if n_bad:
        raise OodlabError(f"{name} has {n_bad} NaN/inf values (out of {arr.size}); scores must be finite")
    return arr


def _check_fraction(value: float, name: str) -> float:
    """Check that ``value`` is a finite number in ``(0, 1]`` and return it as a float."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise OodlabError(f"{name} must be a number, got {value!r}") from exc
    if not (math.isfinite(v) and 0.0 < v <= 1.0):
        raise OodlabError(f"{name} must be in (0, 1], got {value!r}")
    return v


def _check_threshold(threshold: float) -> float:
    """Check that ``threshold`` is a finite number and return it as a float."""
    try:
        t = float(threshold)
    except (TypeError, ValueError) as exc:
        raise OodlabError(f"threshold must be a number, got {threshold!r}") from exc
    if not math.isfinite(t):
        raise OodlabError(f"threshold must be finite, got {threshold!r}")
    return t


# --------------------------------------------------------------------------- #
# The shared ROC construction
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Roc:
    """Tie-grouped ROC points, one per distinct threshold (decreasing).

    Attributes:
        thresholds: Distinct score values, strictly decreasing, shape ``(M,)``.
        tps: Number of positives with ``score >= thresholds[i]`` (float64).
        fps: Number of negatives with ``score >= thresholds[i]`` (float64).
        n_pos: Number of positives (``tps[-1]``).
        n_neg: Number of negatives (``fps[-1]``).
    """

    thresholds: np.ndarray
    tps: np.ndarray
    fps: np.ndarray
    n_pos: int
    n_neg: int

    @property
    def tpr(self) -> np.ndarray:
        """True-positive rate at each point, computed as ``tps / n_pos``."""
        return self.tps / self.n_pos

    @property
    def fpr(self) -> np.ndarray:
        """False-positive rate at each point, computed as ``fps / n_neg``."""
        return self.fps / self.n_neg

    def flipped(self) -> _Roc:
        """The ROC curve with classes swapped and scores negated.

        Negatives become positives and thresholds apply to ``-score``; the
        result equals ``_roc_points(-neg_scores, -pos_scores)`` but costs no
        extra sort. The number of old negatives with ``-score >= -t`` (i.e.
        ``score <= t``) is ``n_neg`` minus the number with ``score > t``,
        which is the cumulative count at the previous (larger) threshold.
        """
        fps_excl = np.concatenate(([0.0], self.fps[:-1]))  # negatives with score > t
        tps_excl = np.concatenate(([0.0], self.tps[:-1]))  # positives with score > t
        return _Roc(
            thresholds=-self.thresholds[::-1],
            tps=(self.n_neg - fps_excl)[::-1],
            fps=(self.n_pos - tps_excl)[::-1],
            n_pos=self.n_neg,
            n_neg=self.n_pos,
        )


def _roc_points(pos_scores: np.ndarray, neg_scores: np.ndarray) -> _Roc:
    """Build tie-grouped ROC points for validated float64 score arrays.

    For each distinct score ``t`` in decreasing order, count the positives and
    negatives with ``score >= t``. Tied scores form one point, exactly as
    :func:`sklearn.metrics.roc_curve` groups them (with
    ``drop_intermediate=False``, without the leading ``+inf`` point).

    Args:
        pos_scores: Scores of the positive class (1-D, finite, non-empty).
        neg_scores: Scores of the negative class (1-D, finite, non-empty).

    Returns:
        The ROC points.
    """
    n_pos, n_neg = pos_scores.size, neg_scores.size
    # Sorting each class first makes the combined array two sorted runs, which
    # the stable sort (timsort) merges in linear time; tie order is irrelevant
    # because ties are grouped below.
    combined = np.concatenate((np.sort(pos_scores), np.sort(neg_scores)))
    order = np.argsort(combined, kind="stable")
    scores = combined[order][::-1]  # decreasing
    is_pos = (order < n_pos)[::-1]
    # Last index of each run of equal scores = the point after all ties are counted.
    last = np.flatnonzero(scores[1:] != scores[:-1])
    last = np.append(last, scores.size - 1)
    tps = np.cumsum(is_pos, dtype=np.float64)[last]
    fps = (last + 1).astype(np.float64) - tps
    return _Roc(thresholds=scores[last], tps=tps, fps=fps, n_pos=n_pos, n_neg=n_neg)


def _id_roc(id_scores: Any, ood_scores: Any) -> _Roc:
    """Validate inputs and build the ID-positive ROC points."""
    return _roc_points(_as_scores(id_scores, "id_scores"), _as_scores(ood_scores, "ood_scores"))


def _auc(roc: _Roc) -> float:
    """Trapezoidal area under the ROC curve, starting from ``(0, 0)``."""
    d_fps = np.diff(roc.fps, prepend=0.0)
    sum_tps = roc.tps + np.concatenate(([0.0], roc.tps[:-1]))
    # Counts are integers below 2**53, so the numerator is exact for any
    # realistic input size; only the final division rounds.
    return float(np.dot(d_fps, sum_tps) / (2.0 * roc.n_pos * roc.n_neg))


def _average_precision(roc: _Roc) -> float:
    """Step-wise average precision: ``sum_i (R_i - R_{i-1}) * P_i``, in [0, 1] by construction.

    Computed as ``(sum_i ΔTP_i · P_i) / n_pos`` rather than as a sum of recall steps
    ``ΔTP_i / n_pos``: summing n rounded fractions ``1/n`` can land above 1 (20 perfectly
    separated positives gave 1.0000000000000002). Here every ``ΔTP_i`` is an exact integer,
    ``P_i = TP_i / (TP_i + FP_i) <= 1`` exactly (IEEE division is monotone), so each product
    rounds to at most ``ΔTP_i``; every partial sum, in any summation order, is bounded by an
    integer partial sum of the ``ΔTP_i`` (representable below 2**53), so the total is at most
    ``n_pos`` and the final division at most 1. No clipping is needed.
    """
    precision = roc.tps / (roc.tps + roc.fps)
    d_tps = np.diff(roc.tps, prepend=0.0)
    return float(np.dot(d_tps, precision) / roc.n_pos)


def _point_at_tpr(roc: _Roc, tpr: float) -> int:
    """Index of the first ROC point (decreasing threshold) with ``TPR >= tpr``."""
    # The last point has TPR == 1.0 exactly, so for tpr <= 1 a match exists.
    return int(np.argmax(roc.tpr >= tpr))


def _fpr_at(roc: _Roc, tpr: float) -> float:
    return float(roc.fps[_point_at_tpr(roc, tpr)] / roc.n_neg)


def _detection_error_at(roc: _Roc, tpr: float) -> float:
    i = _point_at_tpr(roc, tpr)
    achieved_tpr = roc.tps[i] / roc.n_pos
    fpr = roc.fps[i] / roc.n_neg
    return float(0.5 * (1.0 - achieved_tpr) + 0.5 * fpr)


# --------------------------------------------------------------------------- #
# Public metrics
# --------------------------------------------------------------------------- #


def auroc(id_scores: Any, ood_scores: Any) -> float:
    """Area under the ROC curve, with ID as the positive class.

    The ROC curve has one point per distinct score (ties grouped) plus the
    origin, and the area is computed with the trapezoidal rule. This equals
    :func:`sklearn.metrics.roc_auc_score` with ID labelled 1, and also the
    probability that a random ID score exceeds a random OOD score, counting
    ties as one half.

    Args:
        id_scores: 1-D scores of in-distribution inputs (higher = more ID).
        ood_scores: 1-D scores of out-of-distribution inputs.

    Returns:
        AUROC in ``[0, 1]``; 1.0 means every ID score exceeds every OOD score,
        0.5 means chance (or all scores equal).

    Raises:
        OodlabError: For empty, non-1-D, or non-finite inputs.
    """
    return _auc(_id_roc(id_scores, ood_scores))


def aupr_in(id_scores: Any, ood_scores: Any) -> float:
    """Area under the precision-recall curve with ID as the positive class.

    Computed as *average precision*, exactly as
    :func:`sklearn.metrics.average_precision_score` does (step-wise, **not**
    trapezoidal): ``sum_i (R_i - R_{i-1}) * P_i`` over the distinct score
    values ``t_i`` in decreasing order (ties grouped), where ``P_i`` and
    ``R_i`` are the precision and recall of accepting ``score >= t_i``, and
    ``R_0 = 0``.

    Args:
        id_scores: 1-D scores of in-distribution inputs (higher = more ID).
        ood_scores: 1-D scores of out-of-distribution inputs.

    Returns:
        AUPR-In in ``[0, 1]``.

    Raises:
        OodlabError: For empty, non-1-D, or non-finite inputs.
    """
    return _average_precision(_id_roc(id_scores, ood_scores))


def aupr_out(id_scores: Any, ood_scores: Any) -> float:
    """Area under the precision-recall curve with OOD as the positive class.

    Average precision (step-wise, as
    :func:`sklearn.metrics.average_precision_score`; not trapezoidal) with OOD
    labelled positive and the **negated** scores used as the ranking, so a
    lower score means "more OOD". Ties are grouped. Equivalent to
    ``aupr_in(-ood_scores, -id_scores)``.

    Args:
        id_scores: 1-D scores of in-distribution inputs (higher = more ID).
        ood_scores: 1-D scores of out-of-distribution inputs.

    Returns:
        AUPR-Out in ``[0, 1]``.

    Raises:
        OodlabError: For empty, non-1-D, or non-finite inputs.
    """
    return _average_precision(_id_roc(id_scores, ood_scores).flipped())


def fpr_at_tpr(id_scores: Any, ood_scores: Any, tpr: float) -> float:
    """False-positive rate (OOD accepted) at the first ROC point reaching ``tpr``.

    ID is the positive class. Walk the tie-grouped ROC curve (one point per
    distinct score ``t``, in decreasing order, as
    :func:`sklearn.metrics.roc_curve` builds it) and stop at the first point
    whose TPR, the share of ID scores ``>= t``, is at least ``tpr``. That ``t``
    is the largest threshold accepting at least a ``tpr`` share of ID (see
    :func:`threshold_at_accept_rate`). Return the share of OOD scores
    ``>= t``. Because of ties the achieved TPR may exceed ``tpr``.

    This is ``fpr[np.argmax(tpr_curve >= tpr)]`` on
    ``roc_curve(labels, scores, drop_intermediate=False)`` with ID labelled 1.

    Args:
        id_scores: 1-D scores of in-distribution inputs (higher = more ID).
        ood_scores: 1-D scores of out-of-distribution inputs.
        tpr: Target true-positive rate, in ``(0, 1]``.

    Returns:
        The FPR in ``[0, 1]`` (lower is better).

    Raises:
        OodlabError: For invalid scores or ``tpr`` outside ``(0, 1]``.
    """
    target = _check_fraction(tpr, "tpr")
    return _fpr_at(_id_roc(id_scores, ood_scores), target)


def fpr95(id_scores: Any, ood_scores: Any) -> float:
    """FPR at 95% TPR, with ID as the positive class.

    ``fpr_at_tpr(id_scores, ood_scores, 0.95)``: take the largest threshold
    ``t`` (a distinct score value, ties grouped) that accepts (``score >= t``)
    at least 95% of ID scores, and return the share of OOD scores ``>= t``.

    Args:
        id_scores: 1-D scores of in-distribution inputs (higher = more ID).
        ood_scores: 1-D scores of out-of-distribution inputs.

    Returns:
        The FPR in ``[0, 1]`` (lower is better).

    Raises:
        OodlabError: For empty, non-1-D, or non-finite inputs.
    """
    return _fpr_at(_id_roc(id_scores, ood_scores), 0.95)


def fpr80(id_scores: Any, ood_scores: Any) -> float:
    """FPR at 80% TPR, with ID as the positive class.

    ``fpr_at_tpr(id_scores, ood_scores, 0.80)``: take the largest threshold
    ``t`` (a distinct score value, ties grouped) that accepts (``score >= t``)
    at least 80% of ID scores, and return the share of OOD scores ``>= t``.

    Args:
        id_scores: 1-D scores of in-distribution inputs (higher = more ID).
        ood_scores: 1-D scores of out-of-distribution inputs.

    Returns:
        The FPR in ``[0, 1]`` (lower is better).

    Raises:
        OodlabError: For empty, non-1-D, or non-finite inputs.
    """
    return _fpr_at(_id_roc(id_scores, ood_scores), 0.80)


def detection_error(id_scores: Any, ood_scores: Any) -> float:
    """Detection error at the 95%-TPR operating point, ID positive.

    ``0.5 * (1 - TPR) + 0.5 * FPR`` at the same ROC point :func:`fpr95` uses:
    the first tie-grouped ROC point (decreasing threshold ``t``) whose TPR is
    at least 0.95. ``TPR`` is the share of ID scores ``>= t`` actually achieved
    there (it may exceed 0.95 when scores tie) and ``FPR`` is the share of OOD
    scores ``>= t``. This is the error of the threshold rule under equal
    priors for ID and OOD.

    Args:
        id_scores: 1-D scores of in-distribution inputs (higher = more ID).
        ood_scores: 1-D scores of out-of-distribution inputs.

    Returns:
        The detection error in ``[0, 1]`` (lower is better).

    Raises:
        OodlabError: For empty, non-1-D, or non-finite inputs.
    """
    return _detection_error_at(_id_roc(id_scores, ood_scores), 0.95)


def fpr95_ood_positive(id_scores: Any, ood_scores: Any) -> float:
    """FPR at 95% TPR with OOD as the positive class (OpenOOD / pytorch-ood).

    Scores are negated so that larger means "more OOD" and OOD is labelled
    positive. Walk the tie-grouped ROC curve of that problem (thresholds
    ``u`` on ``-score``, decreasing) and stop at the first point catching at
    least 95% of OOD (share of OOD with ``-score >= u`` is ``>= 0.95``).
    Return the share of ID with ``-score >= u``, i.e. the share of ID scores
    ``<= -u`` that are flagged OOD at that point. Equivalent to
    ``fpr_at_tpr(-ood_scores, -id_scores, 0.95)``.

    Args:
        id_scores: 1-D scores of in-distribution inputs (higher = more ID).
        ood_scores: 1-D scores of out-of-distribution inputs.

    Returns:
        The share of ID flagged OOD, in ``[0, 1]`` (lower is better).

    Raises:
        OodlabError: For empty, non-1-D, or non-finite inputs.
    """
    return _fpr_at(_id_roc(id_scores, ood_scores).flipped(), 0.95)


def threshold_at_accept_rate(id_val_scores: Any, accept_rate: float = 0.95) -> float:
    """The largest threshold that accepts at least ``accept_rate`` of the ID scores.

    Inputs are accepted iff ``score >= t``. The result is the largest ``t``
    with ``count(id_val_scores >= t) / N >= accept_rate``; it is always one of
    the given scores, and with ties the accepted share may exceed
    ``accept_rate``. With ``accept_rate = 1`` it is the minimum score. The
    threshold :func:`fpr95` uses equals
    ``threshold_at_accept_rate(id_scores, 0.95)``.

    Args:
        id_val_scores: 1-D scores of held-out in-distribution inputs.
        accept_rate: Required share of ID accepted, in ``(0, 1]``.

    Returns:
        The threshold, as a Python float.

    Raises:
        OodlabError: For invalid scores or ``accept_rate`` outside ``(0, 1]``.
    """
    rate = _check_fraction(accept_rate, "accept_rate")
    scores = np.sort(_as_scores(id_val_scores, "id_val_scores"))[::-1]
    n = scores.size
    # Smallest k with k / n >= rate, evaluated in float exactly as the
    # definition (and the ROC-based metrics) compare it.
    k = min(max(math.ceil(rate * n), 1), n)
    while k > 1 and (k - 1) / n >= rate:
        k -= 1
    while k < n and k / n < rate:
        k += 1
    return float(scores[k - 1])


def accuracy_at_threshold(id_scores: Any, ood_scores: Any, threshold: float) -> tuple[float, float]:
    """Shares of ID accepted and of OOD rejected at a fixed threshold.

    An input is accepted (called ID) iff ``score >= threshold``.

    Args:
        id_scores: 1-D scores of in-distribution inputs (higher = more ID).
        ood_scores: 1-D scores of out-of-distribution inputs.
        threshold: A finite threshold, e.g. from
            :func:`threshold_at_accept_rate` on held-out ID data.

    Returns:
        ``(id_accepted, ood_rejected)``: the share of ID scores ``>= threshold``
        and the share of OOD scores ``< threshold``.

    Raises:
        OodlabError: For invalid scores or a non-finite threshold.
    """
    t = _check_threshold(threshold)
    id_arr = _as_scores(id_scores, "id_scores")
    ood_arr = _as_scores(ood_scores, "ood_scores")
    id_accepted = np.count_nonzero(id_arr >= t) / id_arr.size
    ood_rejected = np.count_nonzero(ood_arr < t) / ood_arr.size
    return float(id_accepted), float(ood_rejected)


def classification_accuracy(logits_or_predictions: Any, labels: Any) -> float:
    """Top-1 classification accuracy.

    Args:
        logits_or_predictions: Either ``(N, K)`` logits (or probabilities),
            reduced with ``argmax`` over the last axis (the first maximum wins
            ties), or ``(N,)`` integer class predictions. NumPy arrays, lists,
            or torch tensors.
        labels: ``(N,)`` integer class labels.

    Returns:
        The share of predictions equal to the labels, in ``[0, 1]``.

    Raises:
        OodlabError: For empty inputs, mismatched lengths, wrong shapes,
            non-finite logits, or non-integer predictions or labels.
    """
    try:
        preds = np.asarray(_to_numpy(logits_or_predictions))
        labs = np.asarray(_to_numpy(labels))
    except (TypeError, ValueError) as exc:
        raise OodlabError(f"classification inputs must be numeric arrays: {exc}") from exc
    if labs.ndim != 1:
        raise OodlabError(f"labels must be 1-D, got an array of shape {labs.shape}")
    if labs.size == 0:
        raise OodlabError("labels is empty; at least one sample is needed")
    labs = _as_integers(labs, "labels")

    if preds.ndim == 2:
        if preds.shape[1] == 0:
            raise OodlabError(f"logits must have at least one class, got shape {preds.shape}")
        try:
            logits = preds.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise OodlabError(f"logits must be numeric: {exc}") from exc
        n_bad = int(logits.size - np.count_nonzero(np.isfinite(logits)))
        if n_bad:
            raise OodlabError(f"logits has {n_bad} NaN/inf values")
        preds = np.argmax(logits, axis=1)
    elif preds.ndim == 1:
        preds = _as_integers(preds, "predictions")
    else:
        raise OodlabError(
            "logits_or_predictions must be (N, K) logits or (N,) predictions, "
            f"got an array of shape {preds.shape}"
        )
    if preds.shape[0] != labs.shape[0]:
        raise OodlabError(f"got {preds.shape[0]} predictions but {labs.shape[0]} labels; they must match")
    return float(np.count_nonzero(preds == labs) / labs.size)


def _as_integers(arr: np.ndarray, name: str) -> np.ndarray:
    """Return ``arr`` as int64, requiring integral (or boolean) values."""
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    try:
        as_float = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise OodlabError(f"{name} must hold integer class indices: {exc}") from exc
    if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
        raise OodlabError(f"{name} must hold integer class indices")
    return as_float.astype(np.int64)


def ood_metrics(id_scores: Any, ood_scores: Any, *, threshold: float | None = None) -> dict[str, float]:
    """All OOD-detection metrics at once, sorting the scores only once.

    Args:
        id_scores: 1-D scores of in-distribution inputs (higher = more ID).
        ood_scores: 1-D scores of out-of-distribution inputs.
        threshold: Optional finite threshold (accept iff ``score >= threshold``),
            e.g. from :func:`threshold_at_accept_rate` on held-out ID data.

    Returns:
        A dict of Python floats in ``[0, 1]`` with keys ``auroc``,
        ``aupr_in``, ``aupr_out``, ``fpr95``, ``detection_error``, ``fpr80``,
        ``fpr95_ood_positive`` (each as defined by the function of that name)
        and, if ``threshold`` is given, ``id_accepted`` and ``ood_rejected``
        (as :func:`accuracy_at_threshold` returns them).

    Raises:
        OodlabError: For invalid scores or a non-finite threshold.
    """
    t = None if threshold is None else _check_threshold(threshold)
    id_arr = _as_scores(id_scores, "id_scores")
    ood_arr = _as_scores(ood_scores, "ood_scores")
    roc = _roc_points(id_arr, ood_arr)
    flipped = roc.flipped()
    result = {
        "auroc": _auc(roc),
        "aupr_in": _average_precision(roc),
        "aupr_out": _average_precision(flipped),
        "fpr95": _fpr_at(roc, 0.95),
        "detection_error": _detection_error_at(roc, 0.95),
        "fpr80": _fpr_at(roc, 0.80),
        "fpr95_ood_positive": _fpr_at(flipped, 0.95),
    }
    if t is not None:
        id_accepted, ood_rejected = accuracy_at_threshold(id_arr, ood_arr, t)
        result["id_accepted"] = id_accepted
        result["ood_rejected"] = ood_rejected
    return result
