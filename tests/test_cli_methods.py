"""`oodlab bench` with methods that train their network, on the tiny suite; their bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from oodlab.bench import suites as suites_mod

from .test_cli import assert_user_error, run, tiny_suite  # noqa: F401  (tiny_suite is a fixture)

QUICK = ["--param", "outlier-exposure.n_aux=300", "--param", "deep-ensemble.members=2"]


def test_bench_trains_each_network_once_and_resumes(tiny_suite: str, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "out"
    args = ["bench", "--suite", tiny_suite, "--detectors", "msp,outlier-exposure,deep-ensemble", *QUICK]
    assert run([*args, "--out", str(out), "--quiet", "--no-plots"]) == 0
    err = capsys.readouterr().err
    # Three networks: the base (msp), the fine-tuned one, the ensemble, whose member 0 is the base.
    assert err.count("network trained") == 3 and err.count("member 2/2 trained") == 1
    assert err.count("member 1/2 loaded from cache") == 1
    rows = json.loads((out / "results.json").read_text())
    oe = [r for r in rows if r["detector"] == "outlier-exposure"]
    assert oe and all(r["network"]["aux"]["name"] == "aux-id-synthetic" for r in oe)
    assert "outlier-exposure(lam=0.5)" in oe[0]["network"]["network"]
    md = (out / "results.md").read_text()
    assert "Networks of the methods that train" in md and "auxiliary outliers `aux-id-synthetic`" in md
    assert "2 members, mean softmax" in md
    # Rerun: every cell reused, nothing trained.
    assert run([*args, "--out", str(out), "--quiet", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert err.count("reused finished cell") == 3 and "trained" not in err
    # Another method parameter is another cell; the others are reused.
    other = [a if a != "deep-ensemble.members=2" else "deep-ensemble.members=3" for a in args]
    assert run([*other, "--out", str(tmp_path / "o3"), "--quiet", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "member 3/3 trained" in err and "member 2/3 loaded from cache" in err


def test_mc_dropout_on_a_network_with_dropout(tiny_suite: str, tmp_path, monkeypatch) -> None:  # noqa: F811
    suite = suites_mod.SUITES[tiny_suite]
    kwargs = {**suite.train.model_kwargs, "dropout": 0.3}
    monkeypatch.setitem(
        suites_mod.SUITES, tiny_suite, replace(suite, train=replace(suite.train, model_kwargs=kwargs))
    )
    out = tmp_path / "mc"
    args = ["bench", "--suite", tiny_suite, "--detectors", "mc-dropout", "--param", "mc-dropout.passes=8"]
    assert run([*args, "--out", str(out), "--quiet", "--no-plots"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert rows[0]["params"] == {"passes": 8, "p": None, "seed": 0}
    assert run([*args, "--out", str(tmp_path / "mc2"), "--quiet", "--no-plots"]) == 0
    again = json.loads((tmp_path / "mc2" / "results.json").read_text())
    assert [r["auroc"] for r in again] == [r["auroc"] for r in rows]


@pytest.mark.parametrize(
    ("detectors", "params", "pattern"),
    [
        ("deep-ensemble", ["deep-ensemble.members=1"], "members must be an integer >= 2"),
        ("mc-dropout", ["mc-dropout.passes=0"], "passes (T) must be an integer >= 1"),
        ("mc-dropout", ["mc-dropout.p=1.5"], "dropout rate p must be in (0, 1)"),
        ("mc-dropout", [], "needs a network with dropout, but recipe model 'mlp' has no dropout layer"),
        ("outlier-exposure", ["outlier-exposure.lam=-1"], "lam must be a finite number >= 0"),
        (
            "energy-finetune",
            ["energy-finetune.m_in=-1", "energy-finetune.m_out=-5"],
            "m_in must be below m_out",
        ),
        ("outlier-exposure", ["outlier-exposure.aux=mnist"], "unknown auxiliary set 'mnist' (parameter aux)"),
        ("msp", ["deep-ensemble.members=3"], "not in --detectors"),
        ("msp", ["members=3"], "--param takes DETECTOR.PARAM=VALUE"),
    ],
)
def test_bad_method_input_is_one_line_and_writes_nothing(
    detectors: str,
    params: list[str],
    pattern: str,
    tiny_suite: str,  # noqa: F811
    tmp_path,
    capsys,
) -> None:
    out = tmp_path / "o"
    flags = [f for p in params for f in ("--param", p)]
    code = run(
        ["bench", "--suite", tiny_suite, "--detectors", detectors, *flags, "--out", str(out), "--quiet"]
    )
    assert code == 1
    assert_user_error(code, capsys, pattern, out)
    assert not out.exists(), "nothing is written"
    assert not (tmp_path / "cache" / "models").exists(), "nothing is trained"


def test_list_aux_and_methods(capsys) -> None:
    assert run(["list", "aux"]) == 0
    text = capsys.readouterr().out
    assert "id-synthetic" in text and "edges" in text and "mnist" not in text.lower()
    assert run(["list", "detectors"]) == 0
    text = capsys.readouterr().out
    assert "outlier-exposure" in text and "[shared pass, trains its network]" in text
    assert "mc-dropout" in text and "[stochastic]" in text and "odin" in text and "[input gradient]" in text
    assert run(["list", "objectives"]) == 0
    assert "energy-margin" in capsys.readouterr().out
