"""Results files and tables: ``results.json`` (rows), ``results.csv``, ``results.md``, ``summary.json``,
and the whole report of a results folder (:func:`write_report`: files, plots, ``report.html``)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from oodlab.bench.aggregate import AGG_METRICS, aggregate, pm
from oodlab.bench.cells import CellSpec, CellStore, read_manifest
from oodlab.data.corruptions import SEVERITIES
from oodlab.errors import OodlabError
from oodlab.io import atomic_write_bytes

#: Metric columns: (key in a row, column title). Every value is a fraction, shown in percent.
METRIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("auroc", "AUROC"),
    ("aupr_in", "AUPR-In"),
    ("aupr_out", "AUPR-Out"),
    ("fpr95", "FPR@95"),
    ("detection_error", "Det.err"),
    ("fpr80", "FPR@80"),
    ("id_accepted", "ID acc."),
    ("ood_rejected", "OOD rej."),
)
CSV_COLUMNS = (
    "suite",
    "seed",
    "protocol",
    "detector",
    "ood",
    *AGG_METRICS,
    "threshold",
    "n_id",
    "n_ood",
    "fit_seconds",
    "score_seconds",
    "tuning",
)


def suite_table(rows: Sequence[dict[str, Any]], fmt: str = "github") -> str:
    """One table: a row per (detector, OOD set), metrics in percent."""
    header = ["detector", "OOD", *(title for _, title in METRIC_COLUMNS)]
    body = [[r["detector"], r["ood"], *(100 * r[k] for k, _ in METRIC_COLUMNS)] for r in rows]
    return tabulate(body, headers=header, tablefmt=fmt, floatfmt=".2f")


def summary_table(agg: Sequence[dict[str, Any]], fmt: str = "github") -> str:
    """A row per (detector, OOD set) of aggregated rows: metrics in percent, mean ± std over seeds."""
    header = ["detector", "OOD", *(title for _, title in METRIC_COLUMNS)]
    body = [[a["detector"], a["ood"], *(pm(a.get(k), a["n_seeds"]) for k, _ in METRIC_COLUMNS)] for a in agg]
    return tabulate(body, headers=header, tablefmt=fmt, disable_numparse=True)


def corruption_grid(agg: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """``{detector: {corruption: {severity: AUROC stats}}}`` of the corruption OOD sets."""
    grid: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for a in agg:
        if "corruption" in a:
            grid.setdefault(a["detector"], {}).setdefault(a["corruption"], {})[int(a["severity"])] = a[
                "auroc"
            ]
    return grid


def corruption_rows(agg: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the AUROC (%) table per detector × corruption and severity (+ mean)."""
    n_seeds = max((a["n_seeds"] for a in agg), default=1)
    header = ["detector", "corruption", *(f"sev {s}" for s in SEVERITIES), "mean"]
    body = []
    for det, by_corruption in corruption_grid(agg).items():
        for corruption, by_sev in by_corruption.items():
            means = [v["mean"] for v in by_sev.values()]
            body.append(
                [
                    det,
                    corruption,
                    *(pm(by_sev.get(s), n_seeds) for s in SEVERITIES),
                    f"{100 * sum(means) / len(means):.2f}",
                ]
            )
    return header, body


def corruption_table(agg: Sequence[dict[str, Any]], fmt: str = "github") -> str:
    """AUROC (%) per detector × corruption (rows) and severity (columns), plus the mean over severities."""
    header, body = corruption_rows(agg)
    return tabulate(body, headers=header, tablefmt=fmt, disable_numparse=True)


