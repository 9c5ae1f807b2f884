"""The repository explains itself: no reference to design pages outside it, and every docs/
page the code cites exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p
    for d in ("src", "tests", "benchmarks", "scripts")
    for p in (ROOT / d).rglob("*")
    if p.suffix in (".py", ".sh")
)
OUTSIDE = re.compile(r"\b(METHODS|DESIGN|STYLE)\.md\b|\.\./shared\b")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(path: Path) -> None:
    if path == Path(__file__).resolve():
        return
    for n, line in enumerate(path.read_text().splitlines(), 1):
        assert not OUTSIDE.search(line), f"{path.relative_to(ROOT)}:{n} cites a page outside the repo: {line}"


def test_cited_docs_pages_exist() -> None:
    cited = {m for p in SOURCES for m in re.findall(r"docs/[\w./-]+\.md", p.read_text())}
    cited |= set(re.findall(r"docs/[\w./-]+\.md", (ROOT / "README.md").read_text()))
    assert cited, "nothing cites docs/"
    for page in cited:
        assert (ROOT / page).is_file(), f"{page} is cited but missing"
