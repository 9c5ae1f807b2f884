"""Results files and tables: ``results.json`` (rows), ``results.csv`` and ``results.md``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from oodlab.training.checkpoint import atomic_write_bytes

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


def markdown_report(rows: Sequence[dict[str, Any]], models: Sequence[dict[str, Any]] = ()) -> str:
    """The whole ``results.md``: per suite and seed, the model's accuracy, the table, the tuning."""
    acc = {(m["suite"], m["seed"]): m for m in models}
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
            line += f" ({recipe['model']}, {recipe['epochs']} epochs, checkpoint `{ckpt}`)"
        out += [line, "", suite_table(group)]
        tuning = _tuning_lines(group)
        if tuning:
            out += ["", "Tuned hyperparameters:", *tuning]
        out.append(f"\nThresholds for `ID acc.`/`OOD rej.` chosen on `{group[0]['threshold_on']}`.")
    return "\n".join(out) + "\n"


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
        "results.csv": csv_report(rows),
        "results.md": markdown_report(rows, models),
    }
    paths = []
    for name, text in files.items():
        path = out_dir / name
        atomic_write_bytes(path, text.encode())
        paths.append(path)
    return paths
