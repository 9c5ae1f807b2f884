"""Blind selection: the detector a user would pick from validation data alone, beside the test-best.

Every result row carries its detector's metrics on the validation pair it was tuned on (ID
validation vs OOD validation, the synthetic set under the blind protocol): ``val_near_auroc``
against the set's near-OOD kinds (patch-shuffled images and class chimeras, what a semantic OOD
set looks like to a network), ``val_auroc`` against all of it, ``val_worst_auroc`` the worst over
its kinds, and ``val_fpr95``. :func:`select_by_validation` picks, per (suite, seed, protocol, OOD
test set), the detector with the highest ``val_near_auroc`` (ties: the lower validation FPR@95,
then the name),
and reports its *test* figures beside those of the detector that is best on the test set. Under
the blind protocol the validation pair is the same for every OOD test set, so one detector is
chosen per (suite, seed). :func:`rank_agreement` measures how well the validation ranking of
the detectors predicts their test ranking (Spearman's rank correlation over detectors).

``oodlab bench --detectors auto`` runs every registered detector and adds this selection to the
report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from oodlab.errors import OodlabError

#: ``--detectors auto``: run every detector and choose one per (suite, seed) on validation data.
AUTO = "auto"


def _key(r: dict[str, Any]) -> tuple[str, int, str, str]:
    return (r["suite"], int(r["seed"]), r["protocol"], r["ood"])


def _check_validation(rows: Sequence[dict[str, Any]]) -> None:
    missing = sorted({r["detector"] for r in rows if r.get("val_auroc") is None})
    if missing:
        raise OodlabError(
            "blind selection needs every detector's validation metrics (val_auroc), and these rows have "
            f"none: {', '.join(missing)}. Validation data is required: rerun `oodlab bench` (rows from "
            "runs before validation metrics were recorded lack them)"
        )


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of ``a`` and ``b`` (average ranks for ties); NaN if either is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.asarray(a, dtype=np.float64)), rankdata(np.asarray(b, dtype=np.float64))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


#: Validation figures a selection may rank by: the AUROC against the near-OOD kinds of the
#: synthetic set (:data:`~oodlab.data.synthetic.NEAR_OOD_KINDS`; against the whole OOD validation
#: set when it has no kinds), against all of it, or the worst over its kinds.
CRITERIA = ("val_near_auroc", "val_auroc", "val_worst_auroc")


def select_by_validation(
    rows: Sequence[dict[str, Any]], criterion: str = "val_near_auroc"
) -> list[dict[str, Any]]:
    """Per (suite, seed, protocol, OOD test set): the validation-chosen and the test-best detector.

    Args:
        rows: Result rows of ``oodlab bench`` (several detectors per suite and seed), each with
            ``val_auroc``, ``val_worst_auroc`` and ``val_fpr95``.
        criterion: The validation figure to rank by (one of :data:`CRITERIA`).

    Returns:
        One entry per group, in first-seen order: ``chosen`` and ``test_best`` (detector names),
        ``chosen_auroc``/``chosen_fpr95`` and ``best_auroc``/``best_fpr95`` (test figures,
        fractions), ``gap`` (``best_auroc − chosen_auroc``), ``chosen_val`` (its validation
        figure), ``spearman`` (validation figure vs test AUROC over the group's detectors) and
        ``n_detectors``.

    Raises:
        OodlabError: If a row has no validation metrics (no validation data).
    """
    if criterion not in CRITERIA:
        raise OodlabError(f"unknown selection criterion {criterion!r}; known: {', '.join(CRITERIA)}")
    _check_validation(rows)
    rows = [{**r, criterion: r.get(criterion, r["val_auroc"])} for r in rows]
    groups: dict[tuple[str, int, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for (suite, seed, protocol, ood), group in groups.items():
        chosen = min(group, key=lambda r: (-r[criterion], r["val_fpr95"], r["detector"]))
        best = min(group, key=lambda r: (-r["auroc"], r["fpr95"], r["detector"]))
        out.append(
            {
                "suite": suite,
                "seed": seed,
                "protocol": protocol,
                "ood": ood,
                "chosen": chosen["detector"],
                "criterion": criterion,
                "chosen_val": chosen[criterion],
                "chosen_auroc": chosen["auroc"],
                "chosen_fpr95": chosen["fpr95"],
                "test_best": best["detector"],
                "best_auroc": best["auroc"],
                "best_fpr95": best["fpr95"],
                "gap": best["auroc"] - chosen["auroc"],
                "spearman": spearman([r[criterion] for r in group], [r["auroc"] for r in group]),
                "n_detectors": len(group),
                **{k: chosen[k] for k in ("corruption", "severity", "mixture") if k in chosen},
            }
        )
    return out


def selection_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and body of the blind-selection table (figures in percent)."""
    header = [
        "suite",
        "seed",
        "OOD",
        "chosen on validation",
        "its AUROC / FPR@95",
        "test-best",
        "its AUROC / FPR@95",
        "gap",
        "Spearman",
    ]
    body = [
        [
            s["suite"],
            str(s["seed"]),
            s["ood"],
            s["chosen"],
            f"{100 * s['chosen_auroc']:.2f} / {100 * s['chosen_fpr95']:.2f}",
            s["test_best"],
            f"{100 * s['best_auroc']:.2f} / {100 * s['best_fpr95']:.2f}",
            f"{100 * s['gap']:.2f}",
            "–" if np.isnan(s["spearman"]) else f"{s['spearman']:.2f}",
        ]
        for s in select_by_validation(rows)
        if "corruption" not in s
    ]
    return header, body
