"""The trainer: determinism, safe checkpoints, the checkpoint cache, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from oodlab import OodlabError
from oodlab.training import TrainConfig, fit_or_load, train

from .conftest import pattern_images

CFG = TrainConfig(
    model="mlp",
    model_kwargs={"hidden": [32, 16]},
    optimizer="adam",
    lr=1e-2,
    schedule="cosine",
    epochs=2,
    batch_size=32,
    seed=3,
)


def test_training_learns_and_is_deterministic() -> None:
    data = pattern_images(300, seed=0)
    a, stats = train(CFG, data, progress=False)
    b, _ = train(CFG, data, progress=False)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    test = pattern_images(200, seed=9)
    with torch.no_grad():
        acc = (a(test.tensor()).argmax(1) == test.labels()).float().mean()
    assert acc > 0.9
    assert stats["epoch_losses"][-1] < stats["epoch_losses"][0]
    assert not a.training and all(p.grad is None for p in a.parameters())


def test_different_seeds_give_different_weights() -> None:
    data = pattern_images(100, seed=0)
    a, _ = train(CFG, data, progress=False)
    b, _ = train(TrainConfig(**{**CFG.to_dict(), "seed": 4}), data, progress=False)
    assert not torch.equal(a.head.weight, b.head.weight)


def test_fit_or_load_reuses_a_matching_checkpoint(tmp_path) -> None:
    data = pattern_images(100, seed=0)
    m1, meta1 = fit_or_load(CFG, data, checkpoint_dir=tmp_path, progress=False)
    m2, meta2 = fit_or_load(CFG, data, checkpoint_dir=tmp_path, progress=False)
    assert not meta1["cached"] and meta2["cached"]
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    saved = json.loads(
        (tmp_path / (meta1["path"].split("/")[-1].replace(".safetensors", ".json"))).read_text()
    )
    assert saved["config"] == CFG.to_dict() and saved["data"]["fingerprint"] == data.fingerprint
    # Other data or another recipe: a new checkpoint.
    _, meta3 = fit_or_load(CFG, pattern_images(100, seed=1), checkpoint_dir=tmp_path, progress=False)
    assert not meta3["cached"] and meta3["path"] != meta1["path"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path) -> None:
    data = pattern_images(50, seed=0)
    _, meta = fit_or_load(CFG, data, checkpoint_dir=tmp_path, progress=False)
    path = tmp_path / meta["path"].split("/")[-1]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(OodlabError, match="corrupt or unreadable checkpoint"):
        fit_or_load(CFG, data, checkpoint_dir=tmp_path, progress=False)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(OodlabError, match="corrupt checkpoint metadata"):
        fit_or_load(CFG, data, checkpoint_dir=tmp_path, progress=False)


def test_bad_recipes_are_clear_errors() -> None:
    with pytest.raises(OodlabError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(OodlabError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(OodlabError, match="epochs"):
        TrainConfig(epochs=0)
    unlabelled = pattern_images(10, seed=0)
    unlabelled = type(unlabelled)("x", unlabelled.x)
    with pytest.raises(OodlabError, match="labelled"):
        train(CFG, unlabelled, progress=False)


def test_config_round_trips_through_json() -> None:
    assert TrainConfig.from_dict(json.loads(json.dumps(CFG.to_dict()))) == CFG
