"""Corruption suites, near/far mixtures and their command-line options, end to end on tiny suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from oodlab.bench.suites import SUITES, ood_set_names
from oodlab.data.corruptions import CORRUPTIONS

from .test_bench_resume import run, tiny  # noqa: F401  (the fixture, used by name)


def test_corruption_suites_reuse_the_base_suites_model() -> None:
    for corrupted, base in (
        ("mnist-corruptions", "mnist-vs-fmnist"),
        ("fmnist-corruptions", "fmnist-vs-mnist"),
    ):
        c, b = SUITES[corrupted], SUITES[base]
        # Same recipe and same ID training split ⇒ the same checkpoint-cache key.
        assert (c.train, c.id_dataset, c.holdout, c.n_val) == (b.train, b.id_dataset, b.holdout, b.n_val)
        assert c.corruptions == CORRUPTIONS and c.n_id_test == 2000
        names = ood_set_names(c)
        assert (
            len(names) == 45 and names[:2] == ["gaussian_noise-1", "gaussian_noise-2"] and "blur-3" in names
        )


@pytest.mark.usefixtures("tiny")
def test_corruption_suite_reports_auroc_per_corruption_and_severity(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = [
        "bench",
        "--suite",
        "tiny-corruptions",
        "--detectors",
        "msp,energy",
        "--corruptions",
        "blur,invert",
    ]
    assert run([*args, "--out", str(out), "--quiet"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["ood"] for r in rows if r["detector"] == "msp"] == [
        f"{c}-{s}" for c in ("blur", "invert") for s in range(1, 6)
    ]
    for r in rows:
        assert (
            r["n_id"] == 200 == r["n_ood"]
            and r["corruption"] in ("blur", "invert")
            and 1 <= r["severity"] <= 5
        )
    inv = {r["severity"]: r["auroc"] for r in rows if r["detector"] == "msp" and r["corruption"] == "invert"}
    assert inv[5] > 0.9  # inverted patterns are far from the ID images
    printed = capsys.readouterr().out
    assert "AUROC per corruption × severity" in printed and "sev 5" in printed
    assert "AUROC (%) per corruption and severity" in (out / "results.md").read_text()
    for ext in ("png", "svg"):
        assert (out / "plots" / "tiny-corruptions" / f"corruption_heatmap.{ext}").stat().st_size > 1000


@pytest.mark.usefixtures("tiny")
def test_mixture_adds_a_seeded_near_far_set(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["bench", "--suite", "tiny", "--detectors", "msp", "--mixture", "mix=dark+gaussian:0.25"]
    assert run([*args, "--out", str(out), "--quiet", "--no-plots"]) == 0
    rows = json.loads((out / "results.json").read_text())
    mix = next(r for r in rows if r["ood"] == "mix")
    assert mix["n_ood"] == 300 and mix["mixture"] == "mix=dark+gaussian:0.25"
    assert rows[-1]["config"]["mixtures"] == ["mix=dark+gaussian:0.25"]


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (
            ["--suite", "tiny-corruptions", "--corruptions", "blur,fog"],
            "unknown corruption 'fog'; known corruptions:",
        ),
        (["--suite", "tiny", "--corruptions", "blur"], "--corruptions applies to corruption suites"),
        (["--suite", "tiny", "--mixture", "m=dark+nope:0.5"], "suite tiny has no OOD test set 'nope'"),
        (["--suite", "tiny", "--mixture", "dark=dark+gaussian:0.5"], "--mixture name 'dark' clashes"),
        (["--suite", "tiny", "--mixture", "m=dark+gaussian"], "--mixture takes NAME=NEAR+FAR:P"),
        (["--suite", "tiny", "--seeds", "0,0"], "names a seed twice"),
    ],
)
@pytest.mark.usefixtures("tiny")
def test_bad_suite_options_are_one_line_errors(tmp_path: Path, capsys, args, pattern) -> None:
    out = tmp_path / "o"
    assert run(["bench", *args, "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and pattern in err.strip().splitlines()[-1], err
    assert not out.exists()


def test_list_corruptions(capsys) -> None:
    assert run(["list", "corruptions"]) == 0
    text = capsys.readouterr().out
    for c in CORRUPTIONS:
        assert c in text
    assert run(["list", "suites"]) == 0
    assert "mnist-corruptions" in capsys.readouterr().out


def test_recipes_keep_the_suites_input_statistics_and_build_a_working_model() -> None:
    from oodlab.bench import BenchConfig
    from oodlab.training import RECIPES, with_recipe
    from oodlab.training.trainer import build_model

    suite = SUITES["fmnist-vs-mnist"]
    assert with_recipe(suite, "lenet") == suite  # the default changes nothing: same checkpoint
    for name in RECIPES:
        cfg = with_recipe(suite, name).train
        assert cfg.model_kwargs["mean"] == 0.2860 and cfg.model_kwargs["std"] == 0.3530
        model = build_model(cfg, 10, (1, 28, 28)).eval()
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert with_recipe(suite, "resnet18").train.model == "resnet18"
    # The recipe's name is not part of a run's identity (its effect is, through the suites).
    default, resnet = BenchConfig(recipe="lenet").identity(), BenchConfig(recipe="resnet18").identity()
    assert "recipe" not in default and default == BenchConfig().identity()
    assert resnet["suite_definitions"] != default["suite_definitions"]


@pytest.mark.usefixtures("tiny")
def test_recipe_option_trains_the_named_network(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["bench", "--suite", "tiny", "--detectors", "msp", "--recipe", "lenet5", "--epochs", "1"]
    assert run([*args, "--out", str(out), "--quiet", "--no-plots"]) == 0
    models = json.loads((out / "models.json").read_text())
    assert [m["recipe"]["model"] for m in models] == ["lenet5"]
    assert [m["recipe"]["epochs"] for m in models] == [1]
    assert 0.0 <= models[0]["id_val_accuracy"] <= 1.0  # what a network may be chosen by
    assert (
        f"validation {100 * models[0]['id_val_accuracy']:.2f}% (lenet5, 1 epochs"
        in (out / "results.md").read_text()
    )
    assert "ID validation accuracy (%)" in (out / "report.html").read_text()
    assert run(["bench", "--suite", "tiny", "--recipe", "vgg", "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "unknown recipe 'vgg'; known recipes: lenet, lenet5, resnet18, lenet-caffe" in err
    assert run(["list", "recipes"]) == 0
    assert "resnet18" in capsys.readouterr().out
