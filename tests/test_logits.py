"""Formulas of the logit detectors, checked on hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oodlab import OodlabError
from oodlab.detectors import create_detector
from oodlab.features import Outputs

LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [10.0, -5.0, 3.0]])


def softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp(z / t - (z / t).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def scores(name: str, logits: torch.Tensor = LOGITS, **params: object) -> np.ndarray:
    det = create_detector(name, **params)
    det.model_ = torch.nn.Identity()  # logit detectors learn nothing; bind a stand-in model
    det.tuning_ = {}
    return det.score_outputs(Outputs(logits)).numpy()


def test_msp_is_log_of_max_softmax() -> None:
    expected = np.log(softmax(LOGITS.numpy().astype(np.float64)).max(1))
    np.testing.assert_allclose(scores("msp"), expected, rtol=1e-12)
    np.testing.assert_allclose(np.exp(scores("msp"))[1], 1 / 3)


def test_msp_does_not_saturate_on_confident_inputs() -> None:
    """float32 softmax gives 1.0 for both rows; the log-space score still ranks them."""
    logits = torch.tensor([[40.0, 0.0], [50.0, 0.0]])
    assert torch.softmax(logits, 1).max(1).values.eq(1.0).all()
    s = scores("msp", logits)
    assert s[1] > s[0]
    np.testing.assert_allclose(s, [-math.exp(-40), -math.exp(-50)], rtol=1e-9)


def test_misp_is_minus_log_min_softmax() -> None:
    np.testing.assert_allclose(
        scores("misp"), -np.log(softmax(LOGITS.numpy().astype(np.float64)).min(1)), rtol=1e-12
    )
    np.testing.assert_allclose(
        scores("misp", temperature=2.0), -np.log(softmax(LOGITS.numpy().astype(np.float64), 2).min(1))
    )


def test_maxlogit() -> None:
    np.testing.assert_array_equal(scores("maxlogit"), [2.0, 0.0, 10.0])


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_energy_is_t_logsumexp(t: float) -> None:
    z = LOGITS.numpy().astype(np.float64)
    expected = t * np.log(np.exp(z / t).sum(1))
    np.testing.assert_allclose(scores("energy", temperature=t), expected, rtol=1e-12)


def test_entropy_is_negative_entropy() -> None:
    p = softmax(LOGITS.numpy().astype(np.float64).astype(np.float64))
    np.testing.assert_allclose(scores("entropy"), (p * np.log(p)).sum(1), rtol=1e-10)
    np.testing.assert_allclose(scores("entropy")[1], -math.log(3))


def test_temperature_fixed_matches_formula() -> None:
    expected = np.log(softmax(LOGITS.numpy().astype(np.float64).astype(np.float64), 5.0).max(1))
    det = create_detector("temperature", temperature=5.0)
    det.model_ = torch.nn.Identity()
    det._fit(det.model_, None, None, None)  # fixed T: nothing to tune
    np.testing.assert_allclose(det.score_outputs(Outputs(LOGITS)).numpy(), expected, rtol=1e-12)
    assert det.temperature_ == 5.0


def test_temperature_is_tuned_on_validation(tiny_setup: dict) -> None:
    s = tiny_setup
    det = create_detector("temperature", grid=(1.0, 1000.0))
    det.fit(s["model"], s["id_train"], id_val=s["id_val"], ood_val=s["ood_val"])
    tuning = det.tuning()
    assert tuning["chosen"]["temperature"] in (1.0, 1000.0)
    assert tuning["chosen"]["criterion"] == "fpr95"
    assert tuning["ood_val"] == "dark-val"


def test_temperature_falls_back_to_nll_without_ood_validation(tiny_setup: dict) -> None:
    s = tiny_setup
    det = create_detector("temperature").fit(s["model"], s["id_train"], id_val=s["id_val"])
    assert det.tuning()["chosen"]["criterion"] == "nll"
    assert det.tuning()["ood_val"] is None


def test_temperature_without_any_validation_is_a_clear_error(tiny_setup: dict) -> None:
    with pytest.raises(OodlabError, match="id_val"):
        create_detector("temperature").fit(tiny_setup["model"], tiny_setup["id_train"])


def test_unknown_detector_lists_the_known_ones() -> None:
    with pytest.raises(OodlabError, match="known detectors: .*msp"):
        create_detector("nope")


def test_bad_parameter_is_a_clear_error() -> None:
    with pytest.raises(OodlabError, match="msp"):
        create_detector("msp", temperature=2.0)
