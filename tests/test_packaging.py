"""The installed package states ranges; the exact tested set lives in constraints.txt."""

from __future__ import annotations

from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def test_install_requirements_are_ranges_not_pins() -> None:
    reqs = [Requirement(r) for r in requires("oodlab") or []]
    assert any(r.name == "torch" for r in reqs)
    for r in reqs:
        for spec in r.specifier:
            assert spec.operator not in ("==", "==="), f"{r} pins an exact version; state a range"
        if r.name == "torch":
            assert r.specifier, "torch needs a lower bound"


def test_constraints_pin_every_requirement_exactly() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower()] = str(req.specifier)
    assert pins["torch"] == "==2.13.0"  # the CPU build; a newer one pulls CUDA wheels
    for r in (Requirement(r) for r in requires("oodlab") or []):
        assert r.name.lower() in pins, f"{r.name} is not pinned in constraints.txt"
        assert pins[r.name.lower()].startswith("=="), r.name
