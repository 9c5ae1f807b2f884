"""report.html renders in headless Chromium: its tables and every image are present and visible.

Needs Debian's ``chromium`` (``make test`` installs it through scripts/install_chromium.sh); the
test skips, saying so, where it is absent.
"""

from __future__ import annotations

import html as htmllib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .test_bench_resume import run, tiny  # noqa: F401  (fixture)

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

# Runs after every image has loaded: writes what the browser laid out into the DOM, which
# --dump-dom then prints.
PROBE = """
<script>
window.addEventListener("load", () => {
  const seen = (el) => {
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return [Math.round(r.width), Math.round(r.height), s.display !== "none" && s.visibility !== "hidden"];
  };
  document.querySelectorAll("img").forEach((img) => {
    const [w, h, vis] = seen(img);
    const natural = `${img.naturalWidth}x${img.naturalHeight}`;
    const box = `${w}x${h}`;
    img.setAttribute("data-probe", `complete=${img.complete} natural=${natural} box=${box} visible=${vis}`);
  });
  document.querySelectorAll("table").forEach((t) => {
    if (t.closest("details:not([open])")) return;  // collapsed on purpose (every metric of 45 sets)
    const [w, h, vis] = seen(t);
    t.setAttribute("data-probe", `rows=${t.rows.length} box=${w}x${h} visible=${vis}`);
  });
  // What a person reads: the rendered text of the configuration table, one row per line.
  const config = document.querySelector("table.config");
  const pre = document.createElement("pre");
  pre.id = "config-seen";
  pre.textContent = config ? config.innerText : "";
  document.body.appendChild(pre);
  document.body.setAttribute("data-probed", "yes");
});
</script>
"""


def render_dom(page: Path) -> str:
    """The DOM of ``page`` after load in headless Chromium (no network, throwaway profile)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--window-size=1280,2000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (make test installs it: apt-get install chromium)"
)
def test_report_html_renders_tables_and_images_in_chromium(tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    args = ["bench", "--suite", "tiny,tiny-corruptions", "--seeds", "0,1", "--detectors", "msp,energy"]
    assert run([*args, "--out", str(out), "--quiet"]) == 0
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    n_images = html.count("<img ")
    assert n_images == 3 + 4  # tiny: roc, hist, heatmap; tiny-corruptions: + corruption heatmap
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    dom = render_dom(probed)
    assert 'data-probed="yes"' in dom, dom[-2000:]
    images = re.findall(r'<img [^>]*data-probe="([^"]+)"', dom)
    assert len(images) == n_images
    for probe in images:
        m = re.fullmatch(r"complete=true natural=(\d+)x(\d+) box=(\d+)x(\d+) visible=true", probe)
        assert m, probe
        assert all(int(v) > 50 for v in m.groups()), probe
    tables = re.findall(r'<table [^>]*data-probe="([^"]+)"', dom)
    assert len(tables) >= 4  # configuration, models, tiny's results, the corruption table
    for probe in tables:
        m = re.fullmatch(r"rows=(\d+) box=(\d+)x(\d+) visible=true", probe)
        assert m and int(m.group(1)) >= 2 and int(m.group(2)) > 100 and int(m.group(3)) > 20, probe
    assert "ID test accuracy" in dom and "AUROC per corruption × severity" in dom
    # The configuration reads as plain text: no escaped quotes, no JSON brackets (issue 14).
    seen = htmllib.unescape(re.search(r'<pre id="config-seen">(.*?)</pre>', dom, re.S).group(1))
    rows = dict(line.split("\t", 1) for line in seen.splitlines() if "\t" in line)
    assert rows["suites"] == "tiny, tiny-corruptions", seen
    assert rows["detectors"] == "msp, energy", seen
    assert rows["seeds"] == "0, 1", seen
    assert "&quot;" not in seen and '["' not in seen and "{" not in seen, seen
