"""Bundles: fitted detectors, their thresholds and a reference to their network, in one folder.

``oodlab fit`` writes a bundle; ``oodlab score`` and ``oodlab serve`` load it. Layout::

    BUNDLE/
      manifest.json        format, oodlab version, model reference, input shape, detectors,
                           thresholds, validation metrics, sha256 of every other file
      model.safetensors    the network's weights (absent when the model's factory supplies them)
      detectors/NAME.json  each fitted detector (Detector.save: hyperparameters and state)
      detectors/NAME.safetensors

The model reference records how to rebuild the network (``source``: ``package.module:factory``,
``file.py:factory`` or a registered oodlab model, with its keyword arguments), how it was wrapped,
a hash of the factory's source (``definition``) and the sha256 of its weights. A bundle refuses
to load against weights with another hash, and refuses a format newer than it reads.

Every file is written with :func:`oodlab.io.atomic_write` into a staging folder that is renamed
into place at the end, so a bundle folder is either complete or absent.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from oodlab import __version__, features
from oodlab.api import (
    DetectorSpec,
    Validation,
    blind_validation,
    check_post_hoc,
    fit_detector,
    parse_detectors,
    shared_pass,
)
from oodlab.data.imageset import ImageSet
from oodlab.detectors import Detector, load_detector
from oodlab.errors import OodlabError
from oodlab.features import OutputsCache
from oodlab.io import atomic_write, atomic_write_text
from oodlab.metrics import auroc, fpr95, threshold_at_accept_rate
from oodlab.models.base import TappedModel
from oodlab.models.user import file_sha256, rebuild_model, weights_sha256
from oodlab.models.wrap import WrappedModel

#: Bundle format this oodlab writes and reads.
FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


def _safe_name(label: str) -> str:
    # No dots: Detector.save adds its own suffixes with Path.with_suffix.
    return re.sub(r"[^A-Za-z0-9_=-]+", "_", label)


def _network(model: TappedModel) -> torch.nn.Module:
    return model.module if isinstance(model, WrappedModel) else model


@dataclass
class Bundle:
    """A loaded bundle: the model, the fitted detectors and the manifest.

    Use :meth:`score` for accept/reject decisions with the primary detector (or another).
    """

    path: Path
    manifest: dict[str, Any]
    model: TappedModel
    detectors: dict[str, Detector]

    @property
    def primary(self) -> str:
        """Label of the detector scores come from by default."""
        return str(self.manifest["primary"])

    def entry(self, label: str | None = None) -> dict[str, Any]:
        """The manifest entry of detector ``label`` (default the primary)."""
        label = label or self.primary
        for d in self.manifest["detectors"]:
            if d["label"] == label:
                return d
        raise OodlabError(f"bundle has no detector {label!r}; it has: {', '.join(self.detectors)}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the bundle scores."""
        c, h, w = self.manifest["input"]["shape"]
        return int(c), int(h), int(w)

    def check_images(self, x: Tensor) -> None:
        """One-line error unless ``x`` is a finite batch ``(N, C, H, W)`` of the bundle's shape in [0, 1]."""
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise OodlabError(
                f"expected a batch of images (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}"
            )
        shape = tuple(int(v) for v in x.shape[1:])
        if shape != self.input_shape:
            c, h, w = self.input_shape
            raise OodlabError(
                f"expected images of {c} channel(s) and {h}x{w} pixels, "
                f"got {shape[0]} and {shape[1]}x{shape[2]}"
            )
        if not torch.isfinite(x).all():
            raise OodlabError("images contain NaN or infinite values")
        if len(x) and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise OodlabError(f"pixel values must be in [0, 1], got [{float(x.min()):g}, {float(x.max()):g}]")

    def score(self, x: Tensor, detector: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores (float64, higher = more ID) and accept flags (``score >= threshold``)."""
        self.check_images(x)
        e = self.entry(detector)
        s = self.detectors[e["label"]].score(x).numpy()
        return s, s >= float(e["threshold"])

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` shows: the manifest without file hashes, and the oodlab reading it."""
        return {**{k: v for k, v in self.manifest.items() if k != "files"}, "served_by": __version__}


def fit_bundle(
    model: TappedModel,
    model_ref: dict[str, Any],
    id_train: ImageSet,
    out: str | os.PathLike[str],
    *,
    detectors: str | Sequence[Any] = "default",
    id_val: ImageSet | None = None,
    n_val: int | float = 0.1,
    accept_rate: float = 0.95,
    seed: int = 0,
    primary: str | None = None,
    overwrite: bool = False,
    data_info: dict[str, Any] | None = None,
) -> Path:
    """Fit detectors on a user's model and data (blind protocol) and write a bundle at ``out``.

    Each detector is fitted on ``id_train`` (minus the validation carve-out when ``id_val`` is
    not given), tuned on ID validation vs a synthetic OOD validation set made from it, and its
    threshold set to accept ``accept_rate`` of the ID validation images. The primary detector
    is ``primary``, or the one with the highest validation AUROC (ties: first given).

    Returns:
        The bundle folder.

    Raises:
        OodlabError: Bad arguments (before anything is written), or ``out`` exists and is not
            empty without ``overwrite``.
    """
    out = Path(out).expanduser()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise OodlabError(f"{out} exists; choose another --out or pass --overwrite")
    if not 0.0 < accept_rate <= 1.0:
        raise OodlabError(f"accept rate must be in (0, 1], got {accept_rate}")
    specs: list[DetectorSpec] = parse_detectors(detectors)
    check_post_hoc(specs, "a bundle")
    labels = [s.label for s in specs]
    if primary is not None and primary not in labels:
        raise OodlabError(f"--primary {primary!r} is not one of the detectors: {', '.join(labels)}")
    val: Validation = blind_validation(id_train, id_val, n_val=n_val, seed=seed)
    if val.id_val.shape != val.id_train.shape:
        raise OodlabError(f"validation images are {val.id_val.shape}, training images {val.id_train.shape}")
    model.check_input(val.id_train.tensor(0, 1))
    entries, fitted = [], {}
    with features.using_cache(OutputsCache(max_entries=6)):
        shared_pass(model, [s.create() for s in specs], [val.id_val, val.ood_val], val.id_train)
        for spec in specs:
            det, seconds = fit_detector(spec, model, val, seed=seed)
            s_id = det.score_set(val.id_val).numpy()
            s_ood = det.score_set(val.ood_val).numpy()
            threshold = threshold_at_accept_rate(s_id, accept_rate)
            fitted[spec.label] = det
            entries.append(
                {
                    "label": spec.label,
                    "name": spec.name,
                    "params": det.get_params(),
                    "file": f"detectors/{len(entries)}-{_safe_name(spec.label)}",
                    "threshold": threshold,
                    "accept_rate": accept_rate,
                    "tuning": det.tuning(),
                    "validation": {
                        "auroc": auroc(s_id, s_ood),
                        "fpr95": fpr95(s_id, s_ood),
                        "id_accepted": float(np.mean(s_id >= threshold)),
                        "ood_rejected": float(np.mean(s_ood < threshold)),
                        "id_val": val.id_val.name,
                        "ood_val": val.ood_val.name,
                        "n_id_val": len(s_id),
                        "n_ood_val": len(s_ood),
                    },
                    "fit_seconds": round(seconds, 3),
                }
            )
    chosen_by = "--primary" if primary is not None else "highest AUROC on ID vs synthetic OOD validation"
    if primary is None:
        primary = max(entries, key=lambda e: e["validation"]["auroc"])["label"]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "oodlab": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "primary": primary,
        "primary_chosen_by": chosen_by,
        "accept_rate": accept_rate,
        "seed": seed,
        "protocol": "blind",
        "input": {"shape": list(val.id_train.shape), "resize": (data_info or {}).get("resize")},
        "model": {**model_ref, "weights_sha256": weights_sha256(model)},
        "data": {
            "train": {
                "name": val.id_train.name,
                "n": len(val.id_train),
                "fingerprint": val.id_train.fingerprint,
            },
            "id_val": {"name": val.id_val.name, "n": len(val.id_val), "fingerprint": val.id_val.fingerprint},
            **(data_info or {}),
        },
        "detectors": entries,
    }
    _write(out, manifest, model, fitted, weights=bool(model_ref.get("weights_file")), overwrite=overwrite)
    return out


