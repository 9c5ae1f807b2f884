"""Property tests: every share or area metric stays in [0, 1] and agrees with scikit-learn.

Hypothesis draws score sets that are random, perfectly separated, reversed, tie-heavy, tiny
(1e-300) and huge (1e300) in magnitude, in float32 and float64. A metric that sums rounded
fractions can land a few ulps above 1 on one instruction set and not on another (issue 14:
AUPR-Out 1.000000000000002 on a perfectly separated set); these checks fail on that.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from oodlab import metrics as M

SHARES = ("auroc", "aupr_in", "aupr_out", "fpr95", "fpr80", "detection_error", "fpr95_ood_positive")


@st.composite
def score_sets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n_id = draw(st.integers(1, 300))
    n_ood = draw(st.integers(1, 300))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = draw(st.sampled_from([1e-300, 1e-30, 1e-6, 1.0, 1e6, 1e30, 1e300]))
    if dtype == np.float32:
        scale = min(max(scale, 1e-30), 1e30)  # inside float32's normal range
    kind = draw(st.sampled_from(["random", "separated", "reversed", "ties", "equal"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "random":
        id_s, ood_s = rng.normal(0.5, 1.0, n_id), rng.normal(0.0, 1.0, n_ood)
    elif kind in ("separated", "reversed"):
        id_s, ood_s = rng.uniform(2.0, 3.0, n_id), rng.uniform(0.0, 1.0, n_ood)
        if kind == "reversed":
            id_s, ood_s = -id_s, -ood_s
    elif kind == "ties":
        levels = draw(st.integers(1, 5))
        id_s = rng.integers(0, levels, n_id).astype(float)
        ood_s = rng.integers(0, levels, n_ood).astype(float)
    else:
        id_s, ood_s = np.ones(n_id), np.ones(n_ood)
    return (id_s * scale).astype(dtype), (ood_s * scale).astype(dtype)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(score_sets())
def test_every_share_metric_is_in_unit_interval(sets: tuple[np.ndarray, np.ndarray]) -> None:
    id_s, ood_s = sets
    got = M.ood_metrics(id_s, ood_s)
    for name in SHARES:
        assert 0.0 <= got[name] <= 1.0, (name, got[name])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(score_sets())
def test_areas_agree_with_sklearn(sets: tuple[np.ndarray, np.ndarray]) -> None:
    id_s, ood_s = sets
    y = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    s = np.r_[id_s.astype(np.float64), ood_s.astype(np.float64)]
    ref = {
        "auroc": roc_auc_score(y, s),
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
    }
    got = M.ood_metrics(id_s, ood_s)
    for name, value in ref.items():
        if 0.0 <= value <= 1.0:  # scikit-learn itself can round above 1; compare only in range
            assert got[name] == pytest.approx(value, abs=1e-12, rel=0), name


@pytest.mark.parametrize("n_id", [20, 49, 97, 300])
def test_perfect_separation_gives_exactly_one(n_id: int) -> None:
    """The case that failed: perfectly separated sets whose recall steps are 1/n_id."""
    id_s, ood_s = np.arange(n_id, dtype=float) + 1000.0, np.arange(7.0)
    assert M.aupr_in(id_s, ood_s) == 1.0
    # OOD positive: n_id OOD scores below 7 ID scores, recall steps 1/n_id.
    assert M.aupr_out(ood_s + 5000.0, id_s) == 1.0
    assert M.auroc(id_s, ood_s) == 1.0
