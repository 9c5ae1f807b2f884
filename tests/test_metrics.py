"""Tests for oodlab.metrics, with scikit-learn as the reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from oodlab import metrics as M
from oodlab.errors import OodlabError

# --------------------------------------------------------------------------- #
# Reference implementations built on scikit-learn
# --------------------------------------------------------------------------- #


def _labels_scores(id_s: np.ndarray, ood_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    scores = np.r_[np.asarray(id_s, dtype=np.float64), np.asarray(ood_s, dtype=np.float64)]
    return labels, scores


def _sk_point(labels: np.ndarray, scores: np.ndarray, target: float) -> tuple[float, float]:
    """(fpr, tpr) at the first tie-grouped ROC point with TPR >= target."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    i = int(np.argmax(tpr >= target))
    return float(fpr[i]), float(tpr[i])


def _sk_metrics(id_s: np.ndarray, ood_s: np.ndarray) -> dict[str, float]:
    y, s = _labels_scores(id_s, ood_s)
    fpr95, tpr95 = _sk_point(y, s, 0.95)
    return {
        "auroc": roc_auc_score(y, s),
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
        "fpr95": fpr95,
        "detection_error": 0.5 * (1 - tpr95) + 0.5 * fpr95,
        "fpr80": _sk_point(y, s, 0.80)[0],
        "fpr95_ood_positive": _sk_point(1 - y, -s, 0.95)[0],
    }


# --------------------------------------------------------------------------- #
# Score fixtures: (id_scores, ood_scores)
# --------------------------------------------------------------------------- #

_rng = np.random.default_rng(12345)
CASES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "continuous": (_rng.normal(1.0, 1.0, 400), _rng.normal(0.0, 1.0, 300)),
    "continuous_unbalanced": (_rng.normal(0.5, 2.0, 37), _rng.normal(0.0, 1.0, 1000)),
    "ties_int_0_3": (
        _rng.integers(0, 4, 200).astype(float),
        _rng.integers(0, 4, 150).astype(float),
    ),
    "ties_int_0_3_shifted": (
        np.clip(_rng.integers(0, 4, 120) + 1, 0, 3).astype(float),
        _rng.integers(0, 4, 90).astype(float),
    ),
    "ties_rounded": (
        np.round(_rng.normal(0.5, 1.0, 500), 1),
        np.round(_rng.normal(0.0, 1.0, 500), 1),
    ),
    "tiny_1_1": (np.array([0.7]), np.array([0.3])),
    "tiny_1_1_reversed": (np.array([0.3]), np.array([0.7])),
    "tiny_1_1_tied": (np.array([0.5]), np.array([0.5])),
    "tiny_2_3": (np.array([0.9, 0.2]), np.array([0.5, 0.1, 0.95])),
    "tiny_3_2_tied": (np.array([1.0, 1.0, 0.0]), np.array([1.0, 0.0])),
    "separated": (np.linspace(2.0, 3.0, 50), np.linspace(-1.0, 1.0, 40)),
    "reversed": (np.linspace(-1.0, 1.0, 40), np.linspace(2.0, 3.0, 50)),
    "all_equal": (np.full(30, 0.25), np.full(20, 0.25)),
    "large_magnitude": (_rng.normal(1e9, 1e3, 100), _rng.normal(1e9 - 500, 1e3, 100)),
}

METRIC_FUNCS = {
    "auroc": M.auroc,
    "aupr_in": M.aupr_in,
    "aupr_out": M.aupr_out,
    "fpr95": M.fpr95,
    "detection_error": M.detection_error,
    "fpr80": M.fpr80,
    "fpr95_ood_positive": M.fpr95_ood_positive,
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(METRIC_FUNCS))
def test_metric_matches_sklearn(case: str, name: str) -> None:
    id_s, ood_s = CASES[case]
    got = METRIC_FUNCS[name](id_s, ood_s)
    expected = _sk_metrics(id_s, ood_s)[name]
    assert type(got) is float
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ood_metrics_matches_individual_functions(case: str) -> None:
    id_s, ood_s = CASES[case]
    result = M.ood_metrics(id_s, ood_s)
    assert list(result) == [
        "auroc",
        "aupr_in",
        "aupr_out",
        "fpr95",
        "detection_error",
        "fpr80",
        "fpr95_ood_positive",
    ]
    for name, func in METRIC_FUNCS.items():
        assert type(result[name]) is float
        assert result[name] == func(id_s, ood_s)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [0.01, 0.3, 0.5, 0.8, 0.95, 0.99, 1.0])
