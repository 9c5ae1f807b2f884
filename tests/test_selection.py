"""Blind selection (`--detectors auto`): chosen on validation alone, reported beside the test-best."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from oodlab.bench import suites as suites_mod
from oodlab.bench.selection import select_by_validation, spearman
from oodlab.errors import OodlabError

from .test_bench_resume import TINY_SUITES, run, tiny  # noqa: F401  (the fixture, used by name)


def _row(detector: str, val: float, test: float, ood: str = "mnist", seed: int = 0) -> dict:
    return {
        "suite": "s",
        "seed": seed,
        "protocol": "blind",
        "detector": detector,
        "ood": ood,
        "val_auroc": val,
        "val_fpr95": 1 - val,
        "auroc": test,
        "fpr95": 1 - test,
    }


def test_selection_by_hand() -> None:
    rows = [_row("a", 0.90, 0.97), _row("b", 0.95, 0.93), _row("c", 0.80, 0.99), _row("d", 0.70, 0.60)]
    rows += [_row(r["detector"], r["val_auroc"], r["auroc"] - 0.01, ood="noise") for r in rows]
    (mnist, noise) = select_by_validation(rows)
    assert (mnist["chosen"], mnist["test_best"]) == ("b", "c")
    assert mnist["chosen_auroc"] == 0.93 and mnist["best_auroc"] == 0.99
    assert mnist["gap"] == pytest.approx(0.06) and noise["chosen"] == "b" and noise["ood"] == "noise"
    expected = spearmanr([0.90, 0.95, 0.80, 0.70], [0.97, 0.93, 0.99, 0.60]).statistic
    assert mnist["spearman"] == pytest.approx(expected) and mnist["n_detectors"] == 4
    # ties on validation AUROC: the lower validation FPR@95, then the name
    tied = [_row("x", 0.9, 0.5), {**_row("w", 0.9, 0.6), "val_fpr95": 0.05}]
    assert select_by_validation(tied)[0]["chosen"] == "w"
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3])) and spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)


def test_selection_without_validation_metrics_is_a_clear_error() -> None:
    rows = [_row("a", 0.9, 0.9), {**_row("b", 0.9, 0.9), "val_auroc": None}]
    with pytest.raises(OodlabError, match="validation metrics.*: b"):
        select_by_validation(rows)


@pytest.mark.usefixtures("tiny")
def test_detectors_auto_reports_the_choice_beside_the_test_best(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    args = ["bench", "--suite", "tiny", "--detectors", "auto", "--out", str(out), "--quiet", "--no-plots"]
    assert run(args) == 0
    rows = json.loads((out / "results.json").read_text())
    assert all(0 <= r["val_auroc"] <= 1 and 0 <= r["val_fpr95"] <= 1 for r in rows)
    assert len({r["detector"] for r in rows}) > 10  # every registered detector ran
    ens = [r for r in rows if r["detector"].endswith("-ensemble")]
    assert ens and all(set(r["members"]) >= {"penultimate"} for r in ens)
    picks = select_by_validation(rows)
    md = (out / "results.md").read_text()
    assert "## Blind selection" in md and f"| {picks[0]['chosen']} " in md
    assert "Spearman" in capsys.readouterr().out
    assert "Blind selection" in (out / "report.html").read_text()


@pytest.mark.usefixtures("tiny")
def test_detectors_auto_without_validation_data_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(
        suites_mod.SUITES,
        "tiny-noval",
        dataclasses.replace(TINY_SUITES["tiny"], name="tiny-noval", n_ood_val=0),
    )
    args = ["bench", "--suite", "tiny-noval", "--detectors", "auto", "--out", str(tmp_path / "o")]
    assert run(args) == 1
    err = capsys.readouterr().err
    assert "--detectors auto chooses a detector on validation data" in err and "tiny-noval" in err
