"""`oodlab report`: tables, plots and report.html rebuilt from saved cells, fast, without recomputing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from oodlab import features
from oodlab.bench.aggregate import aggregate, pm
from oodlab.bench.plots import roc_curve

from .test_bench_resume import comparable, run, tiny  # noqa: F401  (fixture)

REPORT_FILES = ("results.json", "results.csv", "results.md", "models.json", "summary.json", "report.html")


@pytest.fixture()
def finished_run(tiny: Path, tmp_path: Path) -> Path:  # noqa: F811
    out = tmp_path / "out"
    args = ["bench", "--suite", "tiny", "--seeds", "0,1", "--detectors", "msp,energy", "--out", str(out)]
    assert run([*args, "--quiet"]) == 0
    return out


def test_bench_writes_plots_report_and_mean_std(finished_run: Path) -> None:
    out = finished_run
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    for fig in ("roc", "hist", "auroc_heatmap"):
        for ext in ("png", "svg"):
            path = out / "plots" / "tiny" / f"{fig}.{ext}"
            assert path.stat().st_size > 1000, path
    assert (out / "plots" / "tiny" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 * 2 * 3 and {r["seed"] for r in rows} == {0, 1}  # raw numbers of every seed
    summary = json.loads((out / "summary.json").read_text())
    msp_dark = next(s for s in summary if s["detector"] == "msp" and s["ood"] == "dark")
    values = [r["auroc"] for r in rows if r["detector"] == "msp" and r["ood"] == "dark"]
    assert msp_dark["auroc"]["mean"] == pytest.approx(np.mean(values))
    assert msp_dark["auroc"]["std"] == pytest.approx(np.std(values, ddof=1))
    md = (out / "results.md").read_text()
    assert "## tiny: mean ± std over seeds 0, 1" in md and " ± " in md
    # Scores are saved per cell and load without pickle.
    npz = next((out / "cells").rglob("*.npz"))
    with np.load(npz, allow_pickle=False) as f:
        assert all(f[k].dtype == np.float64 and f[k].ndim == 1 for k in f.files)
    html = (out / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 3 and "<table" in html
    assert "ID test accuracy" in html and "Configuration" in html and "mean ± sample standard" in html


def test_report_rebuilds_everything_without_recomputing(finished_run: Path, capsys, monkeypatch) -> None:
    out = finished_run
    before = {n: (out / n).read_text() for n in ("results.json", "results.md", "results.csv", "summary.json")}
    cells = {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*")}
    for name in REPORT_FILES:
        (out / name).unlink()
    for p in (out / "plots").rglob("*.*"):
        p.unlink()
    capsys.readouterr()

    def no_forward(*args, **kwargs):
        raise AssertionError("oodlab report ran a forward pass")

    # No wall-clock bound (machines and their load differ): no model may run at all.
    monkeypatch.setattr(features, "extract", no_forward)
    assert run(["report", str(out)]) == 0
    captured = capsys.readouterr()
    assert "trained" not in captured.err and "loaded from cache" not in captured.err  # no model touched
    assert "AUROC" in captured.out
    for name, text in before.items():
        assert (out / name).read_text() == text, name
    assert len(list((out / "plots" / "tiny").glob("*.svg"))) == 3
    assert (out / "report.html").stat().st_size > 10_000
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").rglob("*")} == cells


def test_report_of_damaged_or_missing_results_is_a_clear_error(
    finished_run: Path, tmp_path: Path, capsys
) -> None:
    out = finished_run
    cell = sorted((out / "cells").rglob("*.json"))[1]
    cell.write_text(cell.read_text()[:30])
    capsys.readouterr()
    assert run(["report", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cell file {cell} is truncated or unreadable")
    cell.unlink()  # an unfinished cell: the report shows the finished ones and says so
    assert run(["report", str(out), "--no-plots"]) == 0
    assert "1 of 4 cells are not finished" in capsys.readouterr().err
    assert run(["report", str(tmp_path / "nowhere")]) == 1
    assert "no such results folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run(["report", str(tmp_path / "empty")]) == 1
    assert "run.json is missing" in capsys.readouterr().err


def test_roc_curve_and_aggregate_by_hand() -> None:
    fpr, tpr = roc_curve(np.array([3.0, 2.0, 1.0]), np.array([2.0, 0.0]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0])
    rows = [
        {"suite": "s", "protocol": "blind", "detector": "d", "ood": "o", "seed": i, "auroc": a}
        for i, a in enumerate([0.9, 0.8, 0.7])
    ]
    (agg,) = aggregate(rows)
    assert agg["auroc"]["mean"] == pytest.approx(0.8) and agg["auroc"]["std"] == pytest.approx(0.1)
    assert pm(agg["auroc"], 3) == "80.00 ± 10.00" and pm(agg["auroc"], 1) == "80.00"
