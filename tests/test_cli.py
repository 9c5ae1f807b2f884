"""`oodlab` end to end on a tiny suite, and its handling of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oodlab.bench import suites as suites_mod
from oodlab.bench.suites import Suite
from oodlab.cli import main
from oodlab.data import ImageSet
from oodlab.training import TrainConfig

from .conftest import dark_images, pattern_images

METRICS = (
    "auroc",
    "aupr_in",
    "aupr_out",
    "fpr95",
    "detection_error",
    "fpr80",
    "fpr95_ood_positive",
    "id_accepted",
    "ood_rejected",
    "id_accuracy",
)


@pytest.fixture()
def tiny_suite(monkeypatch, tmp_path) -> str:
    """Register a seconds-long suite (pattern images vs dark images, a small MLP) and isolate caches."""
    fake = {
        ("patterns", "train"): pattern_images(700, seed=10),
        ("patterns", "test"): pattern_images(300, seed=11),
        ("dark", "test"): dark_images(3100, seed=12),
    }

    def load(name: str, split: str) -> ImageSet:
        return fake[(name, split)]

    suite = Suite(
        name="tiny",
        description="test suite",
        id_dataset="patterns",
        ood_datasets={"dark": "dark"},
        train=TrainConfig(
            model="mlp",
            model_kwargs={"hidden": [32, 16]},
            optimizer="adam",
            lr=1e-2,
            schedule="none",
            epochs=2,
            batch_size=32,
        ),
        n_val=100,
        n_ood_val=100,
    )
    monkeypatch.setattr(suites_mod, "load_dataset", load)
    monkeypatch.setitem(suites_mod.SUITES, "tiny", suite)
    monkeypatch.setenv("OODLAB_CACHE", str(tmp_path / "cache"))
    return "tiny"


def run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_bench_writes_every_result_file(tiny_suite: str, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert (
        run(
            [
                "bench",
                "--suite",
                tiny_suite,
                "--detectors",
                "msp,energy,temperature",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 3 * 3  # detectors × OOD sets (dark, gaussian, uniform)
    assert {r["ood"] for r in rows} == {"dark", "gaussian", "uniform"}
    for r in rows:
        assert (r["suite"], r["seed"], r["protocol"]) == ("tiny", 0, "blind")
        for m in METRICS:
            assert 0.0 <= r[m] <= 1.0, m
        assert r["config"]["detectors"] == ["msp", "energy", "temperature"]
        assert r["tuned_on"] == {"id_val": "patterns-val", "ood_val": "synthetic-val"}
    assert max(r["auroc"] for r in rows if r["ood"] == "dark") > 0.9
    temp = next(r for r in rows if r["detector"] == "temperature")
    assert temp["tuning"]["chosen"]["temperature"] > 0
    assert (out / "results.csv").read_text().startswith("suite,seed,protocol,detector,ood,auroc")
    md = (out / "results.md").read_text()
    assert "## tiny (seed 0, protocol blind)" in md and "| msp" in md and "tuned on ID `patterns-val`" in md
    printed = capsys.readouterr()
    assert "AUROC" in printed.out and "ID accuracy" in printed.out
    # Second run, same arguments: every finished cell is reused and the numbers are identical.
    args = ["bench", "--suite", tiny_suite, "--detectors", "msp,energy,temperature", "--out", str(out)]
    assert run([*args, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("reused finished cell") == 3 and "loaded from cache" not in err
    again = json.loads((out / "results.json").read_text())
    assert [r["auroc"] for r in again] == [r["auroc"] for r in rows]
    # Third run with --overwrite: recomputed, the model comes from the checkpoint cache, same numbers.
    assert run([*args, "--quiet", "--overwrite"]) == 0
    assert "loaded from cache" in capsys.readouterr().err
    again = json.loads((out / "results.json").read_text())
    assert [r["auroc"] for r in again] == [r["auroc"] for r in rows]


def test_paper_protocol_tunes_on_the_test_split(tiny_suite: str, tmp_path) -> None:
    out = tmp_path / "paper"
    assert (
        run(
            [
                "bench",
                "--suite",
                tiny_suite,
                "--detectors",
                "temperature",
                "--protocol",
                "paper",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = json.loads((out / "results.json").read_text())
    dark = next(r for r in rows if r["ood"] == "dark")
    assert dark["protocol"] == "paper"
    assert dark["tuned_on"] == {"id_val": "patterns-test[:100]", "ood_val": "dark-test[:1000]"}
    assert dark["n_ood"] == 3100 - 1000 and dark["n_id"] == 300 - 100


def test_ood_npy_adds_an_ood_set(tiny_suite: str, tmp_path) -> None:
    path = tmp_path / "mine.npy"
    np.save(path, (np.random.default_rng(0).random((40, 12, 12)) * 255).astype(np.uint8))
    out = tmp_path / "out"
    assert (
        run(
            [
                "bench",
                "--suite",
                tiny_suite,
                "--detectors",
                "msp",
                "--ood-npy",
                f"mine={path}",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = json.loads((out / "results.json").read_text())
    assert next(r for r in rows if r["ood"] == "mine")["n_ood"] == 40


def assert_user_error(code: int, capsys, pattern: str, out_dir=None) -> None:
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    last = [line for line in err.strip().splitlines() if line][-1]
    assert pattern in last, err
    if out_dir is not None:
        # A refused run leaves the folder as it was: here it did not exist, so it must not now.
        assert not out_dir.exists(), sorted(p.name for p in out_dir.iterdir())


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["bench", "--suite", "nope"], "unknown suite 'nope'"),
        (["bench", "--detectors", "msp,nope"], "unknown detector 'nope'"),
        (["bench", "--ood-npy", "missing"], "--ood-npy takes NAME=PATH"),
        (["bench", "--ood-npy", "x=/does/not/exist.npy"], "no such file"),
        (["bench", "--accept-rate", "1.5"], "--accept-rate"),
        (["bench", "--seeds", "a,b"], "--seeds"),
        (["bench", "--protocol", "oracle"], "Invalid value"),
    ],
)
def test_bad_arguments_give_one_line_errors(args: list[str], pattern: str, capsys, tmp_path) -> None:
    code = run([*args, "--out", str(tmp_path / "o")])
    assert_user_error(code, capsys, pattern, tmp_path / "o")


@pytest.mark.parametrize(
    ("array", "pattern"),
    [
        (np.zeros((0, 12, 12), np.uint8), "empty"),
        (np.zeros((5, 20, 20), np.uint8), "12"),
        (np.full((5, 12, 12), 3.0, np.float32), "[0, 1]"),
    ],
)
def test_malformed_ood_npy_is_a_clear_error(array, pattern: str, tiny_suite: str, tmp_path, capsys) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    code = run(
        [
            "bench",
            "--suite",
            tiny_suite,
            "--detectors",
            "msp",
            "--ood-npy",
            f"bad={path}",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert_user_error(code, capsys, pattern, tmp_path / "o")


def test_refused_overwrite_leaves_previous_results_untouched(tiny_suite: str, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    assert run(["bench", "--suite", tiny_suite, "--detectors", "msp", "--out", str(out), "--quiet"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((0, 12, 12), np.uint8))
    args = ["bench", "--suite", tiny_suite, "--detectors", "energy", "--ood-npy", f"bad={bad}"]
    code = run([*args, "--out", str(out), "--overwrite", "--quiet"])
    assert_user_error(code, capsys, "empty")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_corrupt_checkpoint_is_a_one_line_error(tiny_suite: str, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    assert run(["bench", "--suite", tiny_suite, "--detectors", "msp", "--out", str(out), "--quiet"]) == 0
    for ckpt in (tmp_path / "cache" / "models").glob("*.safetensors"):
        ckpt.write_bytes(b"garbage")
    # A fresh results folder needs the model (the first one would reuse its finished cells).
    fresh = tmp_path / "o2"
    code = run(["bench", "--suite", tiny_suite, "--detectors", "msp", "--out", str(fresh), "--quiet"])
    assert_user_error(code, capsys, "corrupt or unreadable checkpoint", fresh)


@pytest.mark.parametrize("command", [[], ["bench"], ["list"], ["data"]])
def test_help_is_complete(command: list[str], capsys) -> None:
    assert run([*command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Usage:" in text
    if command == ["bench"]:
        for opt in (
            "--suite",
            "--detectors",
            "--seed",
            "--seeds",
            "--protocol",
            "--ood-npy",
            "--accept-rate",
            "--epochs",
            "--out",
        ):
            assert opt in text


def test_list_commands(capsys) -> None:
    assert run(["list", "detectors"]) == 0
    assert "msp" in capsys.readouterr().out
    assert run(["list", "suites"]) == 0
    assert "fmnist-vs-mnist" in capsys.readouterr().out
