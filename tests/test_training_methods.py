"""Objectives, auxiliary outlier sets, fine-tuning steps, ensembles and MC dropout."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oodlab import OodlabError
from oodlab.data import ImageSet
from oodlab.detectors import create_detector
from oodlab.detectors import mc_dropout as mc
from oodlab.models import create_model
from oodlab.training import (
    Network,
    TrainConfig,
    build_aux,
    create_objective,
    ensemble_members,
    finetune,
    fit_or_load,
    list_aux,
    make_network,
)
from oodlab.training.aux import check_aux_set

from .conftest import SIZE, TINY_RECIPE, pattern_images
from .test_training import CFG

#: The trainer tests' MLP, one epoch at a constant rate: seconds per network.
MLP = dataclasses.replace(CFG, schedule="none", epochs=1, seed=0)


# -- objectives ----------------------------------------------------------------------------------


def test_outlier_exposure_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y = torch.tensor([0, 1])
    aux = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    ce = F.cross_entropy(logits, y)
    # Uniform logits: −(1/K) Σ log(1/K) = log K. Second row: −(1/3)(log p0 + log p1 + log p2).
    z = 1 + 2 * math.exp(-3)
    second = -(1 / 3) * (math.log(1 / z) + 2 * math.log(math.exp(-3) / z))
    expected = ce + 0.5 * (math.log(3) + second) / 2
    got = create_objective("outlier-exposure").batch_loss(logits, y, aux)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_energy_margin_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 0])
    aux = torch.tensor([[1.0, 1.0]])
    obj = create_objective("energy-margin", lam=0.1, m_in=-2.0, m_out=-0.5)
    e_in = [-math.log(math.exp(2) + 1), -math.log(2)]  # −2.127 (below m_in: no penalty), −0.693
    e_out = -math.log(2 * math.e)  # −1.693, below m_out = −0.5: penalised
    reg = (max(0, e_in[0] + 2) ** 2 + max(0, e_in[1] + 2) ** 2) / 2 + max(0, -0.5 - e_out) ** 2
    expected = F.cross_entropy(logits, y).item() + 0.1 * reg
    assert obj.batch_loss(logits, y, aux).item() == pytest.approx(expected, rel=1e-6)


def test_energy_margins_are_set_from_the_network_being_tuned() -> None:
    model = create_model("mlp", num_classes=3, in_channels=1, image_size=SIZE, hidden=[8]).eval()
    x = pattern_images(200, seed=0).tensor()
    obj = create_objective("energy-margin")
    settled = obj.prepare(model, x, None)
    with torch.no_grad():
        e = -torch.logsumexp(model(x), dim=1).double()
    assert settled["m_in"] == pytest.approx(float(e.quantile(0.5)))
    assert settled["m_out"] == pytest.approx(float(e.quantile(0.99)))
    assert settled["m_in"] < settled["m_out"]


@pytest.mark.parametrize(
    ("name", "params", "pattern"),
    [
        ("outlier-exposure", {"lam": -1}, "lam must be"),
        ("energy-margin", {"lam": -0.1}, "lam must be"),
        ("energy-margin", {"m_in": -1, "m_out": -5}, "m_in must be below m_out"),
        ("energy-margin", {"m_in": -5, "m_out": -5}, "m_in must be below m_out"),
        ("focal", {}, "unknown objective"),
        ("outlier-exposure", {"gamma": 1}, "outlier-exposure"),
    ],
)
def test_bad_objective_parameters_are_clear_errors(name: str, params: dict, pattern: str) -> None:
    with pytest.raises(OodlabError, match=pattern):
        create_objective(name, **params)


# -- recipes and the checkpoint cache -----------------------------------------------------------


def test_plain_recipes_keep_their_checkpoint_keys() -> None:
    """Checkpoints cached before objectives existed are found again: the key hashes the old fields."""
    old_fields = {
        f.name: getattr(MLP, f.name)
        for f in dataclasses.fields(MLP)
        if f.name
        not in ("objective", "objective_params", "aux", "n_aux", "aux_batch_size", "init_from", "classifier")
    }
    blob = json.dumps({"cfg": old_fields, "data": "abc", "v": 1}, sort_keys=True)
    assert MLP.key("abc") == hashlib.sha256(blob.encode()).hexdigest()[:24]
    tuned = finetune(MLP, "outlier-exposure", aux="edges")
    assert tuned.key("abc") != MLP.key("abc") and tuned.key("abc", "aux1") != tuned.key("abc", "aux2")
    assert TrainConfig.from_dict(json.loads(json.dumps(tuned.to_dict()))) == tuned


def test_objective_and_aux_must_agree() -> None:
    with pytest.raises(OodlabError, match=r"auxiliary outliers: name a set \(aux\)"):
        TrainConfig(objective="outlier-exposure")
    with pytest.raises(OodlabError, match="uses no auxiliary outliers"):
        TrainConfig(aux="edges")
    with pytest.raises(OodlabError, match="unknown auxiliary set 'mnist'"):
        TrainConfig(objective="outlier-exposure", aux="mnist")
    with pytest.raises(OodlabError, match="init_from must name the same model"):
        dataclasses.replace(finetune(MLP, "outlier-exposure", aux="edges"), model="lenet")


def test_finetuning_starts_from_the_cached_base_and_is_cached(tmp_path) -> None:
    data = pattern_images(200, seed=0)
    base, base_meta = fit_or_load(MLP, data, checkpoint_dir=tmp_path, progress=False)
    cfg = finetune(MLP, "outlier-exposure", {"lam": 0.5}, aux="id-synthetic", n_aux=100, epochs=4, lr=0.05)
    tuned, meta = fit_or_load(cfg, data, checkpoint_dir=tmp_path, progress=False)
    assert not meta["cached"] and meta["init_from"]["path"] == base_meta["path"]
    assert meta["aux"]["name"] == "aux-id-synthetic" and meta["aux"]["n"] == 100
    assert not torch.equal(tuned.head.weight, base.head.weight)
    again, meta2 = fit_or_load(cfg, data, checkpoint_dir=tmp_path, progress=False)
    assert meta2["cached"] and torch.equal(again.head.weight, tuned.head.weight)
    # Another auxiliary set (same recipe): another checkpoint.
    other = build_aux("edges", data, 100, seed=0)
    _, meta3 = fit_or_load(cfg, data, aux=other, checkpoint_dir=tmp_path, progress=False)
    assert not meta3["cached"] and meta3["path"] != meta["path"]
    # Outlier exposure pulls the auxiliary outliers' softmax towards uniform: compared with the
    # same fine-tuning at λ = 0 (cross-entropy alone), their MSP is lower.
    plain_cfg = finetune(
        MLP, "outlier-exposure", {"lam": 0.0}, aux="id-synthetic", n_aux=100, epochs=4, lr=0.05
    )
    plain, _ = fit_or_load(plain_cfg, data, checkpoint_dir=tmp_path, progress=False)
    aux = build_aux("id-synthetic", data, 100, seed=0).tensor()
    with torch.no_grad():
        msp_plain = torch.softmax(plain(aux), 1).max(1).values.mean()
        msp_oe = torch.softmax(tuned(aux), 1).max(1).values.mean()
    assert msp_oe < msp_plain - 0.1


def test_ensemble_of_three_reuses_three_of_five(tmp_path) -> None:
    data = pattern_images(120, seed=0)
    _, five = make_network(
        Network(tuple(ensemble_members(MLP, 5))), data, checkpoint_dir=tmp_path, progress=False
    )
    model, three = make_network(
        Network(tuple(ensemble_members(MLP, 3))), data, checkpoint_dir=tmp_path, progress=False
    )
    assert three["cached"] and three["checkpoints"] == five["checkpoints"][:3]
    assert len(set(five["checkpoints"])) == 5
    base, _ = fit_or_load(MLP, data, checkpoint_dir=tmp_path, progress=False)
    assert five["checkpoints"][0] == _["path"]  # member 0 is the base network
    x = data.tensor(0, 9)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(x).double(), 1) for m in model.members]).mean(0)
        torch.testing.assert_close(model(x).double(), probs.log(), rtol=0, atol=1e-6)
    with pytest.raises(OodlabError, match="members must be"):
        ensemble_members(MLP, 1)


def test_deep_ensemble_scores_the_mean_softmax(tmp_path) -> None:
    data = pattern_images(120, seed=0)
    det = create_detector("deep-ensemble", members=3)
    model, _ = make_network(det.network(MLP), data, checkpoint_dir=tmp_path, progress=False)
    det.fit(model, data)
    x = data.tensor(0, 11)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x).double(), 1) for m in model.members]).mean(0)
    torch.testing.assert_close(det.score(x), mean.max(1).values.log(), rtol=0, atol=1e-6)
    single, _ = fit_or_load(MLP, data, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(OodlabError, match="scores an ensemble of 3"):
        create_detector("deep-ensemble", members=3).fit(single, data)


# -- auxiliary sets ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, _ in list_aux()])
def test_aux_sets_are_seeded_images_of_the_training_shape(name: str) -> None:
    data = pattern_images(60, seed=0)
    a = build_aux(name, data, 37, seed=1)
    assert len(a) == 37 and a.shape == data.shape and a.y is None and a.x.dtype == np.float32
    assert a.x.min() >= 0 and a.x.max() <= 1
    assert np.array_equal(a.x, build_aux(name, data, 37, seed=1).x)
    assert not np.array_equal(a.x, build_aux(name, data, 37, seed=2).x)
    # Outliers, not copies of the training images.
    flat = data.tensor().reshape(len(data), -1).numpy()
    nearest = ((a.x.reshape(37, -1)[:, None, :] - flat[None]) ** 2).sum(-1).min(1)
    assert (nearest > 1e-3).mean() > 0.9


def test_bad_aux_sets_are_clear_errors() -> None:
    data = pattern_images(30, seed=0)
    with pytest.raises(OodlabError, match="aux: .* is empty"):
        check_aux_set(ImageSet("none", np.zeros((0, 1, SIZE, SIZE), np.float32)), data.shape)
    with pytest.raises(OodlabError, match=r"aux: .* shape \(1, 8, 8\)"):
        check_aux_set(ImageSet("small", np.zeros((4, 1, 8, 8), np.float32)), data.shape)
    cfg = finetune(MLP, "outlier-exposure", aux="edges")
    with pytest.raises(OodlabError, match="aux: .* shape"):
        fit_or_load(cfg, data, aux=ImageSet("small", np.zeros((4, 1, 8, 8), np.float32)), progress=False)
    with pytest.raises(OodlabError, match="unknown auxiliary set"):
        build_aux("mnist", data, 10, seed=0)


# -- MC dropout ----------------------------------------------------------------------------------


def test_mc_dropout_equals_t_full_passes_and_is_batch_independent(
    tiny_setup: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = tiny_setup["model"], tiny_setup["id_test"].tensor(0, 40)
    det = create_detector("mc-dropout", passes=6, seed=3).fit(model, tiny_setup["id_train"])
    fast = det.score(x)
    # By hand: the six masks of the seed at both dropout layers, six full passes, mean softmax.
    layers = mc.dropout_layers(model)
    shapes = {0: (64, 4, 4), 1: (128,)}
    probs = torch.zeros(len(x), 3, dtype=torch.float64)
    for t in range(6):
        masks = {(i, 0): det._mask((i, 0), t, torch.Size(shapes[i]), layers[i].p) for i in range(2)}
        with torch.no_grad(), mc.fixed_masks(layers, masks, None):
            probs += torch.softmax(model(x).double(), 1)
    torch.testing.assert_close(fast, (probs / 6).max(1).values.log(), rtol=0, atol=1e-9)
    # Without replaying the deterministic prefix: the same scores exactly.
    monkeypatch.setattr(mc._DeterministicPrefix, "replay", lambda self: None)
    assert torch.equal(det.score(x), fast)
    # Reversed order, one image at a time: the same scores (up to float32 batch rounding).
    torch.testing.assert_close(det.score(x.flip(0)).flip(0), fast, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.cat([det.score(x[i : i + 1]) for i in range(5)]), fast[:5])
    assert not model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({"passes": 0}, r"passes \(T\) must be an integer >= 1"),
        ({"p": 1.5}, r"dropout rate p must be in \(0, 1\)"),
        ({"p": 0.0}, r"dropout rate p must be in \(0, 1\)"),
    ],
)
def test_bad_mc_dropout_parameters(params: dict, pattern: str) -> None:
    with pytest.raises(OodlabError, match=pattern):
        create_detector("mc-dropout", **params)


def test_mc_dropout_needs_dropout() -> None:
    data = pattern_images(40, seed=0)
    plain = create_model("mlp", num_classes=3, in_channels=1, image_size=SIZE, hidden=[8])
    with pytest.raises(OodlabError, match="mc-dropout.*no dropout layer"):
        create_detector("mc-dropout").fit(plain, data)
    with pytest.raises(OodlabError, match="no dropout layer"):
        create_detector("mc-dropout").check_network(dataclasses.replace(TINY_RECIPE, model="lenet5"))


@pytest.mark.parametrize(
    ("name", "params", "pattern"),
    [
        ("deep-ensemble", {"members": 1}, "members must be an integer >= 2"),
        ("outlier-exposure", {"lam": -0.5}, "lam must be"),
        ("energy-finetune", {"lam": -1.0}, "lam must be"),
        ("energy-finetune", {"m_in": -3.0, "m_out": -7.0}, "m_in must be below m_out"),
        ("outlier-exposure", {"aux": "mnist"}, "unknown auxiliary set 'mnist'"),
        ("energy-finetune", {"epochs": 0}, "epochs must be"),
    ],
)
def test_bad_method_parameters(name: str, params: dict, pattern: str) -> None:
    with pytest.raises(OodlabError, match=pattern):
        create_detector(name, **params)
