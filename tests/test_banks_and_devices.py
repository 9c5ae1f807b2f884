"""Large feature banks (tiled exact search, fitting from features, faiss indexes, the memory
check) and ``--device``; every bank here is small, the code paths are the large ones."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from oodlab import OodlabError, memory
from oodlab.cli import main
from oodlab.detectors import create_detector, load_detector
from oodlab.detectors.knn import kth_neighbour_distances, l2_normalize, search_blocks
from oodlab.detectors.mahalanobis import class_gaussians
from oodlab.device import resolve_device
from oodlab.features import extract

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _fit(name: str, setup: dict, **params: object):
    return create_detector(name, **params).fit(
        setup["model"], setup["id_train"], id_val=setup["id_val"], ood_val=setup["ood_val"]
    )


def _penultimate(setup: dict, key: str) -> torch.Tensor:
    return extract(setup["model"], setup[key], ["penultimate"]).tap("penultimate")


# -- the exact search in bank tiles -----------------------------------------------------------


def test_search_blocks_split_the_bank_only_when_it_is_large() -> None:
    assert search_blocks(55_000, 20_000) == (305, 55_000)  # LeNet-sized: whole bank per block
    q, b = search_blocks(1_200_000, 10_000)
    assert (q, b) == (1024, 16384) and q * b <= 1 << 24  # a million rows: tiles, bounded memory


def test_tiled_search_equals_the_whole_bank_search() -> None:
    g = torch.Generator().manual_seed(0)
    bank = l2_normalize(torch.randn(3000, 24, generator=g).relu())
    queries = l2_normalize(torch.randn(70, 24, generator=g).relu())
    ks = [1, 7, 50]
    whole = kth_neighbour_distances(queries, bank, ks)
    assert search_blocks(3000, 70, 16, 16 * 256)[1] == 256  # the call below really tiles
    tiled = kth_neighbour_distances(queries, bank, ks, chunk_size=16, max_elements=16 * 256)
    assert torch.equal(tiled, whole)
    nn = NearestNeighbors(n_neighbors=50).fit(bank.double().numpy())
    dist, _ = nn.kneighbors(queries.double().numpy())
    np.testing.assert_allclose(tiled[:, 2].numpy(), dist[:, 49], rtol=1e-9)


# -- fitting from features ----------------------------------------------------------------------


def test_knn_fit_features_equals_fit_and_can_work_in_place(tiny_setup: dict) -> None:
    fitted = _fit("knn", tiny_setup, k=5)
    train, test = _penultimate(tiny_setup, "id_train"), _penultimate(tiny_setup, "ood_test")
    from_feats = create_detector("knn", k=5).fit_features(train.clone())
    assert torch.equal(from_feats.score_features(test), fitted.score_set(tiny_setup["ood_test"]))
    owned = train.clone()
    in_place = create_detector("knn", k=5).fit_features(owned, copy=False)
    assert torch.equal(owned, l2_normalize(train))  # normalised in place, no second bank
    assert torch.equal(in_place.score_features(test), from_feats.score_features(test))
    with pytest.raises(OodlabError, match="fitted from features"):
        in_place.score(tiny_setup["ood_test"].tensor())
    with pytest.raises(OodlabError, match="fixed k"):
        create_detector("knn").fit_features(train)


def test_mahalanobis_blocks_and_fit_features_match_the_whole_fit(tiny_setup: dict) -> None:
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(500, 6, generator=g), torch.randint(0, 4, (500,), generator=g)
    m1, c1, _ = class_gaussians(feats, labels)
    m2, c2, _ = class_gaussians(feats, labels, rows=64)  # 8 blocks
    torch.testing.assert_close(m2, m1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c2, c1, rtol=1e-10, atol=1e-12)
    fitted = _fit("mahalanobis", tiny_setup, noise=0.0)
    det = create_detector("mahalanobis", noise=0.0).fit_features(
        _penultimate(tiny_setup, "id_train"), tiny_setup["id_train"].labels()
    )
    torch.testing.assert_close(
        det.score_features(_penultimate(tiny_setup, "ood_test")),
        fitted.score_set(tiny_setup["ood_test"]),
        rtol=1e-9,
        atol=1e-9,
    )
    with pytest.raises(OodlabError, match="noise=0"):
        create_detector("mahalanobis", noise=0.01).fit_features(feats, labels)
    with pytest.raises(OodlabError, match="labels"):
        create_detector("mahalanobis", noise=0.0).fit_features(feats, labels[:10])


def test_vim_fit_features_matches_the_model_fit(tiny_setup: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    fitted = _fit("vim", tiny_setup)
    head = tiny_setup["model"].head
    train, test = _penultimate(tiny_setup, "id_train"), _penultimate(tiny_setup, "ood_test")
    monkeypatch.setattr("oodlab.detectors.vim.ROWS", 100)  # walk the 600 features in 6 blocks
    det = create_detector("vim").fit_features(train, head.weight, head.bias)
    assert det.dim_ == fitted.dim_
    assert det.alpha_ == pytest.approx(fitted.alpha_, rel=1e-5)  # logits: float32 model vs float64 here
    torch.testing.assert_close(
        det.score_features(test), fitted.score_set(tiny_setup["ood_test"]), rtol=1e-4, atol=1e-4
    )


# -- faiss indexes ----------------------------------------------------------------------------


def test_a_faiss_index_without_faiss_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_faiss(name: str, *args: object, **kwargs: object) -> object:
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(OodlabError) as err:
        create_detector("knn", k=3, index="ivf").fit_features(torch.rand(50, 4))
    assert str(err.value) == (
        "knn index='ivf' needs faiss, which is not installed: pip install 'oodlab[faiss]'"
    )
    with pytest.raises(OodlabError, match="unknown index 'annoy'"):
        create_detector("knn", k=3, index="annoy").fit_features(torch.rand(50, 4))


def test_faiss_indexes_find_the_exact_neighbours_when_searched_fully(tmp_path, tiny_setup: dict) -> None:
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(2000, 16, generator=g), torch.randn(100, 16, generator=g)
    exact = create_detector("knn", k=10).fit_features(bank).score_features(queries)
    ivf = create_detector("knn", k=10, index="ivf", nlist=8, nprobe=8).fit_features(bank)
    torch.testing.assert_close(ivf.score_features(queries), exact, rtol=1e-4, atol=1e-4)
    hnsw = create_detector("knn", k=10, index="hnsw", ef_search=400).fit_features(bank)
    assert (hnsw.score_features(queries) - exact).abs().max() < 1e-3
    # a fitted index survives save / load (its bytes are stored with the detector)
    det = create_detector("knn", k=5, index="ivf", nlist=4, nprobe=4).fit(
        tiny_setup["model"], tiny_setup["id_train"]
    )
    det.save(tmp_path / "knn")
    again = load_detector(tmp_path / "knn", tiny_setup["model"])
    ood = tiny_setup["ood_test"]
    assert torch.equal(again.score_set(ood), det.score_set(ood))


# -- memory --------------------------------------------------------------------------------------


def test_a_bank_larger_than_memory_is_refused_before_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 1_000_000)
    feats = torch.rand(2000, 512)  # 4.1 MB normalised copy, 1 MB "available"
    with pytest.raises(OodlabError) as err:
        create_detector("knn", k=5).fit_features(feats)
    msg = str(err.value)
    assert "2000 × 512 float32" in msg and "needs 4.10 MB" in msg and "only 1.00 MB is available" in msg
    assert "\n" not in msg
    # in place needs no new bank, so it is not refused
    create_detector("knn", k=5).fit_features(feats, copy=False)


def test_memory_helpers() -> None:
    assert memory.format_bytes(2_457_600_000) == "2.46 GB"
    assert memory.format_bytes(512) == "512 B"
    free = memory.available_bytes()
    assert free is None or free > 0
    memory.require_memory(1, "one byte")


# -- devices ---------------------------------------------------------------------------------------


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(OodlabError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(OodlabError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_bench_on_a_missing_gpu_is_a_one_line_error(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--suite", "fmnist-vs-mnist", "--device", "cuda", "--out", str(out)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "no CUDA device" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@cuda
def test_training_and_scoring_on_cuda_match_the_cpu(tiny_setup: dict) -> None:
    from oodlab.training import TrainConfig, train
    from tests.conftest import pattern_images

    cfg = TrainConfig(model="lenet", optimizer="adam", lr=1e-3, schedule="none", epochs=1, batch_size=32)
    model, _ = train(cfg, pattern_images(200, seed=0), progress=False, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    ood = tiny_setup["ood_test"]
    on_gpu = create_detector("energy").fit(model, tiny_setup["id_train"]).score_set(ood)
    on_cpu = create_detector("energy").fit(model.cpu(), tiny_setup["id_train"]).score_set(ood)
    assert on_gpu.device.type == "cpu"
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)