def test_fpr_at_tpr_matches_sklearn(seed: int, target: float) -> None:
    rng = np.random.default_rng(seed)
    id_s = rng.integers(0, 12, 97).astype(float)
    ood_s = rng.integers(-3, 9, 61).astype(float)
    y, s = _labels_scores(id_s, ood_s)
    assert M.fpr_at_tpr(id_s, ood_s, target) == _sk_point(y, s, target)[0]


# --------------------------------------------------------------------------- #
# Known values
# --------------------------------------------------------------------------- #


def test_perfect_and_reversed_and_equal_values() -> None:
    sep = M.ood_metrics(*CASES["separated"])
    assert sep == {
        "auroc": 1.0,
        "aupr_in": 1.0,
        "aupr_out": 1.0,
        "fpr95": 0.0,
        "detection_error": pytest.approx(0.5 * (1 - 48 / 50)),  # 95% of 50 -> 48 accepted
        "fpr80": 0.0,
        "fpr95_ood_positive": 0.0,
    }
    rev = M.ood_metrics(*CASES["reversed"])
    assert rev["auroc"] == 0.0
    assert rev["fpr95"] == 1.0
    assert rev["fpr80"] == 1.0
    assert rev["fpr95_ood_positive"] == 1.0
    eq = M.ood_metrics(*CASES["all_equal"])
    assert eq["auroc"] == 0.5
    assert eq["aupr_in"] == pytest.approx(30 / 50)  # precision = base rate
    assert eq["aupr_out"] == pytest.approx(20 / 50)
    assert eq["fpr95"] == 1.0
    assert eq["detection_error"] == 0.5
    assert eq["fpr95_ood_positive"] == 1.0


def test_hand_computed_distinct_scores() -> None:
    id_s = np.arange(1, 21, dtype=float)  # 1..20
    ood_s = np.arange(-16, 4, dtype=float)  # -16..3
    # 95% of 20 ID = 19 accepted -> t = 2; OOD >= 2: {2, 3} -> 2/20.
    assert M.fpr95(id_s, ood_s) == pytest.approx(0.1)
    # 80% of 20 ID = 16 accepted -> t = 5; no OOD >= 5.
    assert M.fpr80(id_s, ood_s) == 0.0
    assert M.detection_error(id_s, ood_s) == pytest.approx(0.5 * 0.05 + 0.5 * 0.1)
    # OOD positive: catch 19 of 20 OOD (score <= 2) -> ID with score <= 2: {1, 2}.
    assert M.fpr95_ood_positive(id_s, ood_s) == pytest.approx(0.1)
    # Pairs with id <= ood: id=1 vs ood {1 (tie), 2, 3}, id=2 vs {2 (tie), 3}, id=3 vs {3 (tie)}.
    # Wins lost = 2.5 + 1.5 + 0.5 = 4.5 of 400 pairs.
    assert M.auroc(id_s, ood_s) == pytest.approx(1 - 4.5 / 400)


