"""`oodlab bench` with BIN, BINC, VIB and VIBY on the tiny suite; their bad input on the command line."""

from __future__ import annotations

import json

import pytest

from .test_cli import assert_user_error, run, tiny_suite  # noqa: F401  (tiny_suite is a fixture)


def test_bench_trains_one_network_per_method_and_one_for_both_viby_scores(
    tiny_suite: str,  # noqa: F811
    tmp_path,
    capsys,
) -> None:
    out = tmp_path / "out"
    dets = "msp,bin,binc,vib,viby-1,viby-2"
    assert (
        run(["bench", "--suite", tiny_suite, "--detectors", dets, "--out", str(out), "--quiet", "--no-plots"])
        == 0
    )
    err = capsys.readouterr().err
    # The base network (msp), bin, binc, vib, and one viby network for both scores.
    assert err.count("network trained") == 5
    rows = json.loads((out / "results.json").read_text())
    assert {r["detector"] for r in rows} == set(dets.split(","))
    viby = {
        r["detector"]: r["network"] for r in rows if r["detector"].startswith("viby") and r["ood"] == "dark"
    }
    assert viby["viby-1"]["checkpoints"] == viby["viby-2"]["checkpoints"]
    assert "viby(beta=0.01, z_dim=64)" in viby["viby-1"]["network"]
    for r in rows:
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["id_accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("detectors", "param", "pattern"),
    [
        ("vib", "vib.beta=-0.1", "beta (β, the weight of the KL term) must be a finite number >= 0"),
        ("viby-2", "viby-2.beta=-1", "beta (β, the weight of the KL term) must be a finite number >= 0"),
        ("bin", "bin.zeta=-0.05", "zeta (ζ, the weight of the other classes) must be a finite number >= 0"),
        ("binc", "binc.lam=-0.5", "lam (λ, the weight of MMCE) must be a finite number >= 0"),
        ("binc", "binc.z_dim=0", "z_dim (the latent dimension z) must be an integer >= 1"),
        ("vib", "vib.z_dim=0", "z_dim (the latent dimension z) must be an integer >= 1"),
        # Known only when the network is built for the suite's classes, still before anything is written.
        (
            "viby-1",
            "viby-1.priors=5",
            "priors (one Gaussian prior per class) must equal the number of classes, 3; got 5",
        ),
    ],
)
def test_bad_parameters_are_one_line_and_write_nothing(
    detectors: str,
    param: str,
    pattern: str,
    tiny_suite: str,  # noqa: F811
    tmp_path,
    capsys,
) -> None:
    out = tmp_path / "o"
    code = run(
        [
            "bench",
            "--suite",
            tiny_suite,
            "--detectors",
            detectors,
            "--param",
            param,
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert_user_error(code, capsys, pattern, out)
    assert not out.exists(), "nothing is written"
    assert not (tmp_path / "cache" / "models").exists(), "nothing is trained"
