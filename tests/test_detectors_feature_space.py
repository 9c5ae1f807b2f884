"""Hand-checked behaviour of the feature-space detectors: Mahalanobis, FSSD and their ensembles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

from oodlab import OodlabError
from oodlab.data import ImageSet
from oodlab.data.synthetic import OOD_VALIDATION_TRANSFORMS
from oodlab.detectors import create_detector
from oodlab.detectors._ensemble import (
    combine,
    fit_combiner,
    fit_nonnegative,
    fit_on_validation_halves,
    fit_validated,
)
from oodlab.detectors.base import INPUT_GRADIENT, SHARED_PASS, TAPS
from oodlab.detectors.fssd import fss_distance, noise_images
from oodlab.detectors.mahalanobis import class_gaussians, mahalanobis_score, precision_of, sq_distances
from oodlab.features import extract
from oodlab.metrics import auroc
from oodlab.models.base import TappedModel, TapRecorder


class PixelModel(TappedModel):
    """A fake classifier whose penultimate vector is its input pixels (mean 0, std 1)."""

    def __init__(self, d: int = 2, k: int = 2, extra: bool = False) -> None:
        super().__init__(k, 1, None, mean=0.0, std=1.0)
        self.tap_names = ("penultimate",)
        self.extra = extra
        torch.manual_seed(0)
        self.head = nn.Linear(d + 2 * extra, k)

    def forward_features(self, z: Tensor, taps: TapRecorder) -> Tensor:
        f = z.flatten(1)
        if self.extra:  # a duplicated and a constant column: a singular covariance
            f = torch.cat([f, f[:, :1], torch.ones_like(f[:, :1])], dim=1)
        return f


def gaussian_set(n: int = 200, seed: int = 0) -> ImageSet:
    """Two 2-D Gaussian classes with a correlated, tied covariance, as (N, 1, 1, 2) 'images'."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    cov = np.array([[1.0, 0.6], [0.6, 0.5]])
    x = rng.multivariate_normal([0.0, 0.0], cov, n) + np.where(y[:, None] == 1, [3.0, 1.0], [-1.0, 0.5])
    return ImageSet("gauss", x.reshape(n, 1, 1, 2).astype(np.float32), y)


def numpy_mahalanobis(train: ImageSet, x: np.ndarray) -> np.ndarray:
    f = train.x.reshape(len(train), -1).astype(np.float64)
    means = np.stack([f[train.y == c].mean(0) for c in (0, 1)])
    centred = f - means[train.y]
    cov = np.cov(centred.T, bias=True)
    p = np.linalg.pinv(cov)
    x = x.reshape(len(x), -1).astype(np.float64)
    d = np.stack([np.einsum("ni,ij,nj->n", x - m, p, x - m) for m in means], axis=1)
    return -0.5 * d.min(1)


# -- Mahalanobis -----------------------------------------------------------------------------


def test_mahalanobis_matches_numpy_on_a_2d_gaussian() -> None:
    train, test = gaussian_set(200, 0), gaussian_set(30, 1)
    det = create_detector("mahalanobis", noise=0.0).fit(PixelModel(), train)
    expected = numpy_mahalanobis(train, test.x)
    np.testing.assert_allclose(det.score(test.tensor()).numpy(), expected, rtol=1e-5)
    assert det.capabilities == SHARED_PASS and det.required_taps(det.model_) == ("penultimate",)
    # the helpers on tensors give the same
    means, cov, classes = class_gaussians(torch.tensor(train.x.reshape(200, 2)), train.labels())
    s = mahalanobis_score(torch.tensor(test.x.reshape(30, 2)), means, precision_of(cov))
    np.testing.assert_allclose(s.numpy(), expected, rtol=1e-6)
    assert classes == [0, 1]


def test_expanded_squared_distances_match_the_direct_form() -> None:
    # 128-d ReLU-like features with 20 dead units (a singular covariance), offset far from 0 so
    # that FᵀPF is large against the distances: the expansion's cancellation must stay tiny.
    g = torch.Generator().manual_seed(0)
    feats = (torch.rand(500, 128, generator=g) * (torch.arange(128) >= 20)).float() + 3.0
    labels = torch.arange(500) % 10
    means, cov, _ = class_gaussians(feats, labels)
    precision = precision_of(cov)
    got = sq_distances(feats, means, precision)
    x = feats.to(torch.float64)
    direct = torch.stack([(((x - m) @ precision) * (x - m)).sum(1) for m in means], dim=1)
    torch.testing.assert_close(got, direct, rtol=1e-10, atol=1e-9)
    # a feature equal to a class mean is at distance 0 from it, never below
    at_mean = sq_distances(means[3:4].float(), means, precision)
    assert at_mean[0, 3] >= 0 and at_mean[0, 3] < 1e-6


