"""Hand-computed checks of ODIN, KNN, ViM and ReAct (the shared invariants are in test_common.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

from oodlab import OodlabError
from oodlab.detectors import create_detector
from oodlab.detectors.knn import KNN, kth_neighbour_distance, kth_neighbour_distances, l2_normalize
from oodlab.detectors.logits import log_softmax64
from oodlab.detectors.react import linear_percentile
from oodlab.features import Outputs, extract
from oodlab.metrics import auroc, fpr_at_tpr


def _fit(name: str, setup: dict, **params: object):
    return create_detector(name, **params).fit(
        setup["model"], setup["id_train"], id_val=setup["id_val"], ood_val=setup["ood_val"]
    )


# -- ODIN ---------------------------------------------------------------------------------------


def _manual_odin(model: torch.nn.Module, x: torch.Tensor, t: float, eps: float) -> torch.Tensor:
    """ODIN written out with .backward() on a leaf input, as the reference code does."""
    model.eval()
    x = x.clone().requires_grad_(True)
    logits = model(x)
    loss = F.cross_entropy(logits.double() / t, logits.argmax(1), reduction="sum")
    loss.backward()
    x_tilde = x.detach() - eps * torch.sign(x.grad)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        return log_softmax64(model(x_tilde), t).max(dim=1).values


def test_odin_without_noise_is_temperature_scaled_log_msp(tiny_setup: dict) -> None:
    det = _fit("odin", tiny_setup, temperature=10.0, noise=0.0)
    x = tiny_setup["id_test"].tensor()
    with torch.no_grad():
        expected = log_softmax64(tiny_setup["model"](x), 10.0).max(dim=1).values
    torch.testing.assert_close(det.score(x), expected, rtol=1e-6, atol=1e-9)
    assert det.tuning() == {}  # both fixed: nothing tuned


@pytest.mark.parametrize("t", [1.0, 1000.0])
def test_odin_perturbation_matches_manual_autograd(tiny_setup: dict, t: float) -> None:
    model = tiny_setup["model"]
    x = tiny_setup["id_test"].tensor(0, 40)
    det = _fit("odin", tiny_setup, temperature=t, noise=0.01)
    torch.testing.assert_close(det.score(x), _manual_odin(model, x, t, 0.01), rtol=1e-6, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_odin_perturbation_raises_the_id_score(tiny_setup: dict) -> None:
    model = tiny_setup["model"]
    x = tiny_setup["id_test"].tensor()
    t, eps = 1000.0, 0.01
    base = _fit("odin", tiny_setup, temperature=t, noise=0.0).score(x)
    odin = _fit("odin", tiny_setup, temperature=t, noise=eps).score(x)
    wrong_way = _manual_odin(model, x, t, -eps)  # stepping up the loss gradient instead
    assert (odin - base).mean() > 0
    assert (odin > base).float().mean() > 0.9
    assert (wrong_way < base).float().mean() > 0.9


def test_odin_tuning_takes_one_gradient_per_temperature(tiny_setup: dict, monkeypatch) -> None:
    model = tiny_setup["model"]
    temps, noises = [1.0, 10.0, 1000.0], [0.0, 0.001, 0.05]
    grads, forwards = [], []
    real_grad, real_forward = torch.autograd.grad, model.forward

    def counting_grad(*args, **kwargs):
        grads.append(1)
        return real_grad(*args, **kwargs)

    def counting_forward(x):
        forwards.append(len(x))
        return real_forward(x)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    monkeypatch.setattr(model, "forward", counting_forward)
    det = create_detector("odin", temperatures=temps, noises=noises)
    det.batch_size = 1000  # one batch per validation set
    det.fit(model, tiny_setup["id_train"], id_val=tiny_setup["id_val"], ood_val=tiny_setup["ood_val"])
    monkeypatch.undo()
    n_sets = 2  # id_val, ood_val
    assert len(grads) == len(temps) * n_sets
    # one shared forward with graph + at most one per (T, eps > 0), per set
    assert len(forwards) <= n_sets * (1 + len(temps) * (len(noises) - 1))
    chosen = det.tuning()["chosen"]
    assert (chosen["temperature"], chosen["noise"]) == (det.temperature_, det.noise_)
    assert det.temperature_ in temps and det.noise_ in noises
    assert det.tuning()["id_val"] == "patterns" and det.tuning()["ood_val"] == "dark-val"

    # the choice is the grid's lowest FPR@95 (ties: higher AUROC, then earlier), scored independently
    best = None
    for t in temps:
        for e in noises:
            fixed = _fit("odin", tiny_setup, temperature=t, noise=e)
            s_id = fixed.score(tiny_setup["id_val"].tensor())
            s_ood = fixed.score(tiny_setup["ood_val"].tensor())
            key = (fpr_at_tpr(s_id, s_ood, 0.95), -auroc(s_id, s_ood))
            if best is None or key < best[0]:
                best = (key, (t, e))
    assert best is not None
    assert chosen["val_fpr95"] == pytest.approx(best[0][0])
    assert chosen["val_auroc"] == pytest.approx(-best[0][1], abs=1e-9)


def test_odin_tunes_on_at_most_tune_max_images(tiny_setup: dict) -> None:
    det = _fit("odin", tiny_setup, temperatures=[1, 1000], noises=[0, 0.001], tune_max=50)
    assert det.tuning()["chosen"]["n_id_val"] == 50 and det.tuning()["chosen"]["n_ood_val"] == 50
    with pytest.raises(OodlabError, match="tune_max"):
        _fit("odin", tiny_setup, tune_max=0)


def test_odin_restores_training_mode(tiny_setup: dict) -> None:
    model = tiny_setup["model"]
    det = _fit("odin", tiny_setup, temperature=1000.0, noise=0.0014)
    x = tiny_setup["id_test"].tensor(0, 8)
    model.train()
    try:
        s_train_mode = det.score(x)
        assert model.training
    finally:
        model.eval()
    torch.testing.assert_close(s_train_mode, det.score(x))  # dropout was off while scoring


# -- KNN ----------------------------------------------------------------------------------------


def _sklearn_kth(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(bank.astype(np.float64))
    dist, _ = nn.kneighbors(queries.astype(np.float64))
    return dist[:, -1]


def test_kth_neighbour_distance_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(0)
    bank = l2_normalize(torch.relu(torch.randn(700, 16, generator=g)))
    queries = l2_normalize(torch.relu(torch.randn(90, 16, generator=g)))
    for k in (1, 7, 50, 700):
        got = kth_neighbour_distance(queries, bank, k, chunk_size=32)
        np.testing.assert_allclose(
            got.numpy(), _sklearn_kth(queries.numpy(), bank.numpy(), k), rtol=1e-9, atol=1e-12
        )


def test_kth_neighbour_distance_exact_when_float32_ranks_are_tied(monkeypatch) -> None:
    """Every path: window re-rank, full candidate re-rank (ties at the window edge), whole-bank redo."""
    import oodlab.detectors.knn as knn_module

    g = torch.Generator().manual_seed(2)
    base = l2_normalize(torch.relu(torch.randn(60, 8, generator=g)))
    # each point four times, so float32 values come in runs of equal values around any k
    bank = torch.cat([base] * 4)
    queries = l2_normalize(torch.relu(torch.randn(30, 8, generator=g)))
    calls = {"full": 0}
    original = knn_module._sq_dists64

    def counting(rows: torch.Tensor, bank64: torch.Tensor) -> torch.Tensor:
        calls["full"] += len(rows)
        return original(rows, bank64)

    monkeypatch.setattr(knn_module, "_sq_dists64", counting)
    for k in (1, 3, 5, 6, 40, 231, 240):
        got = kth_neighbour_distance(queries, bank, k, chunk_size=8)
        np.testing.assert_allclose(
            got.numpy(), _sklearn_kth(queries.numpy(), bank.numpy(), k), rtol=1e-9, atol=1e-12
        )
    # a float32 rank error bigger than any gap forces the whole-bank path, still exact
    monkeypatch.setattr(knn_module.torch, "finfo", lambda dtype: type("F", (), {"eps": 1.0})())
    got = kth_neighbour_distance(queries, bank, 5)
    np.testing.assert_allclose(got.numpy(), _sklearn_kth(queries.numpy(), bank.numpy(), 5), rtol=1e-9)
    assert calls["full"] >= len(queries)


def test_kth_neighbour_distances_equal_one_search_per_k() -> None:
    g = torch.Generator().manual_seed(5)
    base = l2_normalize(torch.relu(torch.randn(150, 8, generator=g)))
    bank = torch.cat([base] * 4)  # runs of equal float32 values around any k
    queries = l2_normalize(torch.relu(torch.randn(40, 8, generator=g)))
    ks = [1, 2, 5, 50, 200, 600]
    together = kth_neighbour_distances(queries, bank, ks, chunk_size=16)
    assert together.shape == (40, len(ks))
    for j, k in enumerate(ks):
        assert torch.equal(together[:, j], kth_neighbour_distance(queries, bank, k, chunk_size=16))
    with pytest.raises(OodlabError, match="k=601"):
        kth_neighbour_distances(queries, bank, [1, 601])


def test_kth_neighbour_distance_is_exact_for_near_duplicates() -> None:
    g = torch.Generator().manual_seed(1)
    bank = l2_normalize(torch.randn(500, 32, generator=g))
    queries = bank[:40] + 1e-5 * torch.randn(40, 32, generator=g)
    got = kth_neighbour_distance(queries, bank, 1)
    expected = (queries.double() - bank[:40].double()).norm(dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)  # float32 expansion would be ~1e-3 off


def test_knn_chunking_gives_the_same_scores(tiny_setup: dict) -> None:
    det = _fit("knn", tiny_setup, k=5)
    out = extract(tiny_setup["model"], tiny_setup["ood_test"], det.required_taps(tiny_setup["model"]))
    det.chunk_size = 7
    small = det.score_outputs(out)
    det.chunk_size = 100_000
    whole = det.score_outputs(out)
    assert torch.equal(small, whole)
    # the memory cap also bounds the chunk; results unchanged
    queries = l2_normalize(out.tap("penultimate"))[:, det.live_].contiguous()
    capped = kth_neighbour_distance(queries, det.bank_, 5, chunk_size=1024, max_elements=3 * len(det.bank_))
    assert torch.equal(capped, kth_neighbour_distance(queries, det.bank_, 5, chunk_size=1024))


def test_knn_scores_match_brute_force_on_the_model_features(tiny_setup: dict) -> None:
    det = _fit("knn", tiny_setup, k=10)
    model = tiny_setup["model"]
    train = extract(model, tiny_setup["id_train"], ["penultimate"]).tap("penultimate").double().numpy()
    test = extract(model, tiny_setup["ood_test"], ["penultimate"]).tap("penultimate").double().numpy()

    def norm(z: np.ndarray) -> np.ndarray:
        return z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-10)

    expected = -_sklearn_kth(norm(test), norm(train), 10)
    scores = det.score_outputs(
        Outputs(torch.zeros(len(test), 3), {"penultimate": torch.from_numpy(test).float()})
    )
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-6, atol=1e-7)
    # units dead on every training image are left out of the stored bank (and the result is exact)
    dead = (train == 0).all(axis=0)
    assert dead.any(), "the tiny model should have dead units for this check to mean something"
    assert det.bank_.dtype == torch.float32 and det.bank_.shape == (600, 128 - dead.sum())
    assert torch.equal(det.live_, torch.from_numpy(~dead))


def test_knn_k_larger_than_training_set_is_an_error(tiny_setup: dict) -> None:
    with pytest.raises(OodlabError, match="k=601"):
        _fit("knn", tiny_setup, k=601)
    with pytest.raises(OodlabError, match="k=50"):
        _fit("knn", tiny_setup, k=50, subsample=20)
    with pytest.raises(OodlabError, match="between 1"):
        kth_neighbour_distance(torch.zeros(2, 3), torch.zeros(4, 3), 5)


def test_knn_subsample_is_seeded(tiny_setup: dict) -> None:
    a = _fit("knn", tiny_setup, k=5, subsample=0.25, seed=3)
    b = _fit("knn", tiny_setup, k=5, subsample=150, seed=3)
    c = _fit("knn", tiny_setup, k=5, subsample=150, seed=4)
    assert len(a.bank_) == 150 and a.bank_.shape[1] == int(a.live_.sum())
    assert torch.equal(a.bank_, b.bank_) and not torch.equal(a.bank_, c.bank_)
    with pytest.raises(OodlabError, match="subsample"):
        _fit("knn", tiny_setup, subsample=1.5)
    assert isinstance(create_detector("knn"), KNN)


def test_knn_tunes_k_on_validation(tiny_setup: dict, tmp_path) -> None:
    from oodlab.detectors import load_detector

    s = tiny_setup
    grid = (1, 3, 10, 40)
    det = _fit("knn", s, k=None, grid=grid + (10_000,))  # a k above the 600 features is skipped
    assert det.tunes and create_detector("knn").tunes and not create_detector("knn", k=50).tunes
    t = det.tuning()
    assert t["chosen"]["k"] == det.k_ in grid and t["id_val"] == s["id_val"].name
    assert [c["k"] for c in t["candidates"]] == list(grid)
    # the choice is the grid value with the lowest validation FPR@95, as fixed-k detectors score it
    fprs = {}
    for k in grid:
        fixed = _fit("knn", s, k=k)
        fprs[k] = fpr_at_tpr(fixed.score_set(s["id_val"]), fixed.score_set(s["ood_val"]), 0.95)
    assert fprs[det.k_] == min(fprs.values())
    assert [c["fpr95"] for c in t["candidates"]] == [fprs[k] for k in grid]
    chosen = _fit("knn", s, k=det.k_)
    x = s["ood_test"].tensor()
    assert torch.equal(det.score(x), chosen.score(x))
    det.save(tmp_path / "knn")
    assert torch.equal(load_detector(tmp_path / "knn", s["model"]).score(x), det.score(x))
    with pytest.raises(OodlabError, match="tunes k on validation data"):
        create_detector("knn").fit(s["model"], s["id_train"])
    with pytest.raises(OodlabError, match="positive integer"):
        _fit("knn", s, k=None, grid=(0, 5))
    with pytest.raises(OodlabError, match="grid is empty"):
        _fit("knn", s, k=None, grid=())


# -- ViM ----------------------------------------------------------------------------------------


def _vim_numpy(train_feats, train_logits, feats, logits, w, b, dim):
    """The reference code's computation (haoqiwang/vim), in numpy float64."""
    u = -np.linalg.pinv(w) @ b
    cov = (train_feats - u).T @ (train_feats - u) / len(train_feats)
    vals, vecs = np.linalg.eigh(cov)
    ns = vecs[:, np.argsort(-vals)[dim:]]
    alpha = train_logits.max(axis=1).mean() / np.linalg.norm((train_feats - u) @ ns, axis=1).mean()
    vlogit = np.linalg.norm((feats - u) @ ns, axis=1) * alpha
    m = logits.max(axis=1, keepdims=True)
    energy = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
    return energy - vlogit


