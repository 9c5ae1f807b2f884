"""Why ``mahalanobis`` differs from pytorch-ood's on a network with dead features.

pytorch-ood inverts the class-centred scatter matrix plus a ridge of 1e-6 in float32; oodlab
takes the float64 pseudo-inverse of the covariance. The two agree when the covariance has full
rank; the suites' LeNets have ReLU units that never fire on the training set (zero variance), and
there a unit that fires on a test image adds ~1e6 to its distance under the ridge and nothing
under the pseudo-inverse. This script scores each suite's seed-0 LeNet three ways on the same
features — oodlab, oodlab's scoring with pytorch-ood's ridge inverse, and pytorch-ood — and
prints the AUROC of each, so the difference is traced to that one choice. Run with
``.venv-peer/bin/python benchmarks/peer_mahalanobis.py`` after ``make peer``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peer  # noqa: E402

from oodlab import metrics  # noqa: E402
from oodlab.detectors import create_detector  # noqa: E402
from oodlab.features import extract  # noqa: E402
from oodlab.models.base import PENULTIMATE  # noqa: E402


def ridge_precision(z: torch.Tensor, y: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """pytorch-ood's precision: the inverse of the (unnormalised) class-centred scatter + ridge, float32."""
    z = z.float()
    s = torch.zeros(z.shape[1], z.shape[1])
    for k in y.unique():
        zk = z[y == k] - z[y == k].mean(0)
        s += zk.T @ zk
    return torch.linalg.inv(s + ridge * torch.eye(len(s)))


def main() -> None:
    P, _ = peer.import_pytorch_ood()
    print("| suite | OOD set | dead units | oodlab (pinv) | oodlab with ridge inverse | pytorch-ood |")
    print("|---|---|---|---|---|---|")
    for suite in ("fmnist-vs-mnist", "mnist-holdout0", "mnist-vs-fmnist"):
        data, model = peer.load(suite)
        z = extract(model, data.id_train, (PENULTIMATE,)).tap(PENULTIMATE).flatten(1)
        y = data.id_train.labels()
        ours = create_detector("mahalanobis", noise=0.0).fit_features(z, y)
        ridge = create_detector("mahalanobis", noise=0.0).fit_features(z, y)
        ridge.precision_ = ridge_precision(z, y).double()
        theirs = P.Mahalanobis(None).fit_features(z, y)
        dead = int((z.std(0) == 0).sum())
        sets = {"id": data.id_test, **data.ood_tests}
        feats = {k: extract(model, s, (PENULTIMATE,)).tap(PENULTIMATE).flatten(1) for k, s in sets.items()}
        a = {
            name: {k: det.score_features(f) for k, f in feats.items()}
            for name, det in (("ours", ours), ("ridge", ridge))
        }
        a["theirs"] = {k: -theirs.predict_features(f).double() for k, f in feats.items()}
        for k in sets:
            if k == "id":
                continue
            cells = [f"{100 * metrics.auroc(a[n]['id'], a[n][k]):.2f}" for n in ("ours", "ridge", "theirs")]
            print(f"| {suite} | {k} | {dead} of {z.shape[1]} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
