"""BIN, BINC, VIB and VIBY: MMCE and the KL terms by hand, heads on every network, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from oodlab import OodlabError
from oodlab.detectors import create_detector
from oodlab.models import TapRecorder, create_model, list_models
from oodlab.models.heads import BincHead, ClassPriorGaussianHead, GaussianHead
from oodlab.training import (
    TrainConfig,
    build_model,
    create_objective,
    kl_diag_gaussians,
    kl_standard_normal,
    mmce,
    mmce_weighted,
    train,
)
from oodlab.training.binary import bin_loss
from oodlab.training.bottleneck import class_rates, rate

from .conftest import N_CLASSES, SIZE, TINY_RECIPE, pattern_images

# -- MMCE ------------------------------------------------------------------------------------


def kernel(a: float, b: float) -> float:
    return math.exp(-abs(a - b) / 0.4)


def mmce_brute(r: list[float], c: list[int]) -> float:
    m = len(r)
    return sum((c[i] - r[i]) * (c[j] - r[j]) * kernel(r[i], r[j]) for i in range(m) for j in range(m)) / m**2


def mmce_weighted_brute(r: list[float], c: list[int]) -> float:
    good = [x for x, ok in zip(r, c, strict=True) if ok]
    bad = [x for x, ok in zip(r, c, strict=True) if not ok]
    if not good or not bad:
        return 0.0
    cc = sum((1 - a) * (1 - b) * kernel(a, b) for a in good for b in good) / len(good) ** 2
    ww = sum(a * b * kernel(a, b) for a in bad for b in bad) / len(bad) ** 2
    cw = sum((1 - a) * b * kernel(a, b) for a in good for b in bad) / (len(good) * len(bad))
    return cc + ww - 2 * cw


@pytest.mark.parametrize("seed", range(5))
def test_mmce_equals_the_double_sum(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    m = 3 + seed
    r = torch.rand(m, generator=g, dtype=torch.float64)
    c = (torch.rand(m, generator=g) < 0.6).to(torch.float64)
    c[0], c[1] = 1.0, 0.0  # both kinds present
    rl, cl = r.tolist(), [int(v) for v in c]
    assert float(mmce(r, c)) == pytest.approx(mmce_brute(rl, cl), rel=1e-12, abs=1e-15)
    assert float(mmce_weighted(r, c)) == pytest.approx(mmce_weighted_brute(rl, cl), rel=1e-12, abs=1e-15)
    assert float(mmce_weighted(r, c)) > 0
    assert float(mmce(r, c, squared=False)) == pytest.approx(math.sqrt(mmce_brute(rl, cl) + 1e-10))


def test_mmce_takes_bool_correctness_and_is_zero_when_calibrated() -> None:
    r = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    assert float(mmce(r, torch.tensor([True, False, True]))) == 0.0


@pytest.mark.parametrize("correct", [1.0, 0.0])
def test_weighted_mmce_is_zero_for_all_correct_or_all_wrong(correct: float) -> None:
    r = torch.tensor([0.3, 0.9, 0.55, 0.7], dtype=torch.float64, requires_grad=True)
    c = torch.full((4,), correct, dtype=torch.float64)
    out = mmce_weighted(r, c)
    assert float(out.detach()) == 0.0
    assert float(mmce_weighted(r, c, squared=False).detach()) == 0.0
    out.backward()
    assert r.grad is not None and torch.equal(r.grad, torch.zeros(4, dtype=torch.float64))
    # The plain form is not: an all-correct batch at confidence < 1 is under-confident.
    assert float(mmce(r.detach(), c)) > 0


def test_mmce_gradients_pass_gradcheck() -> None:
    g = torch.Generator().manual_seed(1)
    r = (0.05 + 0.9 * torch.rand(7, generator=g, dtype=torch.float64)).requires_grad_()
    c = torch.tensor([1, 0, 1, 1, 0, 1, 0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: mmce(x, c), (r,))
    assert torch.autograd.gradcheck(lambda x: mmce_weighted(x, c), (r,))
    assert torch.autograd.gradcheck(lambda x: mmce_weighted(x, c, squared=False), (r,))


def test_mmce_bad_shapes_are_clear_errors() -> None:
    with pytest.raises(OodlabError, match="shape"):
        mmce(torch.rand(3), torch.ones(4))


# -- KL --------------------------------------------------------------------------------------


def test_kl_terms_match_a_monte_carlo_estimate() -> None:
    g = torch.Generator().manual_seed(0)
    d, n = 3, 400_000
    mu_q, lv_q = (
        torch.randn(d, generator=g, dtype=torch.float64),
        0.5 * torch.randn(d, generator=g, dtype=torch.float64),
    )
    mu_p, lv_p = (
        torch.randn(d, generator=g, dtype=torch.float64),
        0.5 * torch.randn(d, generator=g, dtype=torch.float64),
    )
    z = mu_q + torch.exp(0.5 * lv_q) * torch.randn(n, d, generator=g, dtype=torch.float64)

    def log_density(z: torch.Tensor, mu: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
        return (-0.5 * (math.log(2 * math.pi) + lv + (z - mu) ** 2 / lv.exp())).sum(1)

    mc = (log_density(z, mu_q, lv_q) - log_density(z, mu_p, lv_p)).mean()
    mc0 = (
        log_density(z, mu_q, lv_q)
        - log_density(z, torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64))
    ).mean()
    closed = kl_diag_gaussians(mu_q, lv_q, mu_p, lv_p)
    closed0 = kl_standard_normal(mu_q, lv_q)
    assert float(closed) == pytest.approx(float(mc), abs=0.02)
    assert float(closed0) == pytest.approx(float(mc0), abs=0.02)
    zeros = torch.zeros(d, dtype=torch.float64)
    assert float(kl_diag_gaussians(mu_q, lv_q, zeros, zeros)) == pytest.approx(float(closed0), rel=1e-12)
    assert float(kl_diag_gaussians(mu_q, lv_q, mu_q, lv_q)) == 0.0


def test_class_rates_are_kl_to_each_prior() -> None:
    torch.manual_seed(0)
    head = ClassPriorGaussianHead(in_features=8, num_classes=3, z_dim=4).requires_grad_(False)
    h = torch.randn(5, 8)
    kl = class_rates(head, h)
    mu, lv = head.encode(h)
    assert kl.shape == (5, 3) and kl.dtype == torch.float64
    for i, k in itertools.product(range(5), range(3)):
        want = kl_diag_gaussians(
            mu[i].double(), lv[i].double(), head.prior_mu[k].double(), head.prior_logvar[k].double()
        )
        assert float(kl[i, k]) == pytest.approx(float(want), rel=1e-10)
    assert torch.allclose(rate(head, h), kl_standard_normal(mu.double(), lv.double()))


# -- losses by hand --------------------------------------------------------------------------


def test_bin_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    y = torch.tensor([0])
    sig = torch.sigmoid(logits[0])
    want = -math.log(sig[0]) - 0.05 * (math.log(1 - sig[1]) + math.log(1 - sig[2]))
    assert float(bin_loss(logits, y, 0.05)) == pytest.approx(want, rel=1e-6)
    assert float(create_objective("bin").batch_loss(logits, y, None)) == pytest.approx(want, rel=1e-6)


def test_vib_loss_is_ce_of_the_sample_plus_beta_kl() -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(model="lenet", objective="vib", objective_params={"beta": 0.5, "z_dim": 6})
    model = build_model(cfg, N_CLASSES, (1, SIZE, SIZE)).eval()  # no dropout: one random draw, the sample
    x = pattern_images(8, seed=0)
    xs, ys = x.tensor(), x.labels()
    torch.manual_seed(3)
    got = cfg.make_objective().loss(model, xs, ys, None)
    h = model.forward_features(model.normalize(xs), TapRecorder())
    mu, lv = model.head.encode(h)
    torch.manual_seed(3)
    z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)
    want = F.cross_entropy(model.head.decoder(z), ys) + 0.5 * kl_standard_normal(mu, lv).mean()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)


# -- every method on every network --------------------------------------------------------------

HEADS = {"binc": BincHead, "vib": GaussianHead, "viby": ClassPriorGaussianHead}


#: Classifier networks (``hscae`` is an autoencoder around a frozen classifier: no head of its own).
CLASSIFIERS = [m for m in list_models() if m != "hscae"]


@pytest.mark.parametrize("network", CLASSIFIERS)
@pytest.mark.parametrize("objective", ["bin", "binc", "vib", "viby"])
def test_every_method_trains_on_every_network(network: str, objective: str) -> None:
    torch.manual_seed(0)
    size = 28  # the smallest input every registered network takes (lenet-caffe's two 5×5 convs and pools)
    kw = {"width": 0.125} if network.startswith("resnet") else {}
    cfg = TrainConfig(model=network, model_kwargs=kw, objective=objective, optimizer="adam", lr=1e-3)
    model = build_model(cfg, N_CLASSES, (1, size, size))
    trunk = create_model(network, num_classes=N_CLASSES, in_channels=1, image_size=size, **kw)
    if objective in HEADS:
        assert isinstance(model.head, HEADS[objective])
        assert model.head.in_features == trunk.num_features  # the encoder reads the penultimate features
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 1, size, size, generator=g), torch.arange(8) % N_CLASSES
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    loss = cfg.make_objective().loss(model, x, y, None)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.head.parameters())
    opt.step()
    model.eval()
    assert model(x).shape == (8, N_CLASSES)


def test_saved_network_is_rebuilt_with_its_head() -> None:
    from oodlab.models.spec import build_from_spec, module_spec

    model = build_model(TrainConfig(objective="viby", objective_params={"z_dim": 5}), 4, (1, SIZE, SIZE))
    again = build_from_spec(module_spec(model))
    again.load_state_dict(model.state_dict())
    assert isinstance(again.head, ClassPriorGaussianHead) and again.head.z_dim == 5


def test_viby_trains_its_priors_and_vib_scores_run() -> None:
    cfg = TrainConfig(**{**TINY_RECIPE.to_dict(), "objective": "viby", "objective_params": {"z_dim": 8}})
    torch.manual_seed(0)
    start = build_model(cfg, N_CLASSES, (1, SIZE, SIZE)).head.prior_mu.detach().clone()
    model, stats = train(cfg, pattern_images(200, seed=0), progress=False)
    assert not torch.equal(model.head.prior_mu.detach(), start)
    assert stats["objective"]["name"] == "viby"


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("detector", "params", "names"),
    [
        ("vib", {"beta": -0.1}, "beta"),
        ("viby-1", {"beta": -1}, "beta"),
        ("bin", {"zeta": -0.05}, "zeta"),
        ("binc", {"zeta": -1.0}, "zeta"),
        ("binc", {"lam": -0.5}, "lam"),
        ("binc", {"z_dim": 0}, "z_dim"),
        ("vib", {"z_dim": 0}, "z_dim"),
        ("viby-2", {"z_dim": 2.5}, "z_dim"),
        ("vib", {"beta": float("nan")}, "beta"),
    ],
)
def test_bad_parameters_are_one_line_naming_the_parameter(detector: str, params: dict, names: str) -> None:
    with pytest.raises(OodlabError, match=names) as e:
        create_detector(detector, **params)
    assert "\n" not in str(e.value) and detector in str(e.value)


def test_prior_count_other_than_the_class_count_is_a_clear_error() -> None:
    cfg = TrainConfig(objective="viby", objective_params={"priors": 5})
    with pytest.raises(OodlabError, match="priors") as e:
        build_model(cfg, N_CLASSES, (1, SIZE, SIZE))
    assert "\n" not in str(e.value) and "3" in str(e.value)
    assert isinstance(
        build_model(TrainConfig(objective="viby", objective_params={"priors": 3}), 3, (1, SIZE, SIZE)).head,
        ClassPriorGaussianHead,
    )


def test_method_detectors_refuse_a_network_without_their_head() -> None:
    plain = create_model("lenet", num_classes=N_CLASSES, image_size=SIZE)
    for name in ("binc", "vib", "viby-1", "viby-2"):
        with pytest.raises(OodlabError, match="make_network"):
            create_detector(name).fit(plain, pattern_images(10, seed=0))


# -- scores by hand ------------------------------------------------------------------------------


def test_scores_by_hand_from_the_penultimate_features() -> None:
    x = pattern_images(12, seed=5).tensor()
    for objective, names in (
        ("bin", ["bin"]),
        ("binc", ["binc"]),
        ("vib", ["vib"]),
        ("viby", ["viby-1", "viby-2"]),
    ):
        torch.manual_seed(0)
        model = build_model(TrainConfig(objective=objective, objective_params={}), N_CLASSES, (1, SIZE, SIZE))
        model.eval()
        with torch.no_grad():
            h = model.forward_features(model.normalize(x), TapRecorder()).double()
            head = model.head.double()
            want: dict[str, torch.Tensor] = {}
            if objective == "bin":
                want["bin"] = torch.log(torch.sigmoid(head(h)).max(1).values)
            elif objective == "binc":
                b = head.bin_head(torch.relu(head.shared(h)))
                want["binc"] = torch.log(torch.sigmoid(b).max(1).values)
            else:
                mu, lv = head.encode(h)
                if objective == "vib":
                    want["vib"] = -0.5 * (mu**2 + lv.exp() - lv - 1).sum(1)
                else:
                    m, s = head.prior_mu, head.prior_logvar
                    kl = 0.5 * (
                        s[None]
                        - lv[:, None]
                        + (lv.exp()[:, None] + (mu[:, None] - m[None]) ** 2) / s.exp()[None]
                        - 1
                    ).sum(2)
                    p = torch.softmax(head(h), 1)
                    want["viby-1"] = -(p * kl).sum(1)
                    want["viby-2"] = -kl.min(1).values
            model.float()
        for name in names:
            got = create_detector(name).fit(model, pattern_images(10, seed=0)).score(x)
            torch.testing.assert_close(got, want[name], rtol=1e-4, atol=1e-5)


def test_a_network_without_its_own_head_refuses_a_method_head() -> None:
    if "hscae" not in list_models():
        pytest.skip("no autoencoder registered")
    with pytest.raises(OodlabError, match="no final linear layer of its own"):
        create_model("hscae", num_classes=3, image_size=28, head={"name": "vib"})


def test_unknown_or_malformed_head_is_a_clear_error() -> None:
    with pytest.raises(OodlabError, match="unknown head 'nope'; known heads: binc, vib, viby"):
        create_model("lenet", num_classes=3, image_size=SIZE, head={"name": "nope"})
    with pytest.raises(OodlabError, match="a head is given as"):
        create_model("lenet", num_classes=3, image_size=SIZE, head="vib")
    with pytest.raises(OodlabError, match="head 'vib'"):
        create_model("lenet", num_classes=3, image_size=SIZE, head={"name": "vib", "width": 3})
