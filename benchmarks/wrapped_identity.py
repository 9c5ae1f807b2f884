"""Every detector on a wrapped plain network vs the same detector on the equivalent built-in model.

Two pairs, each computing the same function:

- the built-in LeNet (weights: the service benchmarks' LeNet, see ``_serve_common``) and the same
  network written as a plain ``nn.Sequential``, wrapped with ``taps={"conv1": "1", "conv2": "3"}``;
- the built-in CIFAR-style ResNet-18 (width 0.25, seeded initialisation, one input channel) and
  a torchvision-style ResNet-18 with its weights (``tests/tvstyle.py``), wrapped with the
  built-in's taps under torchvision's module names.

Each post-hoc detector (every registered one that does not train a network of its own) is
fitted on 2,000 Fashion-MNIST training images (tuned blind on 500 validation images and a
synthetic OOD validation set), then scores 1,000 Fashion-MNIST and 1,000 MNIST test images on
both models. Tuning grids are the detectors' ``quick_params`` to keep this to minutes.
Reported: the largest absolute score difference and whether the scores are bitwise equal; a
detector that refuses a network (``mc-dropout`` without dropout) is recorded as refused by one
or both.

    .venv/bin/python benchmarks/wrapped_identity.py [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _serve_common import make_bundle  # noqa: E402
from tests.tvstyle import resnet_from_builtin, sequential_from_lenet  # noqa: E402

from oodlab.api import blind_validation  # noqa: E402
from oodlab.data import ImageSet, load_dataset  # noqa: E402
from oodlab.detectors import create_detector, get_detector_class, list_detectors  # noqa: E402
from oodlab.errors import OodlabError  # noqa: E402
from oodlab.models import create_model, wrap  # noqa: E402
from oodlab.models.user import load_weights  # noqa: E402


def subset(ds: ImageSet, n: int, seed: int, name: str) -> ImageSet:
    pick = np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False))
    return ImageSet(name, ds.x[pick], None if ds.y is None else ds.y[pick])


def pairs(bundle: Path) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    lenet = create_model("lenet", num_classes=10, in_channels=1, image_size=28, mean=0.286, std=0.353)
    load_weights(lenet, bundle.parent / f"{bundle.name}-lenet.safetensors")
    lenet.eval()
    seq = wrap(
        sequential_from_lenet(lenet), taps={"conv1": "1", "conv2": "3"}, mean=0.286, std=0.353, image_size=28
    )
    torch.manual_seed(0)
    resnet = create_model(
        "resnet18", num_classes=10, in_channels=1, image_size=28, width=0.25, mean=0.286, std=0.353
    )
    resnet.eval()
    taps = {"stem": "relu", **{f"layer{i}": f"layer{i}" for i in range(1, 5)}}
    tv = wrap(resnet_from_builtin(resnet), taps=taps, mean=0.286, std=0.353, image_size=28)
    return {"lenet / nn.Sequential": (lenet, seq), "resnet18 / torchvision-style": (resnet, tv)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "results" / "serve-bundle")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    bundle = make_bundle(args.bundle)
    train = subset(load_dataset("fashion_mnist", "train"), 2500, 0, "fashion_mnist")
    val = blind_validation(train, n_val=500, seed=0)
    fm = subset(load_dataset("fashion_mnist", "test"), 1000, 1, "fashion_mnist-test").tensor()
    mn = subset(load_dataset("mnist", "test"), 1000, 2, "mnist-test").tensor()
    x = torch.cat([fm, mn])
    result: dict[str, dict[str, dict[str, object]]] = {}
    for pair, (builtin, wrapped) in pairs(bundle).items():
        result[pair] = {}
        # Methods that train score a network of their own making, not the one given.
        for name in (n for n in list_detectors() if not get_detector_class(n).capabilities.trains):
            scores, refusals = [], []
            for model in (builtin, wrapped):
                torch.manual_seed(0)
                det = create_detector(name, **get_detector_class(name).quick_params)
                try:
                    det.fit(model, val.id_train, id_val=val.id_val, ood_val=val.ood_val)
                except OodlabError as e:  # e.g. mc-dropout on a network without dropout
                    refusals.append(str(e).replace(type(model).__name__, "<model>"))
                    continue
                scores.append(det.score(x))
            if refusals:
                same = len(refusals) == 2 and refusals[0] == refusals[1]
                result[pair][name] = {"refused_by_both": same, "refusals": refusals}
                print(f"{pair:30s} {name:22s} refused by {'both' if same else 'one'}: {refusals[0]}")
                continue
            diff = float((scores[0] - scores[1]).abs().max())
            equal = bool(torch.equal(scores[0], scores[1]))
            scale = float(scores[0].abs().max())
            result[pair][name] = {"max_abs_diff": diff, "bitwise_equal": equal, "max_abs_score": scale}
            print(
                f"{pair:30s} {name:22s} max |diff| {diff:.3g} (scores up to {scale:.3g}); "
                f"bitwise equal: {equal}"
            )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
