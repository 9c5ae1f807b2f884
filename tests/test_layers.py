"""Log-softmax residual networks, the entropy-minimisation objective, the layer-softmax detector
and the layer study (formulas checked by hand; the report on a tiny problem)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oodlab import OodlabError
from oodlab.bench.layers import (
    MIX_PERCENTS,
    LayerStudyConfig,
    aggregations,
    layer_networks,
    score_network,
    write_layer_report,
)
from oodlab.bench.suites import Suite, SuiteData
from oodlab.cli import main
from oodlab.data import ImageSet, gaussian_noise
from oodlab.data.mixtures import MixtureSpec, make_mixture, mixture_index
from oodlab.detectors import create_detector
from oodlab.detectors.layer_softmax import channel_stats, layer_stats
from oodlab.metrics import auroc
from oodlab.models import create_model
from oodlab.training import TrainConfig, create_objective, train
from oodlab.training.objectives import channel_entropy

from .conftest import SIZE, dark_images, pattern_images

TINY_RESNET = dict(num_classes=3, in_channels=1, width=0.125)


def test_logsoftmax_resnet_outputs_log_distributions_after_each_addition() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", activation="logsoftmax", **TINY_RESNET).eval()
    x = torch.rand(2, 1, 16, 16)
    logits, blocks = model.forward_blocks(x)
    assert len(blocks) == 8 and logits.shape == (2, 3)
    for b in blocks:  # exp sums to 1 over channels at every position
        torch.testing.assert_close(b.exp().sum(1), torch.ones(b.shape[0], *b.shape[2:]))
    _, taps = model.forward_taps(x, {"stem", "layer2"})
    assert (taps["stem"] >= 0).all(), "the stem keeps its ReLU"
    torch.testing.assert_close(taps["layer2"], blocks[3])
    relu = create_model("resnet18", **TINY_RESNET).eval()
    _, relu_blocks = relu.forward_blocks(x)
    assert all((b >= 0).all() for b in relu_blocks)


def test_activation_is_refused_without_residual_blocks() -> None:
    with pytest.raises(OodlabError, match="'lenet' has no residual blocks"):
        create_model("lenet", activation="logsoftmax")
    with pytest.raises(OodlabError, match="activation must be one of relu, logsoftmax, got 'tanh'"):
        create_model("resnet34", activation="tanh", **TINY_RESNET)


def test_entropy_min_is_cross_entropy_plus_lambda_times_summed_channel_entropy() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", activation="logsoftmax", **TINY_RESNET).eval()
    x, y = torch.rand(4, 1, 12, 12), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        logits, blocks = model.forward_blocks(x)
        by_hand = sum(float(-(b.exp() * b).sum()) for b in blocks) / 4
        loss = create_objective("entropy-min", lam=0.5).loss(model, x, y, None)
        plain = create_objective("entropy-min", lam=0).loss(model, x, y, None)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, y)) + 0.5 * by_hand, rel=1e-5)
    assert float(plain) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    uniform = torch.full((1, 4, 2, 3), float(np.log(0.25)))
    assert float(channel_entropy(uniform)) == pytest.approx(6 * np.log(4))
    with pytest.raises(OodlabError, match=r"lam must be a finite number >= 0, got -0\.1"):
        create_objective("entropy-min", lam=-0.1)
    relu = create_model("resnet18", **TINY_RESNET)
    with pytest.raises(OodlabError, match="has none"):
        create_objective("entropy-min").prepare(relu, x, None)


def test_entropy_min_sharpens_the_channel_distributions() -> None:
    """A few steps with λ > 0 lower the summed channel entropy; the same steps with λ = 0 do not as much."""
    images = pattern_images(16, seed=0)
    x, y = images.tensor(), images.labels()
    after = []
    for lam in (0.0, 1.0):
        torch.manual_seed(0)
        model = create_model("resnet18", activation="logsoftmax", **TINY_RESNET).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        objective = create_objective("entropy-min", lam=lam)
        for _ in range(3):
            opt.zero_grad()
            objective.loss(model, x, y, None).backward()
            opt.step()
        with torch.no_grad():
            _, blocks = model.eval().forward_blocks(x)
        after.append(sum(float(channel_entropy(b).mean()) for b in blocks))
    assert after[1] < 0.9 * after[0]


def test_channel_stats_by_hand_and_exact_maximum() -> None:
    z = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]])  # (N=1, C=3, P=2)
    log_s = torch.log_softmax(z.double(), dim=1)
    expected = torch.stack([log_s.max(1).values, log_s.min(1).values, log_s.mean(1)], dim=1)
    torch.testing.assert_close(channel_stats(z), expected)
    pooled = layer_stats(z)[0]
    assert pooled.shape == (9,)
    # column 3·stat + pool: misp pooled by min is the smaller of the two positions' minima
    assert float(pooled[3 * 1 + 1]) == pytest.approx(float(expected[0, 1].min()))
    assert float(pooled[3 * 2 + 2]) == pytest.approx(float(expected[0, 2].mean()))
    far = torch.tensor([[0.0, 0.0, 50.0]])  # log_softmax rounds the maximum to exactly 0
    assert float(torch.log_softmax(far.double(), 1).max()) == 0.0
    assert float(channel_stats(far)[0, 0, 0]) == pytest.approx(-2 * np.exp(-50.0), rel=1e-9)
    # log-softmax maps give the same statistics as the maps they were computed from
    torch.testing.assert_close(layer_stats(torch.log_softmax(z, 1)), layer_stats(z))


def test_layer_softmax_bad_input_is_one_clear_line(tiny_setup: dict) -> None:
    with pytest.raises(OodlabError, match=r"stat must be one of msp, misp, asp, got 'median'"):
        create_detector("layer-softmax", stat="median")
    with pytest.raises(OodlabError, match=r"pool must be one of max, min, mean, got 'sum'"):
        create_detector("layer-softmax", pool="sum")
    det = create_detector("layer-softmax", layer="layer9")
    with pytest.raises(
        OodlabError, match="no layer 'layer9'; its layers are: conv1, conv2, penultimate, final"
    ):
        det.fit(
            tiny_setup["model"],
            tiny_setup["id_train"],
            id_val=tiny_setup["id_val"],
            ood_val=tiny_setup["ood_val"],
        )


def test_layer_softmax_orientation_is_fixed_on_validation_and_recorded(tiny_setup: dict) -> None:
    s = tiny_setup
    model = s["model"]
    for stat in ("msp", "misp"):
        det = create_detector("layer-softmax", layer="final", stat=stat, pool="mean")
        det.fit(model, s["id_train"], id_val=s["id_val"], ood_val=s["ood_val"])
        raw = det.score_set(s["id_val"]) * det.orientation_, det.score_set(s["ood_val"]) * det.orientation_
        chosen = det.tuning()["chosen"]["orientation"]
        assert chosen == (1 if auroc(*raw) >= 0.5 else -1)
        assert det.tuning()["validation_auroc_raw"] == pytest.approx(auroc(*raw))
        assert auroc(det.score_set(s["id_val"]), det.score_set(s["ood_val"])) >= 0.5
    # MSP is higher on ID, MiSP lower: the two orientations differ on this easy problem
    fixed = create_detector("layer-softmax", stat="misp", orientation=-1).fit(model, s["id_train"])
    logp = torch.log_softmax(model(s["id_test"].tensor(0, 5)).double(), 1)
    torch.testing.assert_close(
        fixed.score(s["id_test"].tensor(0, 5)), -logp.min(1).values, rtol=1e-5, atol=1e-6
    )


def test_mixture_index_gives_the_mixture_set() -> None:
    near = ImageSet("a", np.arange(10 * 4, dtype=np.uint8).reshape(10, 1, 2, 2))
    far = ImageSet("b", np.full((7, 1, 2, 2), 200, np.uint8))
    spec = MixtureSpec("m", "a", "b", 0.25)
    ia, ib, order = mixture_index(spec, len(near), len(far), 3)
    assert len(ia) == 2 and len(ib) == 5
    np.testing.assert_array_equal(
        make_mixture(spec, near, far, 3).x, np.concatenate([near.x[ia], far.x[ib]])[order]
    )


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two tiny ResNets (ReLU, log-softmax) scored on a tiny suite, and the report written."""
    suite = Suite(name="tiny", description="", id_dataset="patterns", ood_datasets={"dark": "dark"})
    id_train = pattern_images(300, seed=0)
    ood_tests = {"dark": dark_images(90, seed=4), "gaussian": gaussian_noise(90, (1, SIZE, SIZE), 5)}
    data = SuiteData(
        suite,
        0,
        "blind",
        id_train,
        pattern_images(80, seed=1),
        pattern_images(90, seed=3),
        dark_images(80, seed=2, name="dark-val"),
        ood_tests,
    )
    cfg = LayerStudyConfig(lambdas=(0.01,), n_fit=150, n_eval=60)
    base = TrainConfig(optimizer="adam", lr=1e-2, schedule="none", epochs=1, batch_size=64)
    nets = layer_networks(base, cfg)
    cell = {"suite": "tiny", "seed": 0, "config": {"size": "tiny"}, "networks": {}}
    for label, recipe in nets.items():
        model, stats = train(recipe, id_train, progress=False)
        result = score_network(model, data, cfg, log=lambda _: None)
        result.update(id_accuracy=0.9, id_val_accuracy=0.9, train_seconds=stats["train_seconds"])
        cell["networks"][label] = result
    out = tmp_path_factory.mktemp("layers")
    (out / "cells").mkdir()
    (out / "cells" / "tiny-seed0.json").write_text(json.dumps(cell))
    return {"cell": cell, "out": out, "paths": write_layer_report(out), "nets": nets}