def selecting(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether the run asked for blind selection (``oodlab bench --detectors auto``)."""
    return bool(rows) and bool((rows[0].get("config") or {}).get("select"))


def selection_table(rows: Sequence[dict[str, Any]], fmt: str = "github") -> str:
    """The blind-selection table (:func:`oodlab.bench.selection.select_by_validation`) and a summary line."""
    from oodlab.bench.selection import select_by_validation, selection_rows

    header, body = selection_rows(rows)
    picks = [s for s in select_by_validation(rows) if "corruption" not in s]
    within = sum(s["gap"] <= 0.003 for s in picks)
    rho = [s["spearman"] for s in picks if s["spearman"] == s["spearman"]]
    note = (
        f"Chosen within 0.3 AUROC points of the test-best in {within} of {len(picks)} cases; "
        f"Spearman (validation vs test AUROC over detectors) mean "
        + (f"{sum(rho) / len(rho):.2f}" if rho else "–")
        + "."
    )
    return tabulate(body, headers=header, tablefmt=fmt, disable_numparse=True) + "\n\n" + note


SELECTION_NOTE = (
    "Blind selection (`--detectors auto`): per suite and seed, the detector with the highest AUROC of "
    "ID validation against the near-OOD kinds of the synthetic OOD validation set (patch-shuffled "
    "images and class chimeras; never an OOD test set), its test figures, and the detector best on "
    "the test set."
)


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["suite"], r["seed"], r["protocol"]), []).append(r)
    return groups


def _tuning_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[tuple[str, str], str] = {}
    for r in rows:
        tuning = r.get("tuning") or {}
        if tuning:
            chosen = ", ".join(f"{k}={v}" for k, v in tuning.get("chosen", {}).items())
            key = (r["detector"], json.dumps(tuning, sort_keys=True))
            seen.setdefault(
                key,
                f"- `{r['detector']}`: {chosen} — tuned on ID `{tuning.get('id_val')}` "
                f"vs OOD `{tuning.get('ood_val')}`",
            )
    return list(seen.values())


def base_models(models: Sequence[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """One model summary per (suite, seed): the suite's own network where it was run, else the first."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for m in models:
        key = (m["suite"], m["seed"])
        if key not in out or ("network" in out[key] and "network" not in m):
            out[key] = m
    return out


def _network_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per method that trains its network: how it was made, its accuracy and cost."""
    seen: dict[str, str] = {}
    for r in rows:
        net = r.get("network")
        if net and r["detector"] not in seen:
            aux = net.get("aux") or {}
            seen[r["detector"]] = (
                f"- `{r['detector']}`: {net['network']}; ID test accuracy {100 * r['id_accuracy']:.2f}%, "
                f"training {net['train_seconds']:.0f} s"
                + (f", auxiliary outliers `{aux['name']}` ({aux['n']} images)" if aux else "")
            )
    return list(seen.values())


def markdown_report(rows: Sequence[dict[str, Any]], models: Sequence[dict[str, Any]] = ()) -> str:
    """The whole ``results.md``: per suite and seed, the model's accuracy, the table, the tuning."""
    acc = base_models(models)
    out = ["# oodlab benchmark results", ""]
    out.append(
        "All numbers in percent. ID is the positive class; FPR@95 is the share of OOD accepted at the "
        "threshold that accepts 95% of ID test images; `ID acc.` / `OOD rej.` are measured at the "
        "threshold that accepts the chosen share of ID *validation* images."
    )
    for (suite, seed, protocol), group in _groups(rows).items():
        out += ["", f"## {suite} (seed {seed}, protocol {protocol})", ""]
        m = acc.get((suite, seed))
        id_acc = group[0]["id_accuracy"]
        line = f"Model ID test accuracy: {100 * id_acc:.2f}%"
        if m:
            recipe, ckpt = m["recipe"], Path(m["checkpoint"]).name
            if "id_val_accuracy" in m:
                line += f", validation {100 * m['id_val_accuracy']:.2f}%"
            line += f" ({recipe['model']}, {recipe['epochs']} epochs, checkpoint `{ckpt}`)"
        out += [line, "", suite_table(group)]
        networks = _network_lines(group)
        if networks:
            out += ["", "Networks of the methods that train (ID accuracy in the table is each one's own):"]
            out += networks
        tuning = _tuning_lines(group)
        if tuning:
            out += ["", "Tuned hyperparameters:", *tuning]
        out.append(f"\nThresholds for `ID acc.`/`OOD rej.` chosen on `{group[0]['threshold_on']}`.")
    for suite, agg in _by_suite(aggregate(rows)).items():
        seeds = agg[0]["seeds"]
        if len(seeds) > 1:
            out += ["", f"## {suite}: mean ± std over seeds {', '.join(map(str, seeds))}", ""]
            out.append("Sample standard deviation (ddof=1) over the seeds; each seed retrains the model.")
            out += ["", summary_table(agg)]
        if any("corruption" in a for a in agg):
            out += ["", f"## {suite}: AUROC (%) per corruption and severity", "", corruption_table(agg)]
    if selecting(rows):
        out += ["", "## Blind selection", "", SELECTION_NOTE, "", selection_table(rows)]
    return "\n".join(out) + "\n"


def _by_suite(agg: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for a in agg:
        out.setdefault(a["suite"], []).append(a)
    return out


def console_report(rows: Sequence[dict[str, Any]], models: Sequence[dict[str, Any]]) -> str:
    """What ``oodlab bench`` prints: a table per suite and seed (or the corruption grid), and the
    mean ± std table of every suite run with several seeds."""
    out = []
    for m in base_models(models).values():
        group = [r for r in rows if r["suite"] == m["suite"] and r["seed"] == m["seed"]]
        if not group:
            continue
        out.append(
            f"\n{m['suite']} (seed {m['seed']}, protocol {group[0]['protocol']}) — ID accuracy "
            f"{100 * m['id_accuracy']:.2f}%, metrics in %"
        )
        agg_one = aggregate(group)
        if any("corruption" in a for a in agg_one):
            plain = [r for r in group if "corruption" not in r]
            if plain:
                out.append(suite_table(plain, fmt="simple"))
            out.append("AUROC per corruption × severity:")
            out.append(corruption_table(agg_one, fmt="simple"))
        else:
            out.append(suite_table(group, fmt="simple"))
    for suite, agg in _by_suite(aggregate(rows)).items():
        seeds = agg[0]["seeds"]
        if len(seeds) <= 1:
            continue
        out.append(f"\n{suite}: mean ± std over seeds {', '.join(map(str, seeds))}, metrics in %")
        if any("corruption" in a for a in agg):
            plain = [a for a in agg if "corruption" not in a]
            if plain:
                out.append(summary_table(plain, fmt="simple"))
            out.append(corruption_table(agg, fmt="simple"))
        else:
            out.append(summary_table(agg, fmt="simple"))
    if selecting(rows):
        out += ["", SELECTION_NOTE, selection_table(rows, fmt="simple")]
    return "\n".join(out)


def csv_report(rows: Sequence[dict[str, Any]]) -> str:
    """``results.csv``: one line per row, the metric columns and the tuning as JSON."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "tuning": json.dumps(r.get("tuning") or {}, sort_keys=True)})
    return buf.getvalue()


def write_results(
    out_dir: Path, rows: Sequence[dict[str, Any]], models: Sequence[dict[str, Any]] = ()
) -> list[Path]:
    """Write ``results.json``, ``results.csv``, ``results.md`` and ``models.json`` atomically."""
    files = {
        "results.json": json.dumps(list(rows), indent=1, sort_keys=False),
        "models.json": json.dumps(list(models), indent=1),
        "summary.json": json.dumps(aggregate(rows), indent=1),
        "results.csv": csv_report(rows),
        "results.md": markdown_report(rows, models),
    }
    paths = []
    for name, text in files.items():
        path = out_dir / name
        atomic_write_bytes(path, text.encode())
        paths.append(path)
    return paths


def load_run(
    out_dir: Path, *, log: Callable[[str], None] = print
) -> tuple[dict[str, Any], list[tuple[CellSpec, dict[str, Any]]]]:
    """The manifest and the finished cells of a results folder (a clear error for damaged files)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise OodlabError(f"no such results folder: {out_dir}")
    manifest = read_manifest(out_dir)
    store = CellStore(out_dir)
    specs = [CellSpec.from_dict(c) for c in manifest["cells"]]
    cells = [(s, store.load(s)) for s in specs if store.exists(s)]
    if not cells:
        raise OodlabError(f"{out_dir} holds no finished cells yet; run `oodlab bench` with --out {out_dir}")
    if len(cells) < len(specs):
        log(
            f"warning: {len(specs) - len(cells)} of {len(specs)} cells are not finished (interrupted run?); "
            "the report shows the finished ones — rerun `oodlab bench` with the same arguments to finish"
        )
    return manifest, cells


def write_report(out_dir: Path, *, plots: bool = True, log: Callable[[str], None] = print) -> list[Path]:
    """Rebuild every report file of a results folder from its saved cells, without recomputing.

    Writes ``results.json``/``.csv``/``.md``, ``models.json``, ``summary.json``, the plots
    (``plots/<suite>/*.png`` and ``.svg``) and ``report.html``.
    """
    from oodlab.bench.html import render_html
    from oodlab.bench.runner import assemble

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    manifest, cells = load_run(out_dir, log=log)
    rows, models = assemble([doc for _, doc in cells], manifest)
    paths = write_results(out_dir, rows, models)
    figures: dict[str, list[dict[str, Any]]] = {}
    if plots:
        from oodlab.bench.plots import suite_figures

        store = CellStore(out_dir)
        agg = aggregate(rows)
        for suite, suite_agg in _by_suite(agg).items():
            suite_cells = [(s, d) for s, d in cells if s.suite == suite]
            first_seed = suite_cells[0][0].seed
            scores = {s.detector: store.load_scores(s, d) for s, d in suite_cells if s.seed == first_seed}
            pictures = {s.detector: store.load_extras(s, d) for s, d in suite_cells if s.seed == first_seed}
            figures[suite] = suite_figures(
                suite,
                scores,
                suite_agg,
                out_dir / "plots" / suite,
                seed=first_seed,
                illustrations={k: v for k, v in pictures.items() if v},
            )
            paths += [Path(f[k]) for f in figures[suite] for k in ("png", "svg")]
    html = render_html(manifest, rows, models, figures)
    atomic_write_bytes(out_dir / "report.html", html.encode())
    paths.append(out_dir / "report.html")
    log(f"report of {len(cells)} cells rebuilt in {time.perf_counter() - t0:.1f} s")
    return paths
