"""HSCAE: SSIM against scikit-image, the distances and levels on hand-checked values, the
autoencoder's shape and conditioning, training beside a frozen classifier, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from oodlab import OodlabError
from oodlab.detectors import create_detector
from oodlab.detectors.hscae import DISTANCES, reconstruction_distances, ssim
from oodlab.models import create_model
from oodlab.models.autoencoder import ConditionalAutoencoder
from oodlab.training import make_network

from .conftest import N_CLASSES, SIZE, TINY_RECIPE
from .test_cli import run, tiny_suite  # noqa: F401  (the seconds-long suite fixture)


def fixed_images() -> tuple[np.ndarray, np.ndarray]:
    """Four pairs of 28×28 images: noisy copies, a shifted stroke, a constant, an inverted blob."""
    rng = np.random.default_rng(7)
    a = rng.uniform(0, 1, (4, 1, 28, 28))
    b = np.clip(a + rng.normal(0, 0.15, a.shape), 0, 1)
    a[1] = 0.0
    a[1, 0, 8:20, 12:15] = 1.0
    b[1] = np.roll(a[1], 2, axis=-1)
    b[2] = 0.5
    yy, xx = np.mgrid[:28, :28]
    blob = np.exp(-((yy - 14) ** 2 + (xx - 14) ** 2) / 30.0)
    a[3, 0], b[3, 0] = blob, 1 - blob
    return a, b


def test_ssim_matches_scikit_image() -> None:
    a, b = fixed_images()
    ours = ssim(torch.tensor(a), torch.tensor(b)).numpy()
    ref = [
        structural_similarity(
            a[i, 0], b[i, 0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
        for i in range(len(a))
    ]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    # Several channels: the mean of the per-channel SSIMs, as scikit-image's channel_axis gives.
    a3, b3 = np.concatenate([a[:2], a[2:]], axis=1), np.concatenate([b[:2], b[2:]], axis=1)
    ref3 = [
        structural_similarity(
            a3[i].transpose(1, 2, 0),
            b3[i].transpose(1, 2, 0),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
        for i in range(2)
    ]
    np.testing.assert_allclose(ssim(torch.tensor(a3), torch.tensor(b3)).numpy(), ref3, rtol=0, atol=1e-12)
    assert torch.allclose(ssim(torch.tensor(a), torch.tensor(a)), torch.ones(4, dtype=torch.float64))


def test_ssim_refuses_images_smaller_than_its_window() -> None:
    with pytest.raises(OodlabError, match="at least 11x11"):
        ssim(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8))


def test_autoencoder_is_deep_plain_and_pools_twice() -> None:
    ae = ConditionalAutoencoder(num_classes=9, in_channels=1, image_size=28, latent_dim=8, width=2)
    enc = [m for s in (ae.enc1, ae.enc2, ae.enc3) for m in s if isinstance(m, torch.nn.Conv2d)]
    dec = [
        m
        for s in (ae.dec3, ae.up2, ae.dec2, ae.up1, ae.dec1)
        for m in s
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    assert len(enc) == 14 and len(dec) == 14
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in ae.modules()) == 2
    assert ae.to_latent.out_features == 8 and ae.side == 7
    x, p = torch.rand(3, 1, 28, 28), torch.softmax(torch.randn(3, 9), 1)
    assert ae.encode(x, p).shape == (3, 8)
    out = ae.eval()(x, p)
    assert out.shape == x.shape and (out >= 0).all() and (out <= 1).all()
    with pytest.raises(OodlabError, match="latent_dim"):
        ConditionalAutoencoder(9, 1, 28, latent_dim=0)


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(
        "hscae", num_classes=N_CLASSES, in_channels=1, image_size=SIZE, classifier={"model": "lenet"}, width=2
    ).eval()


def test_levels_feed_the_reconstruction_back_conditioned_on_the_input() -> None:
    net = tiny_net()
    x = torch.rand(5, 1, SIZE, SIZE)
    seen = []
    hook = net.autoencoder.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    with torch.no_grad():
        recs = net.reconstructions(x, 3)
    hook.remove()
    p = torch.softmax(net.classifier(x) / 2.0, dim=1)
    assert len(seen) == 3 and all(torch.allclose(s, p) for s in seen), "every level uses p(x) at T = 2"
    with torch.no_grad():
        manual = net.autoencoder(net.autoencoder(x, p), p)
    torch.testing.assert_close(recs[1], manual)


def test_distances_on_hand_computed_values() -> None:
    net = tiny_net()
    x = torch.rand(6, 1, SIZE, SIZE)
    d = reconstruction_distances(net, x, 2, DISTANCES)
    assert {k: v.shape for k, v in d.items()} == {k: (2, 6) for k in DISTANCES}
    with torch.no_grad():
        r2 = net.reconstructions(x, 2)[1]
        px = torch.softmax(net.classifier(x).double() / 2, 1)
        pr = torch.softmax(net.classifier(r2).double() / 2, 1)
        _, tx = net.classifier.forward_taps(x, ["penultimate"])
        _, tr = net.classifier.forward_taps(r2, ["penultimate"])
    torch.testing.assert_close(d["mse"][1], ((x.double() - r2.double()) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(d["softmax"][1], (px - pr).abs().sum(1))
    torch.testing.assert_close(d["msp"][1], (px.max(1).values - pr.max(1).values).abs())
    torch.testing.assert_close(
        d["features"][1], (tx["penultimate"].double() - tr["penultimate"].double()).norm(dim=1)
    )
    torch.testing.assert_close(d["ssim"][1], 1 - ssim(x, r2))


def test_training_keeps_the_classifier_frozen(tiny_setup: dict, tmp_path) -> None:
    det = create_detector("hscae", **create_detector("hscae").quick_params)
    net, meta = make_network(
        det.network(TINY_RECIPE), tiny_setup["id_train"], checkpoint_dir=tmp_path, progress=False
    )
    base = tiny_setup["model"]
    for k, v in base.state_dict().items():
        assert torch.equal(net.classifier.state_dict()[k], v), k
    x = tiny_setup["id_test"].tensor(0, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(x), base(x), rtol=0, atol=0)
    assert meta["objective"]["name"] == "reconstruction"
    # Scoring: the negated level-h distance, the same through score() and the cached path.
    det.fit(net, tiny_setup["id_train"])
    s = det.score(x)
    torch.testing.assert_close(s, -reconstruction_distances(net, x, det.levels, ("mse",))["mse"][-1])
    torch.testing.assert_close(det.score_set(tiny_setup["id_test"].subset(slice(0, 8))), s)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"latent_dim": 0}, "latent_dim must be an integer >= 1, got 0"),
        ({"latent_dim": -3}, "latent_dim must be an integer >= 1, got -3"),
        ({"levels": 0}, "levels must be an integer >= 1, got 0"),
        ({"distance": "l1"}, "unknown distance 'l1'; known: mse, ssim, softmax, msp, features"),
    ],
)
def test_bad_parameters_are_one_clear_line(params: dict, message: str) -> None:
    with pytest.raises(OodlabError, match="detector 'hscae'") as e:
        create_detector("hscae", **params)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_hscae_refuses_a_plain_classifier(tiny_setup: dict) -> None:
    with pytest.raises(OodlabError, match="make_network"):
        create_detector("hscae").fit(tiny_setup["model"], tiny_setup["id_train"])


def test_bench_runs_hscae_and_either_and_pictures_the_reconstructions(
    tiny_suite: str,  # noqa: F811  (the fixture imported above)
    tmp_path,
) -> None:
    out = tmp_path / "out"
    args = ["bench", "--suite", tiny_suite, "--detectors", "msp,hscae,either:msp+hscae", "--quiet"]
    assert run([*args, "--accept-rate", "0.975", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert {r["detector"] for r in rows} == {"msp", "hscae", "either:msp+hscae"}
    either = [r for r in rows if r["detector"] == "either:msp+hscae"]
    assert all(0 <= r["auroc"] <= 1 and r["tuning"]["chosen"]["percentiles_on"] for r in either)
    picture = out / "plots" / tiny_suite / "hscae-reconstructions.png"
    assert picture.exists()
    html = (out / "report.html").read_text()
    assert 'data-figure="hscae-reconstructions"' in html and "levels 1-5" in html
    picture.unlink()
    assert run(["report", str(out)]) == 0  # rebuilt from the saved cells alone
    assert picture.exists()
