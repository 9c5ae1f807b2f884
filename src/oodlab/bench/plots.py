"""Plots of a suite's results, from saved scores (matplotlib, no display needed; PNG and SVG).

- ``roc``: ROC curves (ID positive) of every detector on up to four OOD sets;
- ``hist``: score histograms, ID test vs one OOD set, one panel per detector;
- ``auroc_heatmap``: AUROC of detector × OOD set (mean over seeds);
- ``corruption_heatmap``: AUROC of corruption × severity, one panel per detector (corruption suites);
- ``<detector>-reconstructions``: inputs and their reconstructions at levels 1-5 (HSCAE), from the
  arrays a detector's illustration saved with its cell.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot, no global state).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from oodlab.data.corruptions import SEVERITIES
from oodlab.io import atomic_write_bytes

Scores = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # {detector: {ood: (id, ood)}}

_RC = {"svg.hashsalt": "oodlab", "font.size": 9, "axes.titlesize": 9, "svg.fonttype": "none"}


def _save(fig: Figure, stem: Path) -> dict[str, str]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        meta = {"Date": None} if fmt == "svg" else {}
        fig.savefig(buf, format=fmt, dpi=90, metadata=meta)
        path = stem.with_suffix(f".{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        out[fmt] = str(path)
    return out


def roc_curve(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) with ID positive, one point per distinct threshold, from (0, 0) to (1, 1)."""
    scores = np.concatenate([id_scores, ood_scores])
    is_id = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], is_id[order]
    last = np.append(np.flatnonzero(s[1:] != s[:-1]), len(s) - 1)
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    tpr = np.concatenate([[0.0], tps / max(len(id_scores), 1)])
    fpr = np.concatenate([[0.0], fps / max(len(ood_scores), 1)])
    if len(fpr) > 2000:  # keep SVGs small: thin the curve, keeping both ends
        keep = np.unique(np.linspace(0, len(fpr) - 1, 2000).astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return fpr, tpr


def pick_ood_sets(oods: Sequence[str], agg: Sequence[dict[str, Any]], k: int = 4) -> list[str]:
    """OOD sets shown in ROC plots: for corruption suites severity 3 of the first corruptions and any
    other set, else the first ``k`` sets."""
    corrupted = {a["ood"] for a in agg if "corruption" in a}
    plain = [o for o in oods if o not in corrupted]
    mid = [o for o in oods if o in corrupted and o.endswith("-3")]
    return (plain + mid)[:k] if corrupted else list(oods)[:k]


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def roc_figure(scores: Scores, oods: Sequence[str], title: str) -> Figure:
    rows, cols = _grid(len(oods))
    fig = Figure(figsize=(3.4 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, ood in zip(axes.flat, oods, strict=False):
        for det, per_ood in scores.items():
            if ood in per_ood:
                fpr, tpr = roc_curve(*per_ood[ood])
                ax.plot(fpr, tpr, lw=1.2, label=det)
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        ax.axhline(0.95, ls="--", c="grey", lw=0.6)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="FPR (OOD accepted)", ylabel="TPR (ID accepted)")
        ax.set_title(f"ID vs {ood}")
    for ax in axes.flat[len(oods) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return fig


def hist_figure(scores: Scores, ood: str, title: str) -> Figure:
    dets = [d for d in scores if ood in scores[d]]
    rows, cols = _grid(len(dets))
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, det in zip(axes.flat, dets, strict=False):
        id_s, ood_s = scores[det][ood]
        both = np.concatenate([id_s, ood_s])
        lo, hi = np.percentile(both, [0.5, 99.5])
        if not hi > lo:
            lo, hi = float(both.min()) - 0.5, float(both.max()) + 0.5
        bins = np.linspace(lo, hi, 41)
        ax.hist(np.clip(id_s, lo, hi), bins=bins, density=True, alpha=0.55, label="ID test", color="C0")
        ax.hist(np.clip(ood_s, lo, hi), bins=bins, density=True, alpha=0.55, label=ood, color="C3")
        ax.set_title(det)
        ax.set_xlabel("score (higher = more ID)")
        ax.set_yticks([])
    for ax in axes.flat[len(dets) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def _heat(ax: Any, values: np.ndarray, xlabels: Sequence[str], ylabels: Sequence[str], annotate: bool) -> Any:
    im = ax.imshow(values, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(xlabels)), labels=xlabels, rotation=60 if len(xlabels) > 6 else 0, ha="right")
    ax.set_yticks(range(len(ylabels)), labels=ylabels)
    if annotate:
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(
                    j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=7, c="w" if v < 0.8 else "k"
                )
    return im


def auroc_heatmap(agg: Sequence[dict[str, Any]], title: str) -> Figure:
    dets = list(dict.fromkeys(a["detector"] for a in agg))
    oods = list(dict.fromkeys(a["ood"] for a in agg))
    values = np.full((len(dets), len(oods)), np.nan)
    for a in agg:
        values[dets.index(a["detector"]), oods.index(a["ood"])] = a["auroc"]["mean"]
    fig = Figure(
        figsize=(max(4.0, 0.55 * len(oods) + 2.5), max(2.2, 0.4 * len(dets) + 1.4)), layout="constrained"
    )
    ax = fig.subplots()
    im = _heat(ax, values, oods, dets, annotate=len(oods) * len(dets) <= 150)
    fig.colorbar(im, ax=ax, label="AUROC")
    ax.set_title(title)
    return fig


def corruption_heatmap(agg: Sequence[dict[str, Any]], title: str) -> Figure:
    dets = list(dict.fromkeys(a["detector"] for a in agg if "corruption" in a))
    corruptions = list(dict.fromkeys(a["corruption"] for a in agg if "corruption" in a))
    rows, cols = _grid(len(dets), 3)
    fig = Figure(figsize=(3.6 * cols, 0.32 * len(corruptions) * rows + 1.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for ax, det in zip(axes.flat, dets, strict=False):
        values = np.full((len(corruptions), len(SEVERITIES)), np.nan)
        for a in agg:
            if a["detector"] == det and "corruption" in a:
                values[corruptions.index(a["corruption"]), SEVERITIES.index(int(a["severity"]))] = a["auroc"][
                    "mean"
                ]
        im = _heat(ax, values, [str(s) for s in SEVERITIES], corruptions, annotate=True)
        ax.set_title(det)
        ax.set_xlabel("severity")
    for ax in axes.flat[len(dets) :]:
        ax.set_visible(False)
    if im is not None:
        fig.colorbar(im, ax=axes, label="AUROC", shrink=0.8)
    fig.suptitle(title)
    return fig


def reconstruction_figure(grid: np.ndarray, labels: Sequence[str], title: str) -> Figure:
    """Inputs (first column) and reconstructions at levels 1… (next columns), one block per set.

    ``grid``: uint8 ``(sets, n, 1 + levels, C, H, W)``; ``labels`` names each set.
    """
    sets, n, cols = grid.shape[:3]
    fig = Figure(figsize=(0.75 * cols * sets + 0.4, 0.75 * n + 0.6), layout="constrained")
    axes = fig.subplots(n, cols * sets, squeeze=False)
    for b in range(sets):
        for i in range(n):
            for j in range(cols):
                ax = axes[i, b * cols + j]
                img = grid[b, i, j].transpose(1, 2, 0)
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{labels[b]}\ninput" if j == 0 else f"level {j}", fontsize=7)
    fig.suptitle(title)
    return fig


def suite_figures(
    suite: str,
    scores: Scores,
    agg: Sequence[dict[str, Any]],
    folder: Path,
    *,
    seed: int,
    illustrations: dict[str, dict[str, np.ndarray]] | None = None,
) -> list[dict[str, str]]:
    """Draw and save every figure of one suite; return ``[{"name", "title", "png", "svg"}]``."""
    n_seeds = max((a["n_seeds"] for a in agg), default=1)
    oods = list(dict.fromkeys(a["ood"] for a in agg))
    shown = pick_ood_sets(oods, agg)
    seeds_note = f"mean of {n_seeds} seeds" if n_seeds > 1 else f"seed {seed}"
    specs: list[tuple[str, str, Any]] = []
    if shown:
        specs.append(
            ("roc", f"{suite}: ROC curves (ID positive), seed {seed}", lambda t: roc_figure(scores, shown, t))
        )
        specs.append(
            (
                "hist",
                f"{suite}: scores, ID test vs {shown[0]}, seed {seed}",
                lambda t: hist_figure(scores, shown[0], t),
            )
        )
    specs.append(("auroc_heatmap", f"{suite}: AUROC, {seeds_note}", lambda t: auroc_heatmap(agg, t)))
    if any("corruption" in a for a in agg):
        specs.append(
            (
                "corruption_heatmap",
                f"{suite}: AUROC per corruption × severity, {seeds_note}",
                lambda t: corruption_heatmap(agg, t),
            )
        )
    for det, arrays in (illustrations or {}).items():
        if "reconstructions" in arrays:
            labels = ["ID test", next(iter(scores.get(det, {})), "OOD")]
            specs.append(
                (
                    f"{det.replace(':', '_')}-reconstructions",
                    f"{suite}: {det}, inputs and their reconstructions at levels 1-"
                    f"{arrays['reconstructions'].shape[2] - 1}, seed {seed}",
                    lambda t, g=arrays["reconstructions"], lb=labels: reconstruction_figure(g, lb, t),
                )
            )
    out = []
    with matplotlib.rc_context(_RC):
        for name, title, draw in specs:
            fig = draw(title)
            out.append({"name": name, "title": title, **_save(fig, folder / name)})
    return out
