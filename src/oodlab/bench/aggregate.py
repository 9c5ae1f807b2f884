"""Mean ± standard deviation over seeds of the per-seed result rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Metrics aggregated over seeds (every one a fraction).
AGG_METRICS: tuple[str, ...] = (
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
)
_LABELS = ("corruption", "severity", "mixture")


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (suite, protocol, detector, OOD set), in first-seen order.

    Each metric becomes ``{"mean": m, "std": s}`` over the seeds (``std`` is the sample standard
    deviation, ``ddof=1``; 0 for one seed); ``seeds`` lists the seeds that went in.
    """
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["suite"], r["protocol"], r["detector"], r["ood"]), []).append(r)
    out = []
    for (suite, protocol, detector, ood), group in groups.items():
        entry: dict[str, Any] = {
            "suite": suite,
            "protocol": protocol,
            "detector": detector,
            "ood": ood,
            "seeds": [r["seed"] for r in group],
            "n_seeds": len(group),
        }
        entry.update({k: group[0][k] for k in _LABELS if k in group[0]})
        for m in AGG_METRICS:
            values = np.array([r[m] for r in group if r.get(m) is not None], dtype=np.float64)
            if values.size:
                std = float(values.std(ddof=1)) if values.size > 1 else 0.0
                entry[m] = {"mean": float(values.mean()), "std": std}
        out.append(entry)
    return out


def pm(stat: dict[str, float] | None, n_seeds: int, scale: float = 100.0, digits: int = 2) -> str:
    """``"98.12 ± 0.34"`` (in percent by default); just the mean for one seed; ``"–"`` if missing."""
    if stat is None:
        return "–"
    mean = f"{scale * stat['mean']:.{digits}f}"
    return f"{mean} ± {scale * stat['std']:.{digits}f}" if n_seeds > 1 else mean