def test_hand_computed_with_ties() -> None:
    id_s = np.array([0.0] * 1 + [1.0] * 2 + [2.0] * 37)  # 40 ID scores
    ood_s = np.array([0.0, 1.0, 1.0, 2.0])
    # t = 2 accepts 37/40 = 0.925 < 0.95; t = 1 accepts 39/40 = 0.975 (tie overshoot).
    assert M.fpr95(id_s, ood_s) == pytest.approx(3 / 4)
    assert M.detection_error(id_s, ood_s) == pytest.approx(0.5 * (1 - 0.975) + 0.5 * 0.75)
    assert M.fpr80(id_s, ood_s) == pytest.approx(1 / 4)  # t = 2
    assert M.fpr_at_tpr(id_s, ood_s, 0.925) == pytest.approx(1 / 4)
    assert M.fpr_at_tpr(id_s, ood_s, 0.926) == pytest.approx(3 / 4)
    assert M.fpr_at_tpr(id_s, ood_s, 1.0) == 1.0
    # OOD positive: score <= 1 catches 3/4 < 0.95, so all OOD needs score <= 2 -> every ID flagged.
    assert M.fpr95_ood_positive(id_s, ood_s) == 1.0
    assert M.threshold_at_accept_rate(id_s, 0.95) == 1.0
    assert M.threshold_at_accept_rate(id_s, 0.9) == 2.0
    assert M.threshold_at_accept_rate(id_s, 1.0) == 0.0


def test_fpr95_ood_positive_hand_computed_asymmetric() -> None:
    id_s = np.array([0.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0])
    ood_s = np.array([-3.0, -2.0, -1.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.5, 20.0])
    # Catch >= 95% of OOD by flagging score <= u: 10/10 needs u = 20 -> all ID flagged.
    assert M.fpr95_ood_positive(id_s, ood_s) == 1.0
    # ID positive: 95% of 10 ID -> all 10 accepted, t = 0 -> OOD >= 0: 7 of 10.
    assert M.fpr95(id_s, ood_s) == pytest.approx(0.7)
    # 80% -> 8 accepted, t = 6 -> OOD >= 6: {20}.
    assert M.fpr80(id_s, ood_s) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("scores", "rate", "expected"),
    [
        ([5, 4, 3, 2, 1], 0.8, 2.0),
        ([5, 4, 3, 2, 1], 0.79, 2.0),
        ([5, 4, 3, 2, 1], 0.81, 1.0),
        ([5, 4, 3, 2, 1], 0.2, 5.0),
        ([5, 4, 3, 2, 1], 0.1, 5.0),
        ([5, 4, 3, 2, 1], 1.0, 1.0),
        ([3, 1, 2, 2, 2], 0.5, 2.0),  # ties: 4/5 accepted at t = 2
        ([3, 1, 2, 2, 2], 0.2, 3.0),
        ([7.5], 0.95, 7.5),
        (list(range(100)), 0.95, 5.0),  # 95 of 100 accepted
        (list(range(100)), 0.07, 93.0),  # 0.07 * 100 rounds up to 7.000000000000001
    ],
)
def test_threshold_at_accept_rate(scores: list[float], rate: float, expected: float) -> None:
    t = M.threshold_at_accept_rate(scores, rate)
    assert type(t) is float
    assert t == expected
    arr = np.asarray(scores, dtype=float)
    assert np.mean(arr >= t) >= rate
    # Largest such threshold: anything above it accepts too little.
    assert np.mean(arr >= np.nextafter(t, np.inf)) < rate


@pytest.mark.parametrize("rate", [0.5, 0.8, 0.95, 0.99])
def test_threshold_is_the_fpr_threshold(rate: float) -> None:
    rng = np.random.default_rng(7)
    id_s = np.round(rng.normal(1.0, 1.0, 333), 1)
    ood_s = np.round(rng.normal(0.0, 1.0, 211), 1)
    t = M.threshold_at_accept_rate(id_s, rate)
    id_acc, ood_rej = M.accuracy_at_threshold(id_s, ood_s, t)
    assert id_acc >= rate
    assert M.fpr_at_tpr(id_s, ood_s, rate) == pytest.approx(1.0 - ood_rej, abs=1e-15)
    assert M.threshold_at_accept_rate(id_s) == M.threshold_at_accept_rate(id_s, 0.95)