def test_tied_covariance_is_the_class_centred_covariance() -> None:
    train = gaussian_set(300, 2)
    f = train.x.reshape(300, 2).astype(np.float64)
    means, cov, _ = class_gaussians(torch.from_numpy(f), train.labels())
    np_means = np.stack([f[train.y == c].mean(0) for c in (0, 1)])
    np.testing.assert_allclose(means.numpy(), np_means, rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov((f - np_means[train.y]).T, bias=True), rtol=1e-10)


def test_singular_covariance_still_gives_finite_scores() -> None:
    train, test = gaussian_set(100, 3), gaussian_set(20, 4)
    det = create_detector("mahalanobis", noise=0.0).fit(PixelModel(extra=True), train)
    s = det.score(test.tensor())
    assert torch.isfinite(s).all()
    # the duplicated and constant columns add nothing: same scores as on the two pixels alone
    np.testing.assert_allclose(s.numpy(), numpy_mahalanobis(train, test.x), rtol=1e-4)


def test_perturbation_raises_id_scores(tiny_setup: dict) -> None:
    s = tiny_setup
    x = s["id_test"].tensor(0, 40)
    plain = create_detector("mahalanobis", noise=0.0).fit(s["model"], s["id_train"])
    moved = create_detector("mahalanobis", noise=0.002).fit(s["model"], s["id_train"])
    assert moved.capabilities == INPUT_GRADIENT
    assert moved.score(x).mean() > plain.score(x).mean()


def test_tuning_reports_the_only_candidate(tiny_setup: dict) -> None:
    s = tiny_setup
    det = create_detector("mahalanobis", grid=(0.0,))
    assert det.capabilities == INPUT_GRADIENT and det.tunes  # ε unknown before fit
    det.fit(s["model"], s["id_train"], id_val=s["id_val"], ood_val=s["ood_val"])
    assert det.tuning()["chosen"]["noise"] == 0.0
    assert det.needs == TAPS and det.capabilities == SHARED_PASS  # ε = 0: the shared forward pass
    assert not create_detector("mahalanobis", noise=0.001).tunes


def test_mahalanobis_errors(tiny_setup: dict) -> None:
    s = tiny_setup
    with pytest.raises(OodlabError, match=r"'nope'.*conv1, conv2, penultimate"):
        create_detector("mahalanobis", tap="nope", noise=0.0).fit(s["model"], s["id_train"])
    with pytest.raises(OodlabError, match="mahalanobis.*labelled"):
        create_detector("mahalanobis", noise=0.0).fit(s["model"], s["ood_val"])
    one = s["id_train"].subset(
        np.r_[np.flatnonzero(s["id_train"].y == 0)[:1], np.flatnonzero(s["id_train"].y)]
    )
    with pytest.raises(OodlabError, match="at least 2 training images per class"):
        create_detector("mahalanobis", noise=0.0).fit(s["model"], one)
    for name in ("mahalanobis", "mahalanobis-ensemble"):
        with pytest.raises(OodlabError, match=f"{name}.*id_val and ood_val"):
            create_detector(name).fit(s["model"], s["id_train"])


def test_conv_taps_are_pooled(tiny_setup: dict) -> None:
    s = tiny_setup
    det = create_detector("mahalanobis", tap="conv2", noise=0.0).fit(s["model"], s["id_train"])
    assert det.required_taps(s["model"]) == ("conv2@mean",)
    assert det.means_.shape == (3, 64)


def test_mahalanobis_ensemble_weights_and_auroc(tiny_setup: dict) -> None:
    s = tiny_setup
    kw = {"id_val": s["id_val"], "ood_val": s["ood_val"]}
    ens = create_detector("mahalanobis-ensemble", noise=0.0).fit(s["model"], s["id_train"], **kw)
    assert ens.taps_ == ["conv1", "conv2", "penultimate"]
    assert (
        ens.coef_.shape == (3,) and torch.isfinite(ens.coef_).all() and torch.isfinite(ens.intercept_).all()
    )
    id_x, ood_x = s["id_test"].tensor(), s["ood_test"].tensor()
    singles = [
        auroc(d.score(id_x), d.score(ood_x))
        for d in (
            create_detector("mahalanobis", tap=t, noise=0.0).fit(s["model"], s["id_train"]) for t in ens.taps_
        )
    ]
    assert auroc(ens.score(id_x), ens.score(ood_x)) >= min(singles)


