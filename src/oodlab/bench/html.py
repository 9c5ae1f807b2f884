"""``report.html``: one self-contained page (no server, no network; images inlined as base64 PNG)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from oodlab.bench.aggregate import aggregate, pm
from oodlab.bench.report import (
    METRIC_COLUMNS,
    SELECTION_NOTE,
    _by_suite,
    _tuning_lines,
    corruption_rows,
    selecting,
)
from oodlab.bench.selection import selection_rows

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; } td:first-child, td:nth-child(2) { text-align: left; }
table.config td { text-align: left; font-family: monospace; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 12px; }
.note { color: #555; }
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _table(header: Sequence[str], body: Sequence[Sequence[Any]], cls: str = "results") -> str:
    """An HTML table of plain-text cells: tabulate's ``html`` format escapes them (never pre-escape)."""
    text = tabulate(body, headers=list(header), tablefmt="html", disable_numparse=True)
    return text.replace("<table>", f'<table class="{cls}">', 1)


def _plain(value: Any) -> str:
    """A setting as a person reads it: lists as ``a, b``, mappings as ``key: value; …``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value) or "none"
    if value is None:
        return "none"
    return json.dumps(value)


def _config_table(manifest: dict[str, Any]) -> str:
    cfg = {**manifest["config"], "environment": manifest.get("environment", {})}
    body = [[k, _plain(v)] for k, v in cfg.items()]
    body.append(["config hash", manifest.get("config_hash", "")])
    return _table(["setting", "value"], body, cls="config")


def _models_table(models: Sequence[dict[str, Any]]) -> str:
    body = [
        [
            m["suite"],
            m["seed"],
            # A method that trains names its network (objective, auxiliary set, members).
            m.get("network", {}).get("network", m["recipe"]["model"]),
            m["recipe"]["epochs"],
            f"{100 * m['id_accuracy']:.2f}",
            # Runs saved before validation accuracy was recorded have none.
            f"{100 * m['id_val_accuracy']:.2f}" if "id_val_accuracy" in m else "",
            Path(m["checkpoint"]).name,
        ]
        for m in models
    ]
    headers = ["suite", "seed", "model", "epochs", "ID test accuracy (%)", "ID validation accuracy (%)"]
    return _table([*headers, "checkpoint"], body)


def _summary_table(agg: Sequence[dict[str, Any]]) -> str:
    header = ["detector", "OOD", *(title for _, title in METRIC_COLUMNS)]
    body = [[a["detector"], a["ood"], *(pm(a.get(k), a["n_seeds"]) for k, _ in METRIC_COLUMNS)] for a in agg]
    return _table(header, body)


def _corruption_table(agg: Sequence[dict[str, Any]]) -> str:
    header, body = corruption_rows(agg)
    return _table(header, body)


def _figure(fig: dict[str, str], suite: str) -> str:
    data = base64.b64encode(Path(fig["png"]).read_bytes()).decode("ascii")
    svg = f"plots/{suite}/{Path(fig['svg']).name}"
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(fig["title"])}" '
        f'data-figure="{_esc(fig["name"])}">'
        f"<figcaption>{_esc(fig['title'])} (vector version: {_esc(svg)})</figcaption></figure>"
    )


def render_html(
    manifest: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    models: Sequence[dict[str, Any]],
    figures: dict[str, list[dict[str, str]]],
) -> str:
    """The whole page: configuration, model accuracy, per-suite tables (mean ± std) and plots."""
    cfg = manifest["config"]
    seeds = cfg.get("seeds", [])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>oodlab benchmark report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>oodlab benchmark report</h1>",
        '<p class="note">All numbers in percent. ID is the positive class. FPR@95 is the share of OOD '
        "accepted at the threshold that accepts 95% of ID test images; <i>ID acc.</i> / <i>OOD rej.</i> "
        "are measured at the threshold that accepts the chosen share of ID <i>validation</i> images. "
        + (
            f"With several seeds, a cell shows mean ± sample standard deviation (ddof=1) over seeds "
            f"{', '.join(map(str, seeds))}; each seed retrains the model and refits the detectors."
            if len(seeds) > 1
            else ""
        )
        + f" Protocol: <b>{_esc(cfg.get('protocol'))}</b>.</p>",
        "<h2>Configuration</h2>",
        _config_table(manifest),
        "<h2>Models</h2>",
        _models_table(models),
    ]
    for suite, agg in _by_suite(aggregate(rows)).items():
        parts.append(f'<h2 id="suite-{_esc(suite)}">{_esc(suite)}</h2>')
        corrupted = [a for a in agg if "corruption" in a]
        plain = [a for a in agg if "corruption" not in a]
        n = agg[0]["n_seeds"]
        what = f"mean ± std over {n} seeds" if n > 1 else f"seed {agg[0]['seeds'][0]}"
        if plain:
            parts += [f"<h3>Results ({what})</h3>", _summary_table(plain)]
        if corrupted:
            parts += [f"<h3>AUROC per corruption × severity ({what})</h3>", _corruption_table(corrupted)]
            parts += [
                "<details><summary>All metrics of every corruption set</summary>",
                _summary_table(corrupted),
                "</details>",
            ]
        tuning = _tuning_lines([r for r in rows if r["suite"] == suite])
        if tuning:
            items = "".join(f"<li>{_esc(t[2:].replace('`', ''))}</li>" for t in tuning)
            parts.append(f"<h3>Tuned hyperparameters</h3><ul>{items}</ul>")
        for fig in figures.get(suite, []):
            parts.append(_figure(fig, suite))
    if selecting(rows):
        header, body = selection_rows(rows)
        parts += [
            '<h2 id="selection">Blind selection</h2>',
            f'<p class="note">{_esc(SELECTION_NOTE.replace("`", ""))}</p>',
            _table(header, [[_esc(c) for c in row] for row in body]),
        ]
    parts.append(f'<p class="note">oodlab {_esc(manifest.get("oodlab", ""))}.</p></body></html>')
    return "\n".join(parts) + "\n"
