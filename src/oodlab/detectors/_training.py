"""Parameter checks and the fine-tuning network shared by the methods that train their network."""

from __future__ import annotations

import math
from typing import Any

from oodlab.errors import OodlabError
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
