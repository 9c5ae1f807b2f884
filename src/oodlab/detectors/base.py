"""The detector protocol every oodlab detector follows.

Conventions (docs/design.md):

- ``score`` returns one float64 per input, *higher means more in-distribution*.
- ``__init__`` stores hyperparameters only; ``fit`` does the work, returns ``self`` and keeps
  what it learned in attributes ending in ``_``. Using an unfitted detector raises
  :class:`~oodlab.errors.NotFittedError`.
- ``fit`` sees ID training data; anything tuned is tuned on ``id_val`` / ``ood_val`` and the
  choice is reported by :meth:`Detector.tuning`.
- Detectors whose ``needs`` lack ``"input_grad"`` are scored from a shared forward pass
  (:meth:`score_outputs`); the others run the model on the raw inputs (:meth:`score`).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from oodlab import features
from oodlab.data.imageset import ImageSet
from oodlab.errors import NotFittedError, OodlabError
from oodlab.features import Outputs
from oodlab.io import atomic_write, atomic_write_text

LOGITS_ONLY = frozenset({"logits"})
TAPS = frozenset({"logits", "taps"})
INPUT_GRAD = frozenset({"logits", "taps", "input_grad"})


class Detector:
    """Base class: subclasses implement ``_fit`` and ``_score_outputs`` (or ``_score_inputs``)."""

    name: ClassVar[str] = "detector"
    #: What the detector reads: ``"logits"``, ``"taps"``, ``"input_grad"``.
    needs: ClassVar[frozenset[str]] = LOGITS_ONLY
    #: Whether ``fit`` tunes something on ``id_val``/``ood_val``.
    tunes: ClassVar[bool] = False
    #: Images per batch when the detector runs the model itself.
    batch_size: int = features.BATCH_SIZE
    #: Hyperparameters that make the shared invariants test (tests/test_common.py) fast, e.g. a
    #: small tuning grid. Never used outside tests.
    quick_params: ClassVar[dict[str, Any]] = {}

    # -- hyperparameters ------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Hyperparameters, as given to ``__init__`` (JSON-serialisable)."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -- fitting --------------------------------------------------------------------------
    def required_taps(self, model: nn.Module) -> tuple[str, ...]:
        """Tap specs this detector reads from :class:`Outputs` (none for logit detectors)."""
        return ()

    def train_taps(self, model: nn.Module) -> tuple[str, ...]:
        """Tap specs ``fit`` reads from the ID training set: the shared pass over that set
        computes only these. Default: all of :meth:`required_taps`."""
        return tuple(self.required_taps(model))

    def fit(
        self,
        model: nn.Module,
        id_train: ImageSet,
        *,
        id_val: ImageSet | None = None,
        ood_val: ImageSet | None = None,
    ) -> Detector:
        """Fit on ID training data; tune on ``id_val``/``ood_val`` where the detector tunes.

        The model's weights and train/eval mode are left as they were.

        Returns:
            ``self``.
        """
        if not isinstance(model, nn.Module):
            raise OodlabError(f"detector {self.name!r}: model must be a torch.nn.Module")
        for label, s in (("id_train", id_train), ("id_val", id_val), ("ood_val", ood_val)):
            if s is None:
                continue
            if not isinstance(s, ImageSet):
                raise OodlabError(
                    f"detector {self.name!r}: {label} must be an ImageSet, got {type(s).__name__}"
                )
            if len(s) == 0:
                raise OodlabError(f"detector {self.name!r}: {label} is empty; give it at least one image")
        for attr in [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]:
            delattr(self, attr)
        was_training = model.training
        try:
            self.model_ = model
            self.tuning_: dict[str, Any] = {}
            with features.channels_last(model):
                self._fit(model, id_train, id_val, ood_val)
        finally:
            model.train(was_training)
        return self

    def _fit(
        self, model: nn.Module, id_train: ImageSet, id_val: ImageSet | None, ood_val: ImageSet | None
    ) -> None:
        """Learn state from ID training data (default: nothing to learn)."""

    def _require_validation(
        self, id_val: ImageSet | None, ood_val: ImageSet | None, what: str
    ) -> tuple[ImageSet, ImageSet]:
        if id_val is None or ood_val is None:
            missing = " and ".join(n for n, s in (("id_val", id_val), ("ood_val", ood_val)) if s is None)
            raise OodlabError(
                f"detector {self.name!r} tunes {what} on validation data but got no {missing}; "
                f"pass id_val= and ood_val= to fit(), or fix {what} in its parameters"
            )
        return id_val, ood_val

    def _record_tuning(self, chosen: dict[str, Any], id_val: ImageSet, ood_val: ImageSet | None) -> None:
        self.tuning_ = {
            "chosen": chosen,
            "id_val": id_val.name,
            "ood_val": ood_val.name if ood_val is not None else None,
        }

    def tuning(self) -> dict[str, Any]:
        """What ``fit`` tuned, to what, and on which validation sets (empty if nothing)."""
        self._check_fitted()
        return dict(self.tuning_)

    # -- scoring --------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"detector {self.name!r} is not fitted; call fit(model, id_train) first")

    def score(self, x: Tensor) -> Tensor:
        """Scores ``(N,)`` float64 for raw images ``x`` ``(N, C, H, W)`` in [0, 1]; higher = more ID."""
        self._check_fitted()
        if not isinstance(x, Tensor):
            raise OodlabError(f"detector {self.name!r}: expected a torch.Tensor, got {type(x).__name__}")
        if hasattr(self.model_, "check_input"):
            self.model_.check_input(x)
        elif x.ndim != 4:
            raise OodlabError(f"detector {self.name!r}: expected (N, C, H, W) images, got {tuple(x.shape)}")
        if "input_grad" in self.needs:
            with features.channels_last(self.model_):
                scores = [
                    self._score_inputs(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)
                ]
            return self._finish(torch.cat(scores) if scores else torch.empty(0), len(x))
        out = features.extract(self.model_, x, self.required_taps(self.model_), batch_size=self.batch_size)
        return self.score_outputs(out)

    def score_outputs(self, out: Outputs) -> Tensor:
        """Scores from a shared forward pass (detectors that need no input gradient)."""
        self._check_fitted()
        if "input_grad" in self.needs:
            raise OodlabError(f"detector {self.name!r} needs input gradients: call score(x) on the images")
        with torch.no_grad():
            return self._finish(self._score_outputs(out), len(out))

    def score_set(self, images: ImageSet) -> Tensor:
        """Scores for a whole :class:`ImageSet`, through the shared outputs cache where possible."""
        self._check_fitted()
        if "input_grad" in self.needs:
            return self.score(images.tensor())
        return self.score_outputs(features.outputs(self.model_, images, self.required_taps(self.model_)))

    def _finish(self, scores: Tensor, n: int) -> Tensor:
        scores = scores.detach().to(torch.float64).cpu().reshape(-1)
        if scores.shape != (n,):
            raise RuntimeError(f"detector {self.name!r} returned {tuple(scores.shape)} scores for {n} inputs")
        if not torch.isfinite(scores).all():
            bad = int((~torch.isfinite(scores)).sum())
            raise OodlabError(f"detector {self.name!r} produced {bad} non-finite scores")
        return scores

    def _score_outputs(self, out: Outputs) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def _score_inputs(self, x: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    # -- persistence ----------------------------------------------------------------------
    def _fitted_state(self) -> dict[str, Any]:
        return {
            k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_") and k != "model_"
        }

    def save(self, path: str | Path) -> None:
        """Write ``path.json`` (name, hyperparameters, small state) and ``path.safetensors`` (arrays)."""
        self._check_fitted()
        path = Path(path)
        tensors: dict[str, Tensor] = {}
        plain: dict[str, Any] = {}
        for k, v in self._fitted_state().items():
            if isinstance(v, Tensor | np.ndarray):
                tensors[k] = torch.as_tensor(v).detach().cpu().contiguous()
            else:
                plain[k] = v
        meta = {"detector": self.name, "params": self.get_params(), "state": plain, "arrays": sorted(tensors)}
        atomic_write(path.with_suffix(".safetensors"), lambda tmp: save_file(tensors, tmp))
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))


def load_detector(path: str | Path, model: nn.Module) -> Detector:
    """Load a detector written by :meth:`Detector.save`, bound to ``model``."""
    from oodlab.detectors._registry import create_detector

    path = Path(path)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        arrays = load_file(str(path.with_suffix(".safetensors"))) if meta["arrays"] else {}
    except (OSError, ValueError, KeyError) as e:
        raise OodlabError(f"cannot load detector from {path}: {e}") from None
    det = create_detector(meta["detector"], **meta["params"])
    for k, v in meta["state"].items():
        setattr(det, k, v)
    for k in meta["arrays"]:
        setattr(det, k, arrays[k])
    det.model_ = model
    return det