def test_accuracy_at_threshold() -> None:
    id_s = [0.1, 0.5, 0.9, 0.5]
    ood_s = [0.2, 0.5, 0.0]
    id_acc, ood_rej = M.accuracy_at_threshold(id_s, ood_s, 0.5)  # score == t is accepted
    assert (id_acc, ood_rej) == (0.75, pytest.approx(2 / 3))
    assert type(id_acc) is float and type(ood_rej) is float
    assert M.accuracy_at_threshold(id_s, ood_s, -10.0) == (1.0, 0.0)
    assert M.accuracy_at_threshold(id_s, ood_s, 10.0) == (0.0, 1.0)


def test_ood_metrics_with_threshold() -> None:
    id_s, ood_s = CASES["ties_rounded"]
    result = M.ood_metrics(id_s, ood_s, threshold=0.3)
    assert (result["id_accepted"], result["ood_rejected"]) == M.accuracy_at_threshold(id_s, ood_s, 0.3)
    assert set(result) == set(METRIC_FUNCS) | {"id_accepted", "ood_rejected"}
    assert all(type(v) is float and 0.0 <= v <= 1.0 for v in result.values())


def test_ood_positive_metrics_are_negated_id_positive_metrics() -> None:
    id_s, ood_s = CASES["ties_int_0_3"]
    assert M.aupr_out(id_s, ood_s) == pytest.approx(M.aupr_in(-ood_s, -id_s), abs=1e-15)
    assert M.fpr95_ood_positive(id_s, ood_s) == M.fpr95(-ood_s, -id_s)
    assert M.auroc(id_s, ood_s) == pytest.approx(M.auroc(-ood_s, -id_s), abs=1e-15)


def test_input_types_lists_ints_float32() -> None:
    id_s, ood_s = CASES["continuous"]
    ref = M.ood_metrics(id_s, ood_s)
    assert M.ood_metrics(id_s.tolist(), ood_s.tolist()) == ref
    id32, ood32 = id_s.astype(np.float32), ood_s.astype(np.float32)
    assert M.ood_metrics(id32, ood32) == pytest.approx(_sk_metrics(id32, ood32), abs=1e-12)
    assert M.auroc([3, 2, 1], [0, 1]) == pytest.approx(roc_auc_score([1, 1, 1, 0, 0], [3, 2, 1, 0, 1]))


def test_large_input_matches_sklearn() -> None:
    rng = np.random.default_rng(99)
    id_s = np.round(rng.normal(1.0, 1.0, 100_000), 3)
    ood_s = np.round(rng.normal(0.0, 1.0, 80_000), 3)
    got = M.ood_metrics(id_s, ood_s)
    assert got == pytest.approx(_sk_metrics(id_s, ood_s), rel=1e-10, abs=1e-12)


# --------------------------------------------------------------------------- #
# classification_accuracy
# --------------------------------------------------------------------------- #


def test_classification_accuracy_logits_and_predictions() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    # argmax: 0, 1, 2, 0 (first maximum wins the tie) -> 3/4 correct.
    assert M.classification_accuracy(logits, labels) == 0.75
    assert M.classification_accuracy([0, 1, 2, 0], labels) == 0.75
    assert M.classification_accuracy(np.array([0.0, 1.0, 1.0, 0.0]), labels.tolist()) == 1.0
    assert type(M.classification_accuracy(logits, labels)) is float


@pytest.mark.parametrize(
    ("preds", "labels", "match"),
    [
        (np.zeros((3, 2)), np.zeros(2, dtype=int), "3 predictions but 2 labels"),
        (np.zeros(0, dtype=int), np.zeros(0, dtype=int), "empty"),
        (np.zeros((2, 2, 2)), np.zeros(2, dtype=int), "shape"),
        (np.array([0.5, 1.0]), np.array([0, 1]), "integer"),
        (np.array([[np.nan, 1.0]]), np.array([0]), "NaN/inf"),
        (np.array([0, 1]), np.array([[0, 1]]), "labels must be 1-D"),
    ],
)
def test_classification_accuracy_errors(preds: np.ndarray, labels: np.ndarray, match: str) -> None:
    with pytest.raises(OodlabError, match=match):
        M.classification_accuracy(preds, labels)


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #

