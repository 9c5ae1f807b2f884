"""MC dropout: the mean softmax over T stochastic forward passes with dropout on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from oodlab.data.imageset import ImageSet
from oodlab.detectors._registry import register_detector
from oodlab.detectors._training import check_int
from oodlab.detectors.base import STOCHASTIC, Detector
from oodlab.detectors.logits import log_max_softmax
from oodlab.errors import OodlabError
from oodlab.training.trainer import TrainConfig


def dropout_layers(model: nn.Module) -> list[nn.Dropout]:
    """The model's ``nn.Dropout`` modules with a rate above 0, in module order."""
    return [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]


@contextmanager
def fixed_masks(
    layers: list[nn.Dropout], masks: dict[tuple[int, int], Tensor] | _LazyMasks, p: float | None
) -> Iterator[None]:
    """Apply dropout with the masks in ``masks``, keyed by (layer index, call) within one pass.

    A dropout module applied several times in one pass (an MLP may share one) gets a mask per
    call. The model stays in eval mode (BatchNorm and the like keep their running statistics);
    a forward hook multiplies each dropout output by ``mask / (1 − p)``. A mask has the shape
    of one input (no batch dimension) and is broadcast over the batch.
    """
    calls = [0] * len(layers)

    def hook(i: int, layer: nn.Dropout) -> Any:
        def apply(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            key = (i, calls[i])
            calls[i] += 1
            mask = masks.get_mask(key, output.shape[1:]) if isinstance(masks, _LazyMasks) else masks[key]
            rate = layer.p if p is None else p
            return output * (mask.to(output.device, output.dtype) / (1.0 - rate))

        return apply

    handles = [layer.register_forward_hook(hook(i, layer)) for i, layer in enumerate(layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _LazyMasks(dict):
    """The masks of one pass, drawn per (layer, call) when first needed (their shape is known then)."""

    def __init__(self, det: MCDropout, t: int, layers: list[nn.Dropout]) -> None:
        super().__init__()
        self.det, self.t, self.layers = det, t, layers

    def get_mask(self, key: tuple[int, int], shape: torch.Size) -> Tensor:
        if key not in self:
            self[key] = self.det._mask(key, self.t, shape, self.layers[key[0]].p)
        return self[key]


class _DeterministicPrefix:
    """Compute once what comes before the first dropout layer, and replay it in later passes.

    Everything a forward pass computes before it reaches the first dropout layer does not
    depend on the dropout masks. On the first pass the outputs of the leaf modules that run
    before the first dropout layer are recorded (per call, in call order); :meth:`replay` then
    makes those modules return their recorded outputs instead of recomputing them. For the
    FSSD LeNet this skips both convolutions (about 90% of a forward pass) in passes 2…T; the
    scores are exactly those of T full passes.
    """

    def __init__(self, model: nn.Module, layers: list[nn.Dropout]) -> None:
        self.model = model
        self.dropouts = {id(m) for m in layers}
        self.outputs: dict[int, list[Tensor]] = {}
        self.calls: dict[int, int] = {}
        self.seen_dropout = False
        self.handles: list[Any] = []
        self.patched: list[nn.Module] = []

    def __enter__(self) -> _DeterministicPrefix:
        leaves = [m for m in self.model.modules() if not list(m.children())]
        for m in leaves:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            if id(m) not in self.dropouts:
                self.handles.append(m.register_forward_hook(self._record))
        return self

    def _pre(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if id(module) in self.dropouts:
            self.seen_dropout = True

    def _record(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not self.seen_dropout and isinstance(output, Tensor):
            self.outputs.setdefault(id(module), []).append(output)

    def replay(self) -> None:
        """After the first pass: serve the recorded outputs from now on."""
        if self.patched or not self.outputs:
            return
        for h in self.handles:
            h.remove()
        self.handles = []
        by_id = {id(m): m for m in self.model.modules()}
        for key, outs in self.outputs.items():
            module = by_id[key]
            counter = {"i": 0}

            def forward(
                *args: Any, _outs: list[Tensor] = outs, _c: dict[str, int] = counter, **kw: Any
            ) -> Tensor:
                out = _outs[_c["i"] % len(_outs)]
                _c["i"] += 1
                return out

            module.forward = forward  # type: ignore[method-assign]
            self.patched.append(module)

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        for module in self.patched:
            del module.forward


@register_detector("mc-dropout")
class MCDropout(Detector):
    """MC dropout: MSP of the mean softmax over ``passes`` forward passes with dropout on.

    ``score(x) = log max_i (1/T) Σ_t softmax(f(x; m_t))_i``, where ``m_t`` is the dropout mask
    of pass ``t`` (T = ``passes``, 32 as in the FSSD reference code), at each dropout layer's
    own rate or at ``p`` for all of them.

    Reproducible and independent of batching: the T masks are drawn from ``seed`` once per
    layer (one Bernoulli mask of the shape of a single input) and every image gets the same
    T masks. Each image's score therefore averages T independent dropout draws, as MC dropout
    asks, and depends only on that image: not on the batch size, the order, or which images
    are scored with it. Other layers stay in eval mode (running BatchNorm statistics). The
    scores are computed by the detector's own passes, never from the shared (deterministic)
    outputs cache. Scoring costs T forward passes.

    Raises:
        OodlabError: at ``fit``, if the network has no dropout layer.

    Returns:
        ``(N,)`` float64, at most 0; higher = more in-distribution.

    References:
        Gal & Ghahramani, "Dropout as a Bayesian Approximation: Representing Model Uncertainty
        in Deep Learning", ICML 2016; github.com/megvii-research/FSSD_OoD_Detection (T = 32).
    """

    capabilities = STOCHASTIC
    quick_params: ClassVar[dict[str, Any]] = {"passes": 4}

    def __init__(self, passes: int = 32, p: float | None = None, seed: int = 0) -> None:
        self.passes = check_int("mc-dropout", "passes (T)", passes, 1)
        if p is not None and (isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p < 1):
            raise OodlabError(f"detector 'mc-dropout': dropout rate p must be in (0, 1), got {p!r}")
        self.p = None if p is None else float(p)
        self.seed = check_int("mc-dropout", "seed", seed, 0)

    def check_network(self, base: TrainConfig) -> None:
        from oodlab.models import create_model

        try:
            model = create_model(base.model, **base.model_kwargs)
        except (OodlabError, TypeError):
            return  # the model needs the data's shape: checked at fit
        self._check_dropout(model, f"recipe model {base.model!r}")

    def _check_dropout(self, model: nn.Module, what: str) -> list[nn.Dropout]:
        layers = dropout_layers(model)
        if not layers:
            raise OodlabError(
                f"detector 'mc-dropout' needs a network with dropout, but {what} has no dropout layer "
                "(nn.Dropout with p > 0)"
            )
        return layers

    def _fit(
        self, model: nn.Module, id_train: ImageSet, id_val: ImageSet | None, ood_val: ImageSet | None
    ) -> None:
        self._check_dropout(model, type(model).__name__)

    def _score_inputs(self, x: Tensor) -> Tensor:
        model = self.model_
        layers = dropout_layers(model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), _DeterministicPrefix(model, layers) as prefix:
                probs = torch.zeros(0, dtype=torch.float64)
                for t in range(self.passes):
                    masks = _LazyMasks(self, t, layers)
                    with fixed_masks(layers, masks, self.p):
                        p_t = torch.softmax(model(x).to(torch.float64), dim=1)
                    probs = p_t if t == 0 else probs + p_t
                    prefix.replay()
        finally:
            model.train(was_training)
        return log_max_softmax(torch.log(probs / self.passes))

    def _mask(self, key: tuple[int, int], t: int, shape: torch.Size, rate: float) -> Tensor:
        """The Bernoulli keep-mask of pass ``t`` at (layer, call) ``key``; depends on the seed only."""
        layer, call = key
        gen = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + layer * 10_007 + call * 100_003 + t)
        keep = 1.0 - (rate if self.p is None else self.p)
        return torch.bernoulli(torch.full(tuple(shape), keep), generator=gen)


__all__ = ["MCDropout", "dropout_layers"]
