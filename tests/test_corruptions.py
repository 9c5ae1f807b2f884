"""Corruptions: shape, range, dtype, seeding, severity ordering, hand-checked formulas, errors."""

from __future__ import annotations

import numpy as np
import pytest

from oodlab.data.corruptions import CORRUPTIONS, SEVERITIES, check_corruptions, corrupt, corrupt_set
from oodlab.data.mixtures import MixtureSpec, make_mixture, parse_mixture
from oodlab.errors import OodlabError

from .conftest import dark_images, pattern_images

X = pattern_images(24, seed=0).x  # float32 (24, 1, 12, 12)
RGB = np.random.default_rng(0).integers(0, 256, (6, 3, 16, 16), dtype=np.uint8)


def test_the_nine_corruptions_are_registered() -> None:
    assert CORRUPTIONS == (
        "gaussian_noise",
        "shot_noise",
        "blur",
        "contrast",
        "brightness",
        "pixelate",
        "rotate",
        "elastic",
        "invert",
    )


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("x", [X, RGB], ids=["grey-float", "rgb-uint8"])
def test_every_corruption_keeps_shape_range_and_is_seeded(name: str, x: np.ndarray) -> None:
    before = x.copy()
    distances = []
    for s in SEVERITIES:
        out = corrupt(x, name, s, seed=3)
        assert out.shape == x.shape and out.dtype == np.float32
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_array_equal(out, corrupt(x, name, s, seed=3))  # same seed, same images
        ref = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x
        distances.append(float(np.abs(out - ref).mean()))
    np.testing.assert_array_equal(x, before)  # input untouched
    assert distances[-1] > distances[0] > 0.0, distances  # stronger at severity 5 than at 1


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "rotate", "elastic"])
def test_random_corruptions_depend_on_the_seed(name: str) -> None:
    assert not np.array_equal(corrupt(X, name, 3, seed=0), corrupt(X, name, 3, seed=1))


def test_formulas_by_hand() -> None:
    x = np.array([[[[0.0, 0.25], [0.5, 1.0]]]], dtype=np.float32)
    np.testing.assert_allclose(corrupt(x, "invert", 5, 0), 1 - x)
    np.testing.assert_allclose(corrupt(x, "brightness", 2, 0), np.clip(x + 0.2, 0, 1))
    mean = x.mean()
    np.testing.assert_allclose(corrupt(x, "contrast", 1, 0), (x - mean) * 0.4 + mean, rtol=1e-6)
    constant = np.full((1, 1, 8, 8), 0.3, np.float32)
    for name in ("blur", "pixelate"):
        np.testing.assert_allclose(corrupt(constant, name, 5, 0), constant, atol=1e-6)
    rot = corrupt(np.pad(np.ones((1, 1, 4, 4), np.float32), ((0, 0), (0, 0), (4, 4), (4, 4))), "rotate", 5, 0)
    assert rot[0, 0, 4:8, 4:8].min() > 0.99  # a centred square rotated by 90° stays put


def test_corrupt_set_names_the_set() -> None:
    s = corrupt_set(pattern_images(5, seed=1), "blur", 3, seed=0)
    assert s.name == "blur-3" and s.y is None and s.x.dtype == np.float32


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: corrupt(X, "fog", 1, 0), "unknown corruption 'fog'; known corruptions: gaussian_noise"),
        (lambda: corrupt(X, "blur", 6, 0), "severity must be one of 1-5"),
        (lambda: corrupt(X[0], "blur", 1, 0), "(N, C, H, W)"),
        (lambda: corrupt(X.astype(np.float64), "blur", 1, 0), "uint8 or float32"),
        (lambda: check_corruptions([]), "no corruptions named"),
    ],
)
def test_bad_corruption_input_is_a_clear_error(call, pattern: str) -> None:
    with pytest.raises(OodlabError, match=None) as e:
        call()
    assert pattern in str(e.value)


def test_mixture_takes_the_near_share_seeded() -> None:
    near, far = dark_images(100, seed=0, name="near"), pattern_images(300, seed=1)
    near = type(near)("near", np.full_like(near.x, 0.01))  # recognisable: every pixel 0.01
    spec = parse_mixture("mix=near+far:0.3")
    assert spec == MixtureSpec("mix", "near", "far", 0.3) and str(spec) == "mix=near+far:0.3"
    m = make_mixture(spec, near, far, seed=0)
    assert m.name == "mix" and len(m) == 100 and m.y is None
    from_near = np.all(m.x == np.float32(0.01), axis=(1, 2, 3))
    assert from_near.sum() == 30 and not from_near[:30].all()  # 30% near, shuffled in
    np.testing.assert_array_equal(m.x, make_mixture(spec, near, far, seed=0).x)
    assert not np.array_equal(m.x, make_mixture(spec, near, far, seed=1).x)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("mix", "--mixture takes NAME=NEAR+FAR:P"),
        ("mix=a+b", "--mixture takes NAME=NEAR+FAR:P"),
        ("mix=a:0.3", "--mixture takes NAME=NEAR+FAR:P"),
        ("mix=a+b:x", "--mixture takes NAME=NEAR+FAR:P"),
        ("mix=a+b:1.5", "between 0 and 1"),
        ("mix=a+a:0.5", "the same set"),
    ],
)
def test_bad_mixture_is_a_clear_error(text: str, pattern: str) -> None:
    with pytest.raises(OodlabError) as e:
        parse_mixture(text)
    assert pattern in str(e.value)