ALL_SCORE_FUNCS = [
    *METRIC_FUNCS.values(),
    M.ood_metrics,
    lambda i, o: M.fpr_at_tpr(i, o, 0.9),
    lambda i, o: M.accuracy_at_threshold(i, o, 0.0),
]


@pytest.mark.parametrize("func", ALL_SCORE_FUNCS)
def test_nan_inf_errors_name_array_and_count(func) -> None:
    good = np.array([0.1, 0.2, 0.3, 0.4])
    bad = np.array([np.nan, 0.2, np.inf, -np.inf, 0.5])
    with pytest.raises(OodlabError, match="id_scores has 3 NaN/inf values"):
        func(bad, good)
    with pytest.raises(OodlabError, match="ood_scores has 3 NaN/inf values"):
        func(good, bad)


@pytest.mark.parametrize("func", ALL_SCORE_FUNCS)
@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.array([]), "empty"),
        (np.zeros((3, 2)), r"1-D.*\(3, 2\)"),
        (np.float64(1.0), "1-D"),
        (["a", "b"], "array of numbers"),
    ],
)
def test_shape_and_type_errors(func, bad, match: str) -> None:
    good = [0.1, 0.2]
    with pytest.raises(OodlabError, match="id_scores .*" if match == "empty" else match):
        func(bad, good)
    with pytest.raises(OodlabError, match=match):
        func(good, bad)


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="ood_scores is empty"):
        M.auroc([1.0], [])


@pytest.mark.parametrize("threshold", [np.nan, np.inf, -np.inf, "x"])
def test_bad_threshold(threshold) -> None:
    with pytest.raises(OodlabError, match="threshold"):
        M.accuracy_at_threshold([1.0], [0.0], threshold)
    with pytest.raises(OodlabError, match="threshold"):
        M.ood_metrics([1.0], [0.0], threshold=threshold)


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.01, np.nan, np.inf])
def test_bad_accept_rate_and_tpr(rate: float) -> None:
    with pytest.raises(OodlabError, match=r"accept_rate must be in \(0, 1\]"):
        M.threshold_at_accept_rate([1.0, 2.0], rate)
    with pytest.raises(OodlabError, match=r"tpr must be in \(0, 1\]"):
        M.fpr_at_tpr([1.0, 2.0], [0.0], rate)


def test_threshold_at_accept_rate_bad_scores() -> None:
    with pytest.raises(OodlabError, match="id_val_scores has 1 NaN/inf values"):
        M.threshold_at_accept_rate([1.0, np.nan])
    with pytest.raises(OodlabError, match="id_val_scores is empty"):
        M.threshold_at_accept_rate([])


# --------------------------------------------------------------------------- #
# torch
# --------------------------------------------------------------------------- #


def test_torch_inputs() -> None:
    torch = pytest.importorskip("torch")
    id_s, ood_s = CASES["ties_rounded"]
    ref = M.ood_metrics(id_s, ood_s, threshold=0.2)
    id_t = torch.tensor(id_s, dtype=torch.float64, requires_grad=True)
    ood_t = torch.tensor(ood_s, dtype=torch.float64)
    assert M.ood_metrics(id_t, ood_t, threshold=torch.tensor(0.2, dtype=torch.float64)) == ref
    assert M.threshold_at_accept_rate(id_t) == M.threshold_at_accept_rate(id_s)
    # bfloat16 has no NumPy dtype; it must still work.
    small = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    assert M.auroc(small, torch.tensor([0.0, 2.0], dtype=torch.bfloat16)) == pytest.approx(
        roc_auc_score([1, 1, 1, 0, 0], [1, 2, 3, 0, 2])
    )
    with pytest.raises(OodlabError, match="id_scores has 1 NaN/inf values"):
        M.auroc(torch.tensor([float("nan"), 1.0]), ood_t)
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = torch.tensor([1, 0, 0])
    assert M.classification_accuracy(logits, labels) == pytest.approx(2 / 3)
    assert M.classification_accuracy(logits.argmax(dim=1), labels) == pytest.approx(2 / 3)