def test_vim_matches_a_direct_numpy_computation(tiny_setup: dict) -> None:
    model = tiny_setup["model"]
    det = _fit("vim", tiny_setup)
    assert det.dim_ == 64  # half of LeNet's 128 features
    tr = extract(model, tiny_setup["id_train"], ["penultimate"])
    te = extract(model, tiny_setup["ood_test"], ["penultimate"])
    w = model.head.weight.detach().double().numpy()
    b = model.head.bias.detach().double().numpy()
    expected = _vim_numpy(
        tr.tap("penultimate").double().numpy(),
        tr.logits.double().numpy(),
        te.tap("penultimate").double().numpy(),
        te.logits.double().numpy(),
        w,
        b,
        64,
    )
    np.testing.assert_allclose(det.score_outputs(te).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_vim_residual_is_zero_inside_the_principal_subspace(tiny_setup: dict) -> None:
    det = _fit("vim", tiny_setup, dim=10)
    ns = det.null_space_
    assert ns.shape == (128, 118)
    g = torch.Generator().manual_seed(0)
    r = torch.randn(5, 128, generator=g, dtype=torch.float64)
    inside = det.origin_ + r - (r @ ns) @ ns.T  # origin + a vector of the principal subspace
    assert det.residual_norm(inside).abs().max() < 1e-10
    off = inside + 3.0 * ns[:, 0]
    torch.testing.assert_close(det.residual_norm(off), torch.full((5,), 3.0, dtype=torch.float64))


def test_vim_dim_must_fit_the_features(tiny_setup: dict) -> None:
    with pytest.raises(OodlabError, match="dim"):
        _fit("vim", tiny_setup, dim=128)


# -- ReAct --------------------------------------------------------------------------------------


def test_react_threshold_is_the_percentile_of_training_activations(tiny_setup: dict) -> None:
    acts = extract(tiny_setup["model"], tiny_setup["id_train"], ["penultimate"]).tap("penultimate")
    for p in (90, 75.5):
        det = _fit("react", tiny_setup, percentile=p)
        assert det.threshold_ == pytest.approx(np.percentile(acts.double().numpy(), p), rel=1e-12)


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_linear_percentile_is_numpys_bit_for_bit(n: int) -> None:
    rng = np.random.default_rng(n)
    # A ReLU-like sample: many exact zeros (ties) and a long tail.
    values = np.maximum(rng.standard_normal(n), 0).astype(np.float32)
    for q in (0, 12.345, 50, 70, 90, 99.9, 100):
        assert linear_percentile(values, q) == np.percentile(values.astype(np.float64), q)


def test_react_at_percentile_100_is_the_energy_score(tiny_setup: dict) -> None:
    x = tiny_setup["id_train"].tensor(0, 200)  # within the training range: nothing is clipped
    react = _fit("react", tiny_setup, percentile=100).score(x)
    energy = _fit("energy", tiny_setup).score(x)
    torch.testing.assert_close(react, energy, rtol=1e-5, atol=1e-5)


def test_react_clips_then_applies_the_head(tiny_setup: dict) -> None:
    model = tiny_setup["model"]
    det = _fit("react", tiny_setup)
    out = extract(model, tiny_setup["id_test"], ["penultimate"])
    z = out.tap("penultimate").double().numpy()
    w = model.head.weight.detach().double().numpy()
    b = model.head.bias.detach().double().numpy()
    logits = np.minimum(z, det.threshold_) @ w.T + b
    m = logits.max(axis=1)
    expected = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
    np.testing.assert_allclose(det.score_outputs(out).numpy(), expected, rtol=1e-10)
    assert (z > det.threshold_).any()  # the 90th percentile does clip something


def test_react_refuses_a_threshold_that_clips_everything(tiny_setup: dict) -> None:
    with pytest.raises(OodlabError, match="percentile"):
        _fit("react", tiny_setup, percentile=0)
