"""ODIN: temperature scaling plus a small input perturbation that raises the softmax score."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oodlab.data.imageset import ImageSet
from oodlab.detectors._registry import register_detector
from oodlab.detectors._tuning import select_on_validation
from oodlab.detectors.base import INPUT_GRADIENT, Detector
from oodlab.detectors.logits import TEMPERATURES, log_max_softmax
from oodlab.errors import OodlabError
from oodlab.features import model_device

#: ODIN's perturbation grid in raw-pixel units (docs/methods.md, "ODIN").
NOISES: tuple[float, ...] = (0, 0.0005, 0.001, 0.0014, 0.002, 0.0024, 0.005, 0.01, 0.05, 0.1, 0.2)
DEFAULT_TEMPERATURE = 1000.0
DEFAULT_NOISE = 0.0014


def input_grad_signs(
    model: nn.Module, x: Tensor, temperatures: Sequence[float]
) -> tuple[Tensor, list[Tensor]]:
    """One forward pass of ``model`` on ``x`` and, per temperature ``T``, ``sign(∇ₓ CE(f(x)/T, ŷ))``.

    ``ŷ = argmax f(x)`` is the model's own prediction (the same at every ``T``). The loss is
    taken in float64 so that a confident input, whose float32 softmax rounds to exactly 1,
    still gets the gradient of its predicted class. The forward pass is shared by every
    ``T``; each ``T`` costs one backward pass (:func:`torch.autograd.grad`, so no ``.grad`` is
    left on the model's parameters). The model must already be in the mode wanted (eval).

    Returns:
        The logits ``f(x)`` ``(N, K)`` (detached) and one sign tensor shaped as ``x`` per ``T``.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        pred = logits.detach().argmax(dim=1)
        logits64 = logits.to(torch.float64)
        signs = []
        for i, t in enumerate(temperatures):
            loss = F.cross_entropy(logits64 / float(t), pred, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x, retain_graph=i + 1 < len(temperatures))
            signs.append(torch.sign(grad))
    return logits.detach(), signs


def _msp(logits: Tensor, t: float) -> Tensor:
    return log_max_softmax(logits, t)


@register_detector("odin")
class ODIN(Detector):
    """ODIN: maximum softmax probability at temperature ``T`` of a slightly perturbed input.

    ``score(x) = log max_i softmax(f(x̃) / T)_i`` with ``x̃ = x − ε · sign(∇ₓ CE(f(x)/T, ŷ))``
    and ``ŷ = argmax f(x)`` the model's own prediction. Stepping *against* the gradient of the
    cross-entropy of ``ŷ`` lowers that loss, so it raises the (temperature-scaled) softmax
    score; the paper's observation is that it raises it more for ID inputs than for OOD ones.
    The score is the log of MSP, computed in float64: it ranks as MSP does but never saturates.
    Where a pixel's gradient is exactly 0 it is not moved (``sign(0) = 0``), and ``x̃`` is not
    clipped to [0, 1] (as in the reference code).

    ε is in raw-pixel units. oodlab models take pixels in [0, 1] and normalise them inside the
    model, so the gradient is taken with respect to the raw pixels and the step ``ε·sign(∇ₓ)``
    on the raw input is exactly the reference code's step ``ε·sign(∇_z)/std`` in the
    normalised space ``z = (x − mean)/std``.

    ``T`` and ε default to the paper's 1000 and 0.0014 when fixed; left as ``None`` they are
    tuned on the grids to minimise FPR@95%TPR on (``id_val``, ``ood_val``). Tuning computes the
    gradient sign once per ``T`` (one forward pass is shared by all ``T``, one backward per
    ``T``) and reuses it for every ε: one more forward pass per (``T``, ε > 0); ε = 0 reuses
    the unperturbed logits.

    Args:
        temperature: ``T``; ``None`` tunes it over ``temperatures``.
        noise: ε (raw-pixel units); ``None`` tunes it over ``noises``.
        temperatures: Temperature grid used when ``temperature`` is ``None``.
        noises: Perturbation grid used when ``noise`` is ``None``.
        tune_max: Tune on at most this many images of each validation set (a seeded random
            subset; ``None``: all). The paper tunes on 1,000 held-out images; tuning costs
            about ``len(grid)`` forward passes per image (110 on the full grids), so the cap
            keeps it to minutes on a CPU.

    Returns:
        ``score`` gives ``(N,)`` float64, at most 0; higher = more in-distribution.

    References:
        Liang, Li & Srikant, "Enhancing the Reliability of Out-of-distribution Image Detection
        in Neural Networks", ICLR 2018; reference code github.com/facebookresearch/odin.

    Example:
        >>> det = create_detector("odin").fit(model, id_train, id_val=v_id, ood_val=v_ood)  # doctest: +SKIP
        >>> det.tuning()["chosen"]  # doctest: +SKIP
        {'temperature': 1000.0, 'noise': 0.0014, ...}
        >>> det.score(x)  # doctest: +SKIP
    """

    capabilities = INPUT_GRADIENT
    tunes = True
    quick_params = {"temperatures": [1, 1000], "noises": [0, 0.0014]}

    def __init__(
        self,
        temperature: float | None = None,
        noise: float | None = None,
        temperatures: Sequence[float] = TEMPERATURES,
        noises: Sequence[float] = NOISES,
        tune_max: int | None = 1000,
    ) -> None:
        self.temperature = temperature
        self.noise = noise
        self.temperatures = list(temperatures)
        self.noises = list(noises)
        self.tune_max = tune_max

    def _fit(
        self, model: nn.Module, id_train: ImageSet, id_val: ImageSet | None, ood_val: ImageSet | None
    ) -> None:
        temps = (
            [float(self.temperature)]
            if self.temperature is not None
            else [float(t) for t in self.temperatures]
        )
        noises = [float(self.noise)] if self.noise is not None else [float(e) for e in self.noises]
        if not temps or not noises:
            raise OodlabError(f"detector {self.name!r}: empty temperature or noise grid")
        if any(t <= 0 for t in temps):
            raise OodlabError(f"detector {self.name!r}: temperatures must be positive, got {temps}")
        if any(e < 0 for e in noises):
            raise OodlabError(f"detector {self.name!r}: noise magnitudes must be non-negative, got {noises}")
        if self.tune_max is not None and (isinstance(self.tune_max, bool) or int(self.tune_max) < 1):
            raise OodlabError(
                f"detector {self.name!r}: tune_max must be a positive count or None, got {self.tune_max!r}"
            )
        if len(temps) == 1 and len(noises) == 1:
            self.temperature_, self.noise_ = temps[0], noises[0]
            return
        what = " and ".join(
            w
            for w, fixed in (("the temperature", self.temperature), ("the noise", self.noise))
            if fixed is None
        )
        id_val, ood_val = self._require_validation(id_val, ood_val, what)
        tune_id, tune_ood = self._cap(id_val), self._cap(ood_val)
        grid_id = self._grid_scores(model, tune_id, temps, noises)
        grid_ood = self._grid_scores(model, tune_ood, temps, noises)
        candidates = [(t, e) for t in temps for e in noises]
        best, rows = select_on_validation(candidates, lambda c: (grid_id[c], grid_ood[c]))
        self.temperature_, self.noise_ = best
        row = rows[candidates.index(best)]
        self._record_tuning(
            {
                "temperature": self.temperature_,
                "noise": self.noise_,
                "criterion": "fpr95",
                "val_fpr95": row["fpr95"],
                "val_auroc": row["auroc"],
                "n_id_val": len(tune_id),
                "n_ood_val": len(tune_ood),
            },
            id_val,
            ood_val,
        )

    def _cap(self, images: ImageSet) -> ImageSet:
        """At most ``tune_max`` images of ``images``: a seeded random subset, in original order."""
        m = self.tune_max
        if m is None or len(images) <= m:
            return images
        keep = np.sort(np.random.default_rng(0).choice(len(images), size=m, replace=False))
        return images.subset(keep)

    def _grid_scores(
        self, model: nn.Module, images: ImageSet, temps: list[float], noises: list[float]
    ) -> dict[tuple[float, float], Tensor]:
        """Scores of ``images`` for every (T, ε): one gradient per T, one forward per (T, ε > 0)."""
        device = model_device(model)
        parts: dict[tuple[float, float], list[Tensor]] = {(t, e): [] for t in temps for e in noises}
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(images), self.batch_size):
                x = images.tensor(start, start + self.batch_size).to(device)
                logits, signs = input_grad_signs(model, x, temps)
                prev_sign: Tensor | None = None
                prev_out: dict[float, Tensor] = {}
                with torch.no_grad():
                    for t, sign in zip(temps, signs, strict=True):
                        # Rows whose sign equals the previous T's (common at large T) have the
                        # same x̃, hence the same logits: forward only the rows that changed.
                        if prev_sign is None:
                            changed = torch.ones(len(x), dtype=torch.bool, device=x.device)
                        else:
                            changed = (sign != prev_sign).flatten(1).any(dim=1)
                        for e in noises:
                            if e == 0:
                                out = logits
                            elif bool(changed.all()):
                                out = model(x - e * sign)
                            else:
                                out = prev_out[e].clone()
                                if bool(changed.any()):
                                    out[changed] = model(x[changed] - e * sign[changed])
                            prev_out[e] = out
                            parts[(t, e)].append(_msp(out, t).cpu())
                        prev_sign = sign
        finally:
            model.train(was_training)
        return {c: torch.cat(v) for c, v in parts.items()}

    def _score_inputs(self, x: Tensor) -> Tensor:
        model = self.model_
        t, e = self.temperature_, self.noise_
        x = x.to(model_device(model))
        was_training = model.training
        model.eval()
        try:
            if e == 0:
                with torch.no_grad():
                    return _msp(model(x), t)
            _, (sign,) = input_grad_signs(model, x, [t])
            with torch.no_grad():
                return _msp(model(x - e * sign), t)
        finally:
            model.train(was_training)


__all__ = ["ODIN", "input_grad_signs"]