def test_layer_networks_differ_only_in_activation_and_objective() -> None:
    nets = layer_networks(TrainConfig(model_kwargs={"mean": 0.5, "std": 0.2}))
    assert list(nets) == ["relu", "logsoftmax λ=0", "logsoftmax λ=0.01"]
    relu, ls = nets["relu"], nets["logsoftmax λ=0.01"]
    assert relu.model == "resnet18" and ls.model_kwargs == {**relu.model_kwargs, "activation": "logsoftmax"}
    assert (ls.objective, ls.objective_params) == ("entropy-min", {"lam": 0.01})
    with pytest.raises(OodlabError, match="lam must be a finite number >= 0"):
        layer_networks(TrainConfig(), LayerStudyConfig(lambdas=(-1.0,)))


def test_study_scores_every_layer_and_chooses_blind(tiny_study: dict) -> None:
    for result in tiny_study["cell"]["networks"].values():
        layers = result["layers"]
        assert layers == ["stem", "layer1", "layer2", "layer3", "layer4", "penultimate", "final"]
        keys = set(result["test_auroc"])
        assert {f"{la}/{a}" for la in layers for a in aggregations()} <= keys
        assert {f"{la}/mahalanobis" for la in layers[:-1]} <= keys and "final/mahalanobis" not in keys
        assert all(0 <= v <= 1 for per in result["test_auroc"].values() for v in per.values())
        val = result["validation_auroc"]
        assert all(v >= 0.5 for v in val.values()), "every aggregation is oriented on validation"
        assert val[result["blind_choice"]] == max(val.values())
        assert set(result["sweep"]) == {str(p) for p in MIX_PERCENTS}
        # the ends of the sweep are the pure near and far sets (same size: 90 images each)
        for key, per in result["test_auroc"].items():
            assert result["sweep"]["100"][key] == pytest.approx(per["dark"])
            assert result["sweep"]["0"][key] == pytest.approx(per["gaussian"])


def test_study_report_has_tables_claims_and_the_per_layer_plot(tiny_study: dict) -> None:
    out = tiny_study["out"]
    md = (out / "layers.md").read_text()
    assert "### AUROC per layer on dark, logsoftmax λ=0.01" in md
    assert "MiSP beats MSP at the final layer" in md and "| yes " in md or "| no " in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "layer on the x-axis" in html
    assert (out / "plots" / "layers-tiny.svg").exists() and (out / "plots" / "sweep-tiny.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lambdas", "0,-0.5"], "lam must be a finite number >= 0, got -0.5"),
        (["--lambdas", "x"], "--lambdas takes comma-separated numbers"),
        (["--suite", "nope"], "unknown suite 'nope'"),
        (["--suite", "mnist-corruptions"], "no real-image OOD test set"),
    ],
)
def test_layers_command_bad_input_is_one_line(args: list[str], message: str, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["layers", "--out", str(tmp_path / "out"), *args])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "out").exists()