def _write(
    out: Path,
    manifest: dict[str, Any],
    model: TappedModel,
    fitted: dict[str, Detector],
    *,
    weights: bool,
    overwrite: bool,
) -> None:
    stage = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        if weights:
            state = {
                k: v.detach().cpu().contiguous().clone() for k, v in _network(model).state_dict().items()
            }
            atomic_write(stage / WEIGHTS, lambda tmp: save_file(state, tmp))
            manifest["model"]["weights_file"] = WEIGHTS
        for e in manifest["detectors"]:
            fitted[e["label"]].save(stage / e["file"])
        manifest["files"] = {
            str(p.relative_to(stage)): file_sha256(p) for p in sorted(stage.rglob("*")) if p.is_file()
        }
        atomic_write_text(stage / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
        if out.exists():
            if not overwrite:
                raise OodlabError(f"{out} appeared while fitting; not replacing it")
            old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
            os.replace(out, old)
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A bundle's manifest, checked for format and completeness (one-line errors)."""
    root = Path(path).expanduser()
    f = root / MANIFEST
    if not root.is_dir():
        raise OodlabError(f"bundle {root} does not exist or is not a folder")
    try:
        manifest = json.loads(f.read_text())
    except OSError:
        raise OodlabError(f"{root} is not an oodlab bundle (no {MANIFEST})") from None
    except ValueError as e:
        raise OodlabError(f"{f} is not valid JSON ({e})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if not isinstance(fmt, int):
        raise OodlabError(f"{f} has no bundle format number; not an oodlab bundle")
    if fmt > FORMAT:
        raise OodlabError(
            f"bundle {root} has format {fmt}, newer than this oodlab ({__version__}) reads ({FORMAT}); "
            f"upgrade oodlab (it was written by oodlab {manifest.get('oodlab', '?')})"
        )
    for key in ("primary", "model", "detectors", "input", "files"):
        if key not in manifest:
            raise OodlabError(f"{f} lacks {key!r}; the bundle is incomplete")
    return manifest


def load_bundle(path: str | os.PathLike[str], model: TappedModel | None = None) -> Bundle:
    """Load a bundle; rebuild its model unless ``model`` is given.

    Raises:
        OodlabError: Format newer than this oodlab, missing or altered files (sha256), or a model
            whose weights' hash differs from the one the detectors were fitted on.
    """
    root = Path(path).expanduser()
    manifest = read_manifest(root)
    for rel, digest in manifest["files"].items():
        p = root / rel
        if not p.is_file():
            raise OodlabError(f"bundle {root} is missing {rel}")
        if file_sha256(p) != digest:
            raise OodlabError(f"bundle file {p} was altered (sha256 differs from the manifest)")
    ref = manifest["model"]
    if model is None:
        weights = root / ref["weights_file"] if ref.get("weights_file") else None
        model = rebuild_model(ref, weights)
    got = weights_sha256(model)
    if got != ref["weights_sha256"]:
        raise OodlabError(
            f"model weights differ from the bundle's: the detectors in {root} were fitted on weights "
            f"sha256 {ref['weights_sha256'][:16]}…, this model has {got[:16]}…; refit with oodlab fit"
        )
    model.eval()
    dets = {e["label"]: load_detector(root / e["file"], model) for e in manifest["detectors"]}
    return Bundle(root, manifest, model, dets)


__all__ = ["FORMAT", "Bundle", "fit_bundle", "load_bundle", "read_manifest"]
