"""Cross-check: oodlab's detectors against pytorch-ood 0.4.0's on the same model and features.

Answers "is a detector of ours below its peer figure because of the detector or because of the
model?": both libraries score the same trained network on the same images, so any difference
is the implementation's. Several training recipes are run to show how much the model alone
moves each detector. Untuned settings on both sides (ODIN at T = 1000, ε = 0.0014; KNN k = 50;
ViM with oodlab's default subspace dimension; ReAct at the 90th percentile; Mahalanobis on
the penultimate layer without input preprocessing). Seed 0, blind split, the suite's real OOD
test set. From the repository root:

    pip install --no-deps --target /tmp/pytorch-ood pytorch-ood==0.4.0
    .venv/bin/python benchmarks/crosscheck_pytorch_ood.py --pytorch-ood /tmp/pytorch-ood

pytorch-ood is not a dependency of oodlab and is only imported here. Its package imports
torchvision at import time (for its model zoo and datasets, which this script does not use),
and PyPI's torchvision does not import beside the CPU torch build this project pins, so a
placeholder ``torchvision`` module is registered before the import.

Output: ``benchmarks/results/crosscheck.md``.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import sys
import time
import types
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import numpy as np
import torch
from tabulate import tabulate

from oodlab import features, metrics
from oodlab.bench.suites import build_suite, get_suite
from oodlab.detectors import create_detector
from oodlab.detectors.vim import default_dim
from oodlab.models.base import PENULTIMATE
from oodlab.training.trainer import fit_or_load

#: (suite, recipe label, overrides of the suite's training recipe).
RECIPES: list[tuple[str, str, dict[str, Any]]] = [
    ("fmnist-vs-mnist", "lenet (suite default)", {}),
    ("mnist-holdout0", "lenet (suite default)", {}),
    ("mnist-vs-fmnist", "lenet (suite default)", {}),
    ("fmnist-vs-mnist", "lenet5, Adadelta, 5 epochs", {"model": "lenet5", "epochs": 5}),
    (
        "fmnist-vs-mnist",
        "lenet5, Adam 1e-3, 5 epochs",
        {
            "model": "lenet5",
            "epochs": 5,
            "optimizer": "adam",
            "lr": 1e-3,
            "schedule": "none",
            "batch_size": 128,
        },
    ),
]
ODIN_T, ODIN_EPS, KNN_K = 1000.0, 0.0014, 50


class _Placeholder(types.ModuleType):
    """Stands in for a torchvision module: any attribute is an inert mock (touched at import only)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return MagicMock(name=f"{self.__name__}.{name}")


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers every ``import torchvision[.…]`` with a :class:`_Placeholder` package."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> types.ModuleType:
        module = _Placeholder(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def import_pytorch_ood(path: Path | None) -> Any:
    if path is not None:
        sys.path.insert(0, str(path))
    try:
        import torchvision  # noqa: F401
    except Exception:
        sys.modules.pop("torchvision", None)
        sys.meta_path.insert(0, _PlaceholderFinder())
    import pytorch_ood
    import pytorch_ood.detector as detectors

    print(f"pytorch-ood {pytorch_ood.__version__} from {Path(pytorch_ood.__file__).parent}", flush=True)
    return detectors


def compare(P: Any, suite_name: str, overrides: dict[str, Any]) -> tuple[float, list[list[Any]]]:
    """Rows (detector, oodlab AUROC %, pytorch-ood AUROC %) on one model; and its test accuracy."""
    suite = get_suite(suite_name)
    recipe = replace(suite.train, **overrides)
    data = build_suite(replace(suite, train=recipe), seed=0)
    model, _ = fit_or_load(recipe, data.id_train, progress=False)
    ood = next(s for name, s in data.ood_tests.items() if name not in ("gaussian", "uniform"))
    sets = {"train": data.id_train, "in": data.id_test, "out": ood}
    outs = {k: features.outputs(model, s, (PENULTIMATE,)) for k, s in sets.items()}
    z = {k: o.tap(PENULTIMATE).float().flatten(1) for k, o in outs.items()}
    logits = {k: o.logits.float() for k, o in outs.items()}
    y_train = data.id_train.labels()
    accuracy = metrics.classification_accuracy(logits["in"], data.id_test.labels())

    def auroc(s_in: Any, s_out: Any) -> float:
        return 100 * metrics.auroc(np.asarray(s_in, dtype=np.float64), np.asarray(s_out, dtype=np.float64))

    def ours(name: str, **params: Any) -> float:
        det = create_detector(name, **params).fit(
            model, data.id_train, id_val=data.id_val, ood_val=data.ood_val
        )
        return auroc(det.score_set(data.id_test).numpy(), det.score_set(ood).numpy())

    def theirs_on_features(det: Any) -> float:
        # pytorch-ood returns outlier scores (higher = more OOD); oodlab's convention is the opposite.
        return auroc(-det.predict_features(z["in"]), -det.predict_features(z["out"]))

    def theirs_on_logits(score: Any) -> float:
        return auroc(-score(logits["in"]), -score(logits["out"]))

    def theirs_odin(images: Any) -> torch.Tensor:
        det = P.ODIN(model, eps=ODIN_EPS, temperature=ODIN_T)
        x = images.tensor()
        return -torch.cat([det.predict(x[i : i + 500]).detach() for i in range(0, len(x), 500)])

    head = model.head
    dim = default_dim(z["train"].shape[1])
    react = P.ReAct(backbone=None, head=head, percentile=0.9).fit_feature_maps(z["train"], y_train)
    rows = [
        ["msp", ours("msp"), theirs_on_logits(P.MaxSoftmax.score)],
        ["energy", ours("energy"), theirs_on_logits(P.EnergyBased.score)],
        ["maxlogit", ours("maxlogit"), theirs_on_logits(P.MaxLogit.score)],
        [
            f"odin (T={ODIN_T:g}, ε={ODIN_EPS})",
            ours("odin", temperature=ODIN_T, noise=ODIN_EPS),
            auroc(theirs_odin(data.id_test), theirs_odin(ood)),
        ],
        [
            "mahalanobis (penultimate)",
            ours("mahalanobis", noise=0.0),
            theirs_on_features(P.Mahalanobis(None).fit_features(z["train"], y_train)),
        ],
        [
            f"knn (k={KNN_K})",
            ours("knn", k=KNN_K),
            theirs_on_features(P.KNN(None, k=KNN_K).fit_features(z["train"], y_train)),
        ],
        [
            f"vim (d={dim})",
            ours("vim", dim=dim),
            theirs_on_features(
                P.ViM(None, d=dim, w=head.weight, b=head.bias).fit_features(z["train"], y_train)
            ),
        ],
        [
            "react (90th pct, energy)",
            ours("react", percentile=90.0),
            auroc(
                -react.predict_feature_maps(z["in"]).detach(), -react.predict_feature_maps(z["out"]).detach()
            ),
        ],
    ]
    return accuracy, rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pytorch-ood", type=Path, default=None, help="folder holding the pytorch_ood package")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/crosscheck.md"))
    args = ap.parse_args(argv)
    P = import_pytorch_ood(args.pytorch_ood)
    torch.manual_seed(0)
    parts = [
        "# oodlab vs pytorch-ood 0.4.0 on the same models\n",
        "`benchmarks/crosscheck_pytorch_ood.py`: AUROC (%) of each detector on the suite's real OOD "
        "test set, seed 0, untuned settings, both libraries scoring the same network.\n",
    ]
    summary = []
    for suite_name, label, overrides in RECIPES:
        t0 = time.perf_counter()
        accuracy, rows = compare(P, suite_name, overrides)
        for r in rows:
            r.append(r[1] - r[2])
        worst = max(abs(r[3]) for r in rows)
        summary.append(worst)
        parts.append(
            f"\n## {suite_name} — {label} (ID test accuracy {100 * accuracy:.2f}%)\n\n"
            + tabulate(
                rows, headers=["detector", "oodlab", "pytorch-ood", "Δ"], tablefmt="github", floatfmt=".2f"
            )
            + f"\n\n({time.perf_counter() - t0:.0f} s)\n"
        )
        print(parts[-1], flush=True)
    parts.append(f"\nLargest |Δ| over all rows: {max(summary):.4f} AUROC points.\n")
    parts.append(
        f"\nRecipes: {json.dumps({f'{s} / {lbl}': o for s, lbl, o in RECIPES}, ensure_ascii=False)}\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(parts))
    print(parts[-2])


if __name__ == "__main__":
    main()