# -- the validation-halves regression ---------------------------------------------------------


def test_weights_on_first_half_candidate_on_second_half() -> None:
    rng = np.random.default_rng(0)
    n = 80
    good_id, good_ood = (
        torch.from_numpy(rng.normal(2, 1, (n, 2))),
        torch.from_numpy(rng.normal(-2, 1, (n, 2))),
    )
    # candidate "overfit": separable on the first halves only, pure noise on the second halves
    bad_id, bad_ood = good_id.clone(), good_ood.clone()
    bad_id[n // 2 :], bad_ood[n // 2 :] = torch.from_numpy(rng.normal(0, 1, (2, n // 2, 2)))
    table = {"overfit": (bad_id, bad_ood), "good": (good_id, good_ood)}
    ids = ImageSet("i", np.zeros((n, 1, 2, 2), np.float32))
    oods = ImageSet("o", np.zeros((n, 1, 2, 2), np.float32))
    best, comb, rows = fit_on_validation_halves("x", ids, oods, ["overfit", "good"], table.__getitem__)
    assert best == "good" and len(rows) == 2 and rows[1]["auroc"] > rows[0]["auroc"]
    # the weights are a logistic regression on the standardised first halves (ID = 1)
    x = torch.cat([good_id[: n // 2], good_ood[: n // 2]])
    z = ((x - x.mean(0)) / x.std(0, correction=0)).numpy()
    lr = LogisticRegression(max_iter=1000).fit(z, np.r_[np.ones(n // 2), np.zeros(n // 2)])
    np.testing.assert_allclose(comb.coef.numpy(), lr.coef_[0], rtol=1e-6)
    scores = combine(x, comb.mean, comb.std, comb.coef, comb.intercept)
    np.testing.assert_allclose(scores.numpy(), lr.decision_function(z), rtol=1e-6, atol=1e-9)


# -- FSSD ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tap", ["penultimate", "conv2", "logits"])
def test_fssd_centre_is_the_mean_over_noise_and_seeded(tap: str, tiny_setup: dict) -> None:
    s = tiny_setup
    model = s["model"].eval()
    det = create_detector("fssd", tap=tap, n_noise=30, seed=5).fit(model, s["id_train"])
    noise = noise_images(model, s["id_train"].shape, 30, 5)
    out = extract(model, noise, [tap])
    expected = out.tap(tap).flatten(1).to(torch.float64).mean(0)
    torch.testing.assert_close(det.centres_, expected, rtol=1e-5, atol=1e-6)
    # noise is U[-0.5, 0.5) in the normalised space the network sees
    z = model.normalize(noise)
    assert z.min() >= -0.5 and z.max() < 0.5 and abs(float(z.mean())) < 0.05
    again = create_detector("fssd", tap=tap, n_noise=30, seed=5).fit(model, s["id_train"])
    other = create_detector("fssd", tap=tap, n_noise=30, seed=6).fit(model, s["id_train"])
    assert torch.equal(again.centres_, det.centres_) and not torch.equal(other.centres_, det.centres_)


@pytest.mark.parametrize("tap", ["penultimate", "conv1", "logits"])
def test_fssd_score_is_the_euclidean_distance(tap: str, tiny_setup: dict) -> None:
    s = tiny_setup
    det = create_detector("fssd", tap=tap).fit(s["model"], s["id_train"])
    x = s["id_test"].tensor(0, 5)
    f = extract(s["model"], x, [tap]).tap(tap).flatten(1).numpy().astype(np.float64)
    expected = np.linalg.norm(f - det.centres_.numpy(), axis=1)
    np.testing.assert_allclose(det.score(x).numpy(), expected, rtol=1e-5)
    # the shared pass is asked for the distance only, never the full map
    (spec,) = det.required_taps(s["model"])
    assert det.capabilities == SHARED_PASS and spec.tap == tap and spec.key != tap
    out = extract(s["model"], x, [spec])
    assert set(out.taps) == {spec.key} and out.tap(spec).shape == (5,)


def test_fss_distance_reads_any_memory_layout() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(5, 3, 4, 6, generator=g)
    centre = torch.randn(3 * 4 * 6, generator=g)
    expected = ((maps.double().flatten(1) - centre.double()) ** 2).sum(dim=1).sqrt()
    plain = fss_distance(maps, centre)
    nhwc = fss_distance(maps.contiguous(memory_format=torch.channels_last), centre)
    torch.testing.assert_close(plain, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(nhwc, expected, rtol=1e-6, atol=1e-6)


def test_fssd_perturbation_and_tuning(tiny_setup: dict) -> None:
    s = tiny_setup
    kw = {"id_val": s["id_val"], "ood_val": s["ood_val"]}
    det = create_detector("fssd", perturbation=None, grid=(0.01, 0.0)).fit(s["model"], s["id_train"], **kw)
    assert det.tunes and det.tuning()["chosen"]["perturbation"] in (0.01, 0.0)
    moved = create_detector("fssd", perturbation=0.05).fit(s["model"], s["id_train"])
    plain = create_detector("fssd").fit(s["model"], s["id_train"])
    assert moved.capabilities == INPUT_GRADIENT and not moved.tunes
    x = s["id_test"].tensor(0, 20)
    # the reference's step moves the features towards F*: the distance shrinks
    assert (moved.score(x) < plain.score(x)).float().mean() > 0.9


def test_fssd_errors(tiny_setup: dict) -> None:
    s = tiny_setup
    with pytest.raises(OodlabError, match=r"'conv9'.*conv1, conv2, penultimate, logits"):
        create_detector("fssd", tap="conv9").fit(s["model"], s["id_train"])
    for name, params in (("fssd", {"perturbation": None}), ("fssd-ensemble", {})):
        with pytest.raises(OodlabError, match=f"{name}.*id_val and ood_val"):
            create_detector(name, **params).fit(s["model"], s["id_train"])
    det = create_detector("fssd", tap="conv2").fit(s["model"], s["id_train"])
    with pytest.raises(OodlabError, match="was not computed"):
        det.score_outputs(extract(s["model"], s["id_test"].tensor(0, 4)))
    moved = create_detector("fssd", perturbation=0.01).fit(s["model"], s["id_train"])
    with pytest.raises(OodlabError, match="runs the model itself"):
        moved.score_outputs(extract(s["model"], s["id_test"].tensor(0, 4)))


def test_fssd_unfitted_and_fitted_share_one_pass(tiny_setup: dict) -> None:
    """The runner asks unfitted detectors for their taps; fitting must reuse that pass."""
    from oodlab.features import OutputsCache, using_cache

    s = tiny_setup
    kw = {"id_val": s["id_val"], "ood_val": s["ood_val"]}
    with using_cache(OutputsCache()) as cache:
        dets = [create_detector("fssd", tap="conv2"), create_detector("fssd-ensemble")]
        specs = [t for d in dets for t in d.required_taps(s["model"])]
        for images in (s["id_train"], s["id_val"], s["ood_val"], s["id_test"]):
            cache.get(s["model"], images, specs)
        passes = cache.forward_passes
        for d in dets:
            d.fit(s["model"], s["id_train"], **kw)
            d.score_set(s["id_test"])
        assert cache.forward_passes == passes  # fitting and scoring ran no further pass
    # the same scores as from raw images
    for d in dets:
        torch.testing.assert_close(d.score_set(s["id_test"]), d.score(s["id_test"].tensor()))


def test_fssd_ensemble_weights_and_auroc(tiny_setup: dict) -> None:
    s = tiny_setup
    kw = {"id_val": s["id_val"], "ood_val": s["ood_val"]}
    ens = create_detector("fssd-ensemble").fit(s["model"], s["id_train"], **kw)
    assert ens.taps_ == ["conv1", "conv2", "penultimate", "logits"]
    assert torch.isfinite(ens.coef_).all() and set(ens.tuning()["chosen"]["alpha"]) == set(ens.taps_)
    id_x, ood_x = s["id_test"].tensor(), s["ood_test"].tensor()
    singles = [
        auroc(d.score(id_x), d.score(ood_x))
        for d in (create_detector("fssd", tap=t).fit(s["model"], s["id_train"]) for t in ens.taps_)
    ]
    assert auroc(ens.score(id_x), ens.score(ood_x)) >= min(singles)


# -- validated combination (the ensembles' default) --------------------------------------------


def _val_sets(n_id: int, kinds: np.ndarray) -> tuple[ImageSet, ImageSet]:
    ids = ImageSet("i", np.zeros((n_id, 1, 2, 2), np.float32))
    oods = ImageSet("o", np.zeros((len(kinds), 1, 2, 2), np.float32), kinds)
    return ids, oods


def test_validated_combination_judges_on_near_ood_kinds() -> None:
    """Member "a" separates the low-level kind (shuffled pixels) perfectly and misses the near-OOD
    kind (chimeras); "b" separates chimeras fairly well. Judged on all images "a" looks better
    (the low-level kind is most of the set); judged on the near-OOD kinds, "b" or a combination
    keeping its weight is chosen."""
    rng = np.random.default_rng(0)
    n = 400
    permute, chimera = (
        list(OOD_VALIDATION_TRANSFORMS).index("pixel_permute"),
        list(OOD_VALIDATION_TRANSFORMS).index("chimera"),
    )
    kinds = np.r_[np.full(300, permute), np.full(100, chimera)]
    rng.shuffle(kinds)
    s_id = torch.from_numpy(np.c_[rng.normal(0, 1, n), rng.normal(2, 1, n)])
    a_ood = np.where(kinds == permute, rng.normal(-8, 1, len(kinds)), rng.normal(0, 1, len(kinds)))
    b_ood = rng.normal(0, 1, len(kinds))
    s_ood = torch.from_numpy(np.c_[a_ood, b_ood])
    ids, oods = _val_sets(n, kinds)
    best, how, comb, rows = fit_validated("x", ["a", "b"], ids, oods, [0.0], lambda _: (s_id, s_ood))
    assert best == 0.0 and how != "member:a"
    by_name = {r["combination"]: r for r in rows}
    assert set(by_name) == {"member:a", "member:b", "mean", "logistic", "nonnegative"}
    assert by_name[how]["worst_auroc"] == max(r["worst_auroc"] for r in rows)
    assert by_name["member:a"]["worst_auroc"] < 0.7 < by_name["member:b"]["worst_auroc"]
    # without kind labels (e.g. real OOD validation images) all images count
    _, how_plain, _, _ = fit_validated(
        "x", ["a", "b"], ids, ImageSet("o", oods.x), [0.0], lambda _: (s_id, s_ood)
    )
    assert how_plain != "member:b"


def test_validated_combination_never_below_its_best_member_on_held_out_halves() -> None:
    rng = np.random.default_rng(1)
    n = 300
    kinds = np.arange(n) % 3
    s_id = torch.from_numpy(rng.normal(0, 1, (n, 3)))
    s_ood = torch.from_numpy(rng.normal(0, 1, (n, 3)) - np.array([0.2, 1.5, 0.5]))
    ids, oods = _val_sets(n, kinds)
    _, _, _, rows = fit_validated("x", ["p", "q", "r"], ids, oods, [0.0], lambda _: (s_id, s_ood))
    members = max(r["worst_auroc"] for r in rows if r["combination"].startswith("member:"))
    assert max(r["worst_auroc"] for r in rows) >= members


def test_nonnegative_weights() -> None:
    rng = np.random.default_rng(2)
    s_id = torch.from_numpy(np.c_[rng.normal(1, 1, 200), rng.normal(-1, 1, 200)])
    s_ood = torch.from_numpy(np.c_[rng.normal(-1, 1, 200), rng.normal(1, 1, 200)])
    nn_comb = fit_nonnegative(s_id, s_ood)
    assert (nn_comb.coef >= 0).all() and nn_comb.coef[0] > 0 and nn_comb.coef[1] == 0
    # where the free regression is already non-negative, both agree
    s_ood2 = torch.from_numpy(np.c_[rng.normal(-1, 1, 200), rng.normal(-2, 1, 200)])
    free, bounded = fit_combiner(s_id, s_ood2), fit_nonnegative(s_id, s_ood2)
    assert (free.coef > 0).all()
    torch.testing.assert_close(bounded.coef, free.coef, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["mahalanobis-ensemble", "fssd-ensemble"])
def test_ensemble_combinations(name: str, tiny_setup: dict) -> None:
    s = tiny_setup
    kw = {"id_val": s["id_val"], "ood_val": s["ood_val"]}
    params = {"noise": 0.0} if name == "mahalanobis-ensemble" else {}
    ref = create_detector(name, combination="logistic", **params).fit(s["model"], s["id_train"], **kw)
    assert ref.tuning()["chosen"]["combination"] == "logistic"
    det = create_detector(name, **params).fit(s["model"], s["id_train"], **kw)
    chosen = det.tuning()["chosen"]["combination"]
    assert chosen in {"mean", "logistic", "nonnegative"} | {f"member:{t}" for t in det.taps_}
    assert {r["combination"] for r in det.tuning()["candidates"]} >= {"mean", "logistic"}
    with pytest.raises(OodlabError, match="unknown combination 'vote'.*validated, logistic"):
        create_detector(name, combination="vote", **params).fit(s["model"], s["id_train"], **kw)
