"""Tests of the model registry and every registered model."""

from __future__ import annotations

import pytest
import torch

from oodlab.errors import OodlabError
from oodlab.models import PENULTIMATE, TappedModel, create_model, list_models

NUM_CLASSES = 7
BATCH = 3

#: Extra keyword arguments, keyed by model-name prefix, that keep a model small in tests.
SMALL_KWARGS: dict[str, dict[str, object]] = {
    "resnet": {"width": 0.125},
    "mlp": {"hidden": (32, 16, 8)},
}


def small_kwargs(name: str) -> dict[str, object]:
    """The test-size keyword arguments for ``name`` (first matching prefix)."""
    for prefix, kw in SMALL_KWARGS.items():
        if name.startswith(prefix):
            return dict(kw)
    return {}


def build(name: str, **extra: object) -> TappedModel:
    """A small, 1-channel, 7-class instance of model ``name``."""
    kw: dict[str, object] = {"num_classes": NUM_CLASSES, "in_channels": 1, **small_kwargs(name), **extra}
    return create_model(name, **kw)


def images(channels: int = 1, size: int = 28, n: int = BATCH) -> torch.Tensor:
    """A reproducible batch of images in [0, 1]."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, channels, size, size, generator=g)


ALL = pytest.mark.parametrize("name", list_models())


# -- every registered model ------------------------------------------------------------------


@ALL
def test_logits_shape(name: str) -> None:
    model = build(name).eval()
    out = model(images())
    assert out.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(out).all()


@ALL
def test_forward_taps_returns_every_tap(name: str) -> None:
    model = build(name).eval()
    x = images()
    assert model.tap_names[-1] == PENULTIMATE
    assert len(set(model.tap_names)) == len(model.tap_names)
    with torch.no_grad():
        logits, taps = model.forward_taps(x, model.tap_names)
        plain = model(x)
    assert set(taps) == set(model.tap_names)
    assert taps[PENULTIMATE].shape == (BATCH, model.num_features)
    for tap in taps.values():
        assert tap.shape[0] == BATCH
    assert torch.allclose(logits, plain)


@ALL
def test_forward_taps_subset_and_empty(name: str) -> None:
    model = build(name).eval()
    x = images()
    _, taps = model.forward_taps(x, [PENULTIMATE])
    assert list(taps) == [PENULTIMATE]
    _, none = model.forward_taps(x, [])
    assert none == {}


@ALL
def test_unknown_tap_is_an_oodlab_error(name: str) -> None:
    model = build(name)
    with pytest.raises(OodlabError, match="no_such_tap"):
        model.forward_taps(images(), ["no_such_tap"])


@ALL
def test_check_input(name: str) -> None:
    model = build(name)
    model.check_input(images())
    with pytest.raises(OodlabError):
        model.check_input(images(channels=3))
    with pytest.raises(OodlabError):
        model.check_input(torch.rand(1, 28, 28))
    with pytest.raises(OodlabError):
        model.check_input([[0.0]])  # type: ignore[arg-type]
    if model.image_size is not None:
        with pytest.raises(OodlabError):
            model.check_input(images(size=model.image_size + 4))


@ALL
def test_seeded_construction_is_reproducible(name: str) -> None:
    torch.manual_seed(0)
    a = build(name).state_dict()
    torch.manual_seed(0)
    b = build(name).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@ALL
def test_normalisation_buffers(name: str) -> None:
    model = build(name, mean=0.25, std=0.5)
    state = model.state_dict()
    # A model built around a classifier (hscae) normalises its input there.
    state = {k.removeprefix("classifier."): v for k, v in state.items() if k.count("input_") == 1}
    assert "input_mean" in state and "input_std" in state
    assert state["input_mean"].shape == (1, 1, 1, 1)
    assert state["input_mean"].item() == 0.25
    assert state["input_std"].item() == 0.5
    with pytest.raises(OodlabError):
        build(name, mean=(0.1, 0.2, 0.3))


@ALL
def test_gradient_reaches_the_input(name: str) -> None:
    model = build(name).eval()
    x = images().requires_grad_()
    model(x).sum().backward()
    assert x.grad is not None
    assert x.grad.abs().sum() > 0


# -- registry --------------------------------------------------------------------------------


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(OodlabError, match="nope") as info:
        create_model("nope")
    for known in list_models():
        assert known in str(info.value)


def test_list_models_pattern() -> None:
    assert list_models("resnet*") == ["resnet18", "resnet34"]
    assert {"lenet", "lenet5", "mlp", "resnet18", "resnet34"} <= set(list_models())
    assert list_models() == sorted(list_models())


# -- model-specific --------------------------------------------------------------------------


def test_lenet_layout() -> None:
    model = create_model("lenet").eval()
    assert model.tap_names == ("conv1", "conv2", PENULTIMATE)
    assert model.num_features == 128
    assert sum(p.numel() for p in model.parameters()) == 1_199_882
    _, taps = model.forward_taps(images(n=2), model.tap_names)
    assert taps["conv1"].shape == (2, 32, 26, 26)
    assert taps["conv2"].shape == (2, 64, 24, 24)
    assert taps[PENULTIMATE].shape == (2, 128)


def test_lenet5_layout() -> None:
    model = create_model("lenet5").eval()
    assert model.tap_names == ("conv1", "conv2", "fc1", PENULTIMATE)
    assert model.num_features == 84
    assert sum(p.numel() for p in model.parameters()) == 61_706
    _, taps = model.forward_taps(images(n=2), model.tap_names)
    assert taps["conv1"].shape == (2, 6, 28, 28)
    assert taps["conv2"].shape == (2, 16, 10, 10)
    assert taps["fc1"].shape == (2, 120)
    assert taps[PENULTIMATE].shape == (2, 84)
    assert all((t >= 0).all() for t in taps.values())


def test_mlp_taps() -> None:
    default = create_model("mlp")
    assert default.tap_names == ("fc1", PENULTIMATE)
    assert default.num_features == 128
    model = create_model("mlp", hidden=(32, 16, 8), dropout=0.5).eval()
    assert model.tap_names == ("fc1", "fc2", PENULTIMATE)
    _, taps = model.forward_taps(images(n=2), model.tap_names)
    assert taps["fc1"].shape == (2, 32)
    assert taps["fc2"].shape == (2, 16)
    assert taps[PENULTIMATE].shape == (2, 8)
    assert (taps["fc1"] >= 0).all()
    with pytest.raises(OodlabError):
        create_model("mlp", hidden=())


def test_resnet_accepts_any_size_when_unpinned() -> None:
    model = create_model("resnet18", num_classes=NUM_CLASSES, in_channels=3, width=0.125).eval()
    assert model.image_size is None
    for size in (28, 32):
        x = images(channels=3, size=size, n=2)
        model.check_input(x)
        assert model(x).shape == (2, NUM_CLASSES)
    with pytest.raises(OodlabError):
        model.check_input(images(channels=3, size=4, n=2))


def test_resnet_taps_and_width() -> None:
    model = create_model("resnet18", in_channels=3, width=0.125).eval()
    _, taps = model.forward_taps(images(channels=3, size=32, n=2), model.tap_names)
    assert model.tap_names == ("stem", "layer1", "layer2", "layer3", "layer4", PENULTIMATE)
    assert taps["stem"].shape == (2, 8, 32, 32)
    assert taps["layer1"].shape == (2, 8, 32, 32)
    assert taps["layer2"].shape == (2, 16, 16, 16)
    assert taps["layer3"].shape == (2, 32, 8, 8)
    assert taps["layer4"].shape == (2, 64, 4, 4)
    assert taps[PENULTIMATE].shape == (2, 64)
    for name in ("stem", "layer1", "layer2", "layer3", "layer4"):
        assert (taps[name] >= 0).all(), name
    assert torch.allclose(taps[PENULTIMATE], taps["layer4"].mean(dim=(2, 3)))


def test_resnet_image_size_pins_when_given() -> None:
    model = create_model("resnet18", in_channels=3, width=0.125, image_size=32)
    model.check_input(images(channels=3, size=32))
    with pytest.raises(OodlabError):
        model.check_input(images(channels=3, size=28))


def test_resnet_full_width_layout() -> None:
    model = create_model("resnet18")
    assert model.num_features == 512
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert create_model("resnet34").num_features == 512
