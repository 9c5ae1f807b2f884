"""The detector protocol every oodlab detector follows.

Conventions (docs/design.md):

- ``score`` returns one float64 per input, *higher means more in-distribution*.
- ``__init__`` stores hyperparameters only; ``fit`` does the work, returns ``self`` and keeps
  what it learned in attributes ending in ``_``. Using an unfitted detector raises
  :class:`~oodlab.errors.NotFittedError`.
- ``fit`` sees ID training data; anything tuned is tuned on ``id_val`` / ``ood_val`` and the
  choice is reported by :meth:`Detector.tuning`.
- ``needs`` says what a detector reads (``"logits"``, ``"taps"``); ``capabilities`` says how it
  runs (:class:`Capabilities`, like scikit-learn's estimator tags): from the shared forward
  pass (:meth:`score_outputs`), or with forward passes of its own on the raw inputs
  (:meth:`score`) because it takes input gradients or is stochastic; and whether it trains a
  network of its own (:meth:`network`). The bench runner and ``tests/test_common.py`` read it.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, replace
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
from oodlab.models.spec import build_from_spec, module_spec
from oodlab.training.recipes import Network
from oodlab.training.trainer import TrainConfig

LOGITS_ONLY = frozenset({"logits"})
TAPS = frozenset({"logits", "taps"})


@dataclass(frozen=True)
class Capabilities:
    """How a detector runs, declared on its class (an instance may refine it from its parameters).

    Attributes:
        shared_pass: Scored from the shared forward pass (:meth:`Detector.score_outputs`, the
            outputs cache). ``False``: it runs the model on the raw inputs itself.
        input_gradient: Its own passes take gradients with respect to the input (ODIN).
        stochastic: Its own passes are random (seeded; MC dropout): its scores must never be
            served from, or written to, the deterministic outputs cache.
        trains: It scores a network of its own making (:meth:`Detector.network`: fine-tuned,
            an ensemble), which the bench runner trains or loads once per (suite, seed).
    """

    shared_pass: bool = True
    input_gradient: bool = False
    stochastic: bool = False
    trains: bool = False

    def __post_init__(self) -> None:
        if self.shared_pass and (self.input_gradient or self.stochastic):
            raise ValueError(
                "a detector with input gradients or stochastic passes runs its own forward passes"
            )

    @property
    def own_forward(self) -> bool:
        """Whether it runs the model itself on the raw inputs."""
        return not self.shared_pass

    def describe(self) -> str:
        """``"shared pass"``, ``"own forward"``, ``"input gradient"`` or ``"stochastic"``, ``"+ trains"``."""
        how = "input gradient" if self.input_gradient else "stochastic" if self.stochastic else None
        how = how or ("shared pass" if self.shared_pass else "own forward")
        return f"{how}, trains its network" if self.trains else how


SHARED_PASS = Capabilities()
OWN_FORWARD = Capabilities(shared_pass=False)
INPUT_GRADIENT = Capabilities(shared_pass=False, input_gradient=True)
STOCHASTIC = Capabilities(shared_pass=False, stochastic=True)


def trains(caps: Capabilities) -> Capabilities:
    """``caps`` for a method that scores a network of its own making."""
    return replace(caps, trains=True)


class Detector:
    """Base class: subclasses implement ``_fit`` and ``_score_outputs`` (or ``_score_inputs``)."""

    name: ClassVar[str] = "detector"
    #: What the detector reads: ``"logits"``, ``"taps"``.
    needs: ClassVar[frozenset[str]] = LOGITS_ONLY
    #: How it runs (shared pass, own forward, input gradient, stochastic, trains a network).
    capabilities: ClassVar[Capabilities] = SHARED_PASS
    #: Whether ``fit`` tunes something on ``id_val``/``ood_val``.
    tunes: ClassVar[bool] = False
    #: Images per batch when the detector runs the model itself.
    batch_size: int = features.BATCH_SIZE
    #: Hyperparameters that make the shared invariants test (tests/test_common.py) fast, e.g. a
    #: small tuning grid. Never used outside tests.
    quick_params: ClassVar[dict[str, Any]] = {}
    #: Shared invariants of tests/test_common.py this detector is known to fail, each with the
    #: reason (as scikit-learn's ``_xfail_checks`` tag); they run as strict expected failures.
    xfail_checks: ClassVar[dict[str, str]] = {}

    # -- hyperparameters ------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Hyperparameters, as given to ``__init__`` (JSON-serialisable)."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -- the network it scores ---------------------------------------------------------------
    def network(self, base: TrainConfig) -> Network:
        """How the network this detector scores is made from a suite's ``base`` recipe.

        Post-hoc detectors score the base network itself; methods that train (``capabilities.
        trains``) return their fine-tuning step or ensemble members (:mod:`oodlab.training.recipes`).
        """
        return Network.single(base)

    def check_network(self, base: TrainConfig) -> None:
        """Raise :class:`OodlabError` if this detector cannot score the network ``base`` makes
        (checked before a benchmark starts, so a bad combination writes nothing)."""

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

    def _check_model(self) -> None:
        self._check_fitted()
        if self.model_ is None:
            raise OodlabError(
                f"detector {self.name!r} was fitted from features (fit_features) and has no model: "
                "score features with score_features(), or fit(model, id_train) to score images"
            )

    def score(self, x: Tensor) -> Tensor:
        """Scores ``(N,)`` float64 for raw images ``x`` ``(N, C, H, W)`` in [0, 1]; higher = more ID."""
        self._check_model()
        if not isinstance(x, Tensor):
            raise OodlabError(f"detector {self.name!r}: expected a torch.Tensor, got {type(x).__name__}")
        if hasattr(self.model_, "check_input"):
            self.model_.check_input(x)
        elif x.ndim != 4:
            raise OodlabError(f"detector {self.name!r}: expected (N, C, H, W) images, got {tuple(x.shape)}")
        if self.capabilities.own_forward:
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
        if self.capabilities.own_forward:
            raise OodlabError(
                f"detector {self.name!r} runs the model itself ({self.capabilities.describe()}), not from "
                "a shared forward pass: call score(x) on the images"
            )
        with torch.no_grad():
            return self._finish(self._score_outputs(out), len(out))

    def score_set(self, images: ImageSet) -> Tensor:
        """Scores for a whole :class:`ImageSet`, through the shared outputs cache where possible."""
        self._check_model()
        if self.capabilities.own_forward:
            return self.score(images.tensor())
        return self.score_outputs(features.outputs(self.model_, images, self.required_taps(self.model_)))

    def illustration(self, id_images: Tensor, ood_images: Tensor) -> dict[str, np.ndarray]:
        """Small arrays showing what the detector does to a few ID and OOD images, for the report.

        Saved with the benchmark cell; :mod:`oodlab.bench.plots` draws the ones it knows (HSCAE's
        ``"reconstructions"``). Most detectors have none.
        """
        return {}

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
        state = {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}
        # The network a post-hoc detector scores is the user's; one a method made is learned state.
        if not self.capabilities.trains:
            state.pop("model_", None)
        return state

    def _set_fitted_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_fitted_state` returned (:func:`load_detector`)."""
        for k, v in state.items():
            setattr(self, k, v)

    def save(self, path: str | Path) -> None:
        """Write ``path.json`` (name, hyperparameters, small state) and ``path.safetensors`` (arrays).

        Learned modules (``nn.Module`` attributes, and the network of a method that trains) are
        saved as their weights in the same safetensors file, under ``<attribute>/<name>``, with
        the recipe to rebuild them (:func:`oodlab.models.spec.module_spec`) in the JSON.
        """
        self._check_fitted()
        path = Path(path)
        tensors: dict[str, Tensor] = {}
        plain: dict[str, Any] = {}
        modules: dict[str, Any] = {}
        for k, v in self._fitted_state().items():
            if isinstance(v, nn.Module):
                modules[k] = module_spec(v)
                for name, t in v.state_dict().items():
                    tensors[f"{k}/{name}"] = t.detach().cpu().contiguous()
            elif isinstance(v, Tensor | np.ndarray):
                tensors[k] = torch.as_tensor(v).detach().cpu().contiguous()
            else:
                plain[k] = v
        meta = {
            "detector": self.name,
            "params": self.get_params(),
            "state": plain,
            "arrays": sorted(k for k in tensors if "/" not in k),
            "modules": modules,
        }
        atomic_write(path.with_suffix(".safetensors"), lambda tmp: save_file(tensors, tmp))
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))


