"""The shared forward pass: taps, reducers, the in-memory outputs cache."""

from __future__ import annotations

import pytest
import torch

from oodlab import OodlabError
from oodlab.features import Outputs, OutputsCache, ReducedTap, extract, model_fingerprint, parse_tap


def test_extract_returns_logits_and_requested_taps(tiny_setup: dict) -> None:
    model, images = tiny_setup["model"], tiny_setup["id_test"]
    out = extract(model, images, ["conv1", "conv2@mean", "penultimate"], batch_size=64)
    assert out.logits.shape == (len(images), 3)
    assert out.tap("conv1").shape == (len(images), 32, 10, 10)
    assert out.tap("conv2@mean").shape == (len(images), 64)
    assert out.tap("penultimate").shape == (len(images), 128)
    torch.testing.assert_close(
        out.tap("conv2@mean"), extract(model, images, ["conv2"]).tap("conv2").mean((2, 3))
    )
    with torch.no_grad():
        torch.testing.assert_close(out.logits, model(images.tensor()), rtol=1e-5, atol=1e-6)
    assert out.tap("logits") is out.logits


def test_extract_restores_training_mode(tiny_setup: dict) -> None:
    model = tiny_setup["model"]
    model.train()
    try:
        extract(model, tiny_setup["id_test"])
        assert model.training
    finally:
        model.eval()


def test_missing_tap_and_bad_reducer_are_clear_errors(tiny_setup: dict) -> None:
    with pytest.raises(OodlabError, match="no tap fc9"):
        extract(tiny_setup["model"], tiny_setup["id_test"], ["fc9"])
    with pytest.raises(OodlabError, match="reducer"):
        parse_tap("conv1@max")
    with pytest.raises(OodlabError, match="was not computed"):
        Outputs(torch.zeros(2, 3)).tap("conv1")


def test_cache_runs_the_model_once_per_dataset(tiny_setup: dict) -> None:
    cache = OutputsCache()
    model, images = tiny_setup["model"], tiny_setup["id_test"]
    a = cache.get(model, images, ["penultimate"])
    b = cache.get(model, images)  # a subset of the taps: no new pass
    assert cache.forward_passes == 1 and a is b
    cache.get(model, images, ["conv1@mean"])  # a new tap: one pass with the union
    c = cache.get(model, images, ["penultimate", "conv1@mean"])
    assert cache.forward_passes == 2 and set(c.taps) == {"penultimate", "conv1@mean"}


def test_cache_is_keyed_by_model_content(tiny_setup: dict) -> None:
    import copy

    cache = OutputsCache()
    model, images = tiny_setup["model"], tiny_setup["id_test"]
    other = copy.deepcopy(model)
    assert model_fingerprint(other) == model_fingerprint(model)
    with torch.no_grad():
        other.head.bias += 1.0
    assert model_fingerprint(other) != model_fingerprint(model)
    cache.get(model, images)
    out = cache.get(other, images)
    assert cache.forward_passes == 2
    torch.testing.assert_close(out.logits, cache.get(model, images).logits + 1.0)


def test_outputs_subset(tiny_setup: dict) -> None:
    out = extract(tiny_setup["model"], tiny_setup["id_test"], ["penultimate"])
    sub = out.subset(slice(2, 5))
    assert len(sub) == 3 and torch.equal(sub.tap("penultimate"), out.tap("penultimate")[2:5])


def test_disk_cache_is_reused_across_processes_and_keyed_by_content(tiny_setup: dict, tmp_path) -> None:
    model, images = tiny_setup["model"], tiny_setup["id_test"]
    first = OutputsCache(disk_dir=tmp_path)
    a = first.get(model, images, ["penultimate", "conv1"])
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and first.forward_passes == 1
    second = OutputsCache(disk_dir=tmp_path)  # a new process, in effect
    b = second.get(model, images, ["penultimate"])
    assert second.forward_passes == 0 and second.disk_hits == 1
    assert torch.equal(a.logits, b.logits) and torch.equal(a.tap("penultimate"), b.tap("penultimate"))
    assert "conv1" not in b.taps  # full conv maps are not written to disk
    other = images.subset(slice(0, 10))
    second.get(model, other)
    assert second.forward_passes == 1  # other images: another entry
    files[0].write_bytes(b"damaged")
    third = OutputsCache(disk_dir=tmp_path)
    torch.testing.assert_close(third.get(model, images).logits, a.logits)
    assert third.forward_passes == 1  # a damaged entry is recomputed, not trusted


def test_using_cache_swaps_the_process_cache(tiny_setup: dict) -> None:
    from oodlab import features

    mine = OutputsCache()
    with features.using_cache(mine):
        features.outputs(tiny_setup["model"], tiny_setup["id_test"])
    assert mine.forward_passes == 1 and features.default_cache is not mine


def test_reduced_tap_keeps_only_the_summary_and_merges_into_the_cache(tiny_setup: dict, tmp_path) -> None:
    model, images = tiny_setup["model"], tiny_setup["id_test"]
    norm = ReducedTap("conv2", "conv2@norm", lambda v, x: v.flatten(1).norm(dim=1))
    first = extract(model, images, [norm, "penultimate"], batch_size=7)
    full = extract(model, images, ["conv2"]).tap("conv2").flatten(1).norm(dim=1)
    torch.testing.assert_close(first.tap(norm), full)
    assert set(first.taps) == {"conv2@norm", "penultimate"}
    on_logits = ReducedTap("logits", "logits@max", lambda v, x: v.max(1).values)
    torch.testing.assert_close(
        extract(model, images, [on_logits]).tap("logits@max"), first.logits.max(1).values
    )
    cache = OutputsCache(disk_dir=tmp_path)
    cache.get(model, images, ["penultimate"])
    merged = cache.get(model, images, [norm])  # only the missing reduction is computed
    assert cache.forward_passes == 2 and set(merged.taps) == {"penultimate", "conv2@norm"}
    again = OutputsCache(disk_dir=tmp_path).get(model, images, [norm, "penultimate"])
    torch.testing.assert_close(again.tap("conv2@norm"), full)


def test_cache_is_bounded_in_bytes(tiny_setup: dict) -> None:
    model = tiny_setup["model"]
    sets = [tiny_setup[k] for k in ("id_train", "id_val", "ood_val")]
    cache = OutputsCache(max_bytes=1)
    for s in sets:
        cache.get(model, s, ["conv1@mean"])
        assert len(cache._store) == 1  # only the newest is kept
    roomy = OutputsCache(max_bytes=1 << 30)
    for s in sets:
        roomy.get(model, s, ["conv1@mean"])
    assert len(roomy._store) == 3 and roomy.nbytes() > 0
