"""``either``: the min-of-percentiles score, its thresholding rule, spelling, networks and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oodlab import OodlabError
from oodlab.bench.runner import BenchConfig
from oodlab.cli import main
from oodlab.detectors import create_detector, get_detector_class, load_detector
from oodlab.detectors.either import either_scores, percentile_ranks
from oodlab.metrics import threshold_at_accept_rate
from oodlab.training import make_network

from .conftest import TINY_RECIPE


def test_percentiles_and_min_on_hand_computed_values() -> None:
    val = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(
        percentile_ranks(val, np.array([0.5, 1.0, 2.5, 4.0, 9.0])), [0, 0.25, 0.5, 1, 1]
    )
    a_val, b_val = np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 30.0, 40.0])
    got = either_scores([a_val, b_val], [np.array([3.5, 4.0, 0.0]), np.array([15.0, 45.0, 45.0])])
    np.testing.assert_array_equal(got, [0.25, 1.0, 0.0])


@pytest.mark.parametrize("seed", range(5))
def test_thresholding_is_exactly_either_member_flags(seed: int) -> None:
    """At the threshold accepting a share of ID validation, the combination accepts an input iff
    every member accepts it at that member's own threshold of the same percentile."""
    rng = np.random.default_rng(seed)
    val = [rng.normal(size=200), rng.normal(size=200) * 3]
    val[1][:20] = np.round(val[1][:20])  # ties
    test = [rng.normal(size=500) - 0.5, rng.normal(size=500) * 3 - 1]
    comb_val = either_scores(val, val)
    comb = either_scores(val, test)
    for rate in (0.9, 0.95, 0.975):
        t = threshold_at_accept_rate(comb_val, rate)
        # each member's own threshold: the lowest of its validation scores at percentile >= t
        own = [np.sort(v)[np.searchsorted(np.arange(1, 201) / 200, t)] for v in val]
        rule = np.all([s >= o for s, o in zip(test, own, strict=True)], axis=0)
        np.testing.assert_array_equal(comb >= t, rule)
        assert (comb_val >= t).mean() >= rate


def test_spelling_makes_one_class_per_member_list() -> None:
    cls = get_detector_class("either:odin+hscae")
    assert cls is get_detector_class("either:odin+hscae")
    assert cls.name == "either:odin+hscae"
    assert cls.capabilities.trains and cls.capabilities.input_gradient and not cls.capabilities.shared_pass
    det = create_detector("either:odin+hscae")
    assert det.name == "either:odin+hscae" and det.get_params() == {
        "members": ["odin", "hscae"],
        "params": {},
    }
    assert get_detector_class("either:msp+energy").capabilities.shared_pass


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("either", "needs two or more members"),
        ("either:odin", "needs two or more members joined by"),
        ("either:odin+", "needs two or more members"),
        ("either:odin+nope", "unknown member 'nope'"),
        ("either:odin+either", "unknown member 'either'"),
        ("either:odin+odin", "names a member twice"),
        ("msp:odin", "unknown detector 'msp:odin'"),
    ],
)
def test_bad_members_are_one_clear_line(name: str, message: str) -> None:
    with pytest.raises(OodlabError, match=message) as e:
        create_detector(name)
    assert "\n" not in str(e.value)


def test_bad_members_on_the_command_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", "--suite", "mnist-holdout0", "--detectors", "odin,either:odin+nope", "--no-plots"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown member 'nope'" in err[0]


def test_members_score_one_network() -> None:
    hscae_net = create_detector("hscae").network(TINY_RECIPE)
    assert create_detector("either:odin+hscae").network(TINY_RECIPE) == hscae_net
    assert create_detector("either:msp+odin").network(TINY_RECIPE).members == (TINY_RECIPE,)
    with pytest.raises(OodlabError, match="replaces the suite's classifier"):
        create_detector("either:odin+outlier-exposure").network(TINY_RECIPE)
    with pytest.raises(OodlabError, match="train different networks"):
        create_detector("either:hscae+deep-ensemble").network(TINY_RECIPE)
    with pytest.raises(OodlabError, match="train different networks"):
        BenchConfig(suites=["mnist-holdout0"], detectors=["either:hscae+deep-ensemble"])


def test_either_with_a_trained_member(tiny_setup: dict, tmp_path) -> None:
    """msp + hscae on the HSCAE network: the members' own scores, combined; saved and reloaded."""
    quick = {"hscae": create_detector("hscae").quick_params}
    det = create_detector("either:msp+hscae", params=quick)
    net, _ = make_network(
        det.network(TINY_RECIPE), tiny_setup["id_train"], checkpoint_dir=tmp_path, progress=False
    )
    s = tiny_setup
    det.fit(net, s["id_train"], id_val=s["id_val"], ood_val=s["ood_val"])
    msp = create_detector("msp").fit(net, s["id_train"])
    hscae = create_detector("hscae", **quick["hscae"]).fit(net, s["id_train"])
    x = s["id_test"].tensor(0, 20)
    expected = either_scores(
        [msp.score_set(s["id_val"]).numpy(), hscae.score_set(s["id_val"]).numpy()],
        [msp.score(x).numpy(), hscae.score(x).numpy()],
    )
    np.testing.assert_array_equal(det.score(x).numpy(), expected)
    torch.testing.assert_close(det.score_set(s["id_test"].subset(slice(0, 20))), det.score(x))
    det.save(tmp_path / "either")
    again = load_detector(tmp_path / "either")
    assert type(again) is type(det)
    assert torch.equal(again.score(x), det.score(x))
    assert det.tuning()["chosen"]["percentiles_on"] == "patterns"