def load_detector(path: str | Path, model: nn.Module | None = None) -> Detector:
    """Load a detector written by :meth:`Detector.save`.

    Args:
        path: The path given to ``save`` (``.json`` and ``.safetensors`` beside it).
        model: The network to bind it to. A method that trains saved its own network and is
            bound to that when ``model`` is ``None``; a post-hoc detector needs ``model``.
    """
    from oodlab.detectors._registry import create_detector

    path = Path(path)
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        modules = meta.get("modules", {})
        arrays = load_file(str(path.with_suffix(".safetensors"))) if meta["arrays"] or modules else {}
    except (OSError, ValueError, KeyError) as e:
        raise OodlabError(f"cannot load detector from {path}: {e}") from None
    det = create_detector(meta["detector"], **meta["params"])
    state: dict[str, Any] = dict(meta["state"])
    state.update({k: arrays[k] for k in meta["arrays"]})
    for k, spec in modules.items():
        module = build_from_spec(spec)
        prefix = f"{k}/"
        try:
            module.load_state_dict({n[len(prefix) :]: t for n, t in arrays.items() if n.startswith(prefix)})
        except RuntimeError as e:
            raise OodlabError(
                f"cannot load detector from {path}: module {k}: {str(e).splitlines()[0]}"
            ) from None
        state[k] = module.eval()
    det._set_fitted_state(state)
    if model is not None:
        det.model_ = model
    elif not hasattr(det, "model_"):
        raise OodlabError(
            f"detector {det.name!r} from {path} scores a network you give: load_detector(path, model)"
        )
    return det
