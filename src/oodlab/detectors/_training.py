"""Parameter checks and the networks (fine-tuned, or trained with an objective) of the methods that train."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from oodlab.data.imageset import ImageSet
from oodlab.detectors.base import TAPS
from oodlab.errors import OodlabError
from oodlab.features import Outputs, model_device
from oodlab.models import PENULTIMATE
from oodlab.training.aux import check_aux
from oodlab.training.objectives import create_objective
from oodlab.training.recipes import Network, finetune
from oodlab.training.trainer import TrainConfig


def check_int(detector: str, name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum``; else an error naming the detector and parameter."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OodlabError(f"detector {detector!r}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive(detector: str, name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0; else an error naming the parameter."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise OodlabError(f"detector {detector!r}: {name} must be a positive number, got {value!r}")
    return float(value)


class FinetuneMethod:
    """Mixin of a method whose network is the base network fine-tuned with a training objective.

    Subclasses set ``objective`` (a registered objective's name) and implement
    :meth:`objective_params`; the mixin validates the fine-tuning parameters and builds the
    :class:`~oodlab.training.recipes.Network`.
    """

    name: str
    objective: str
    aux: str
    n_aux: int
    epochs: int
    lr: float

    def _init_finetune(self, aux: str, n_aux: int, epochs: int, lr: float) -> None:
        self.aux = check_aux(aux)
        self.n_aux = check_int(self.name, "n_aux", n_aux, 1)
        self.epochs = check_int(self.name, "epochs", epochs, 1)
        self.lr = check_positive(self.name, "lr", lr)
        try:
            create_objective(self.objective, **self.objective_params())
        except OodlabError as e:
            raise OodlabError(f"detector {self.name!r}: {e}") from None

    def objective_params(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def network(self, base: TrainConfig) -> Network:
        return Network.single(
            finetune(
                base,
                self.objective,
                self.objective_params(),
                aux=self.aux,
                n_aux=self.n_aux,
                epochs=self.epochs,
                lr=self.lr,
            )
        )


class ObjectiveMethod:
    """Mixin of a method whose network is the suite's recipe trained from scratch with its own objective.

    The network is the base recipe (same network, optimiser, schedule, epochs and seed) with
    ``objective`` and :meth:`objective_params` in place of cross-entropy; an objective that
    needs a method head (:mod:`oodlab.models.heads`) gets its network built with it. Subclasses
    set ``objective`` and ``head`` (the head class their score reads, or ``None``).
    """

    name: str
    objective: str
    head: type | None = None

    def objective_params(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_objective(self) -> None:
        """Build the objective once, so a bad parameter fails here, naming the detector and parameter."""
        try:
            create_objective(self.objective, **self.objective_params())
        except OodlabError as e:
            raise OodlabError(f"detector {self.name!r}: {e}") from None

    def network(self, base: TrainConfig) -> Network:
        return Network.single(
            replace(
                base,
                objective=self.objective,
                objective_params=self.objective_params(),
                aux=None,
                init_from=None,
            )
        )

    def method_head(self, model: nn.Module) -> Any:
        """``model.head`` if the network has this method's head; else an error saying how to build it."""
        head = getattr(model, "head", None)
        if self.head is not None and not isinstance(head, self.head):
            raise OodlabError(
                f"detector {self.name!r} scores a network trained with objective {self.objective!r}, whose "
                f"final layer is a {self.head.name!r} head (got {type(head).__name__}); build it with "
                "make_network(det.network(recipe), id_train)"
            )
        return head


class HeadMethod(ObjectiveMethod):
    """Mixin of a method scored from its head on the penultimate features (BINC, VIB, VIBY).

    It reads the ``penultimate`` tap of the shared forward pass (nothing from the training set)
    and refuses, at ``fit``, a network without its head.
    """

    needs = TAPS

    def required_taps(self, model: nn.Module) -> tuple[str, ...]:
        return (PENULTIMATE,)

    def train_taps(self, model: nn.Module) -> tuple[str, ...]:
        return ()

    def _fit(
        self, model: nn.Module, id_train: ImageSet, id_val: ImageSet | None, ood_val: ImageSet | None
    ) -> None:
        self.method_head(model)

    def penultimate(self, out: Outputs) -> Tensor:
        """The ``penultimate`` tap, moved to the network's device (the outputs cache keeps a CPU copy)."""
        return out.tap(PENULTIMATE).to(model_device(self.model_))  # type: ignore[attr-defined]
