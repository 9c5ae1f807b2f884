"""``either``: flag an input if either (any) member detector flags it, as one continuous score."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from oodlab.data.imageset import ImageSet
from oodlab.detectors._ensemble import per_instance
from oodlab.detectors._registry import create_detector, get_detector_class, list_detectors, register_detector
from oodlab.detectors.base import Capabilities, Detector
from oodlab.errors import OodlabError
from oodlab.features import Outputs
from oodlab.training.recipes import Network
from oodlab.training.trainer import TrainConfig


def percentile_ranks(val_sorted: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``p(s)`` = share of the (sorted) validation scores at or below ``s``, in [0, 1], float64."""
    return np.searchsorted(val_sorted, scores, side="right") / len(val_sorted)


def either_scores(val_scores: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> np.ndarray:
    """``min_m p_m(s_m)``: each member's score as its ID-validation percentile, the lowest of them.

    Thresholding this at ``t`` accepts an input exactly when every member's score is at or
    above the ID-validation score of its own percentile ``t``: "reject if either flags".

    Args:
        val_scores: Each member's scores on the ID validation images.
        scores: Each member's scores on the images to combine (same order of members).
    """
    if len(val_scores) != len(scores) or len(scores) < 2:
        raise OodlabError(f"either needs the scores of two or more members, got {len(scores)}")
    ranks = [
        percentile_ranks(np.sort(np.asarray(v, dtype=np.float64)), np.asarray(s, dtype=np.float64))
        for v, s in zip(val_scores, scores, strict=True)
    ]
    return np.min(np.stack(ranks), axis=0)


def parse_members(spec: str | Sequence[str], detector: str = "either") -> list[str]:
    """``"odin+hscae"`` (or a list) → member names, checked: two or more, registered, distinct."""
    names = [n.strip() for n in spec.split("+")] if isinstance(spec, str) else [str(n) for n in spec]
    if len(names) < 2 or any(not n for n in names):
        raise OodlabError(
            f"detector {detector!r} needs two or more members joined by '+', e.g. either:odin+hscae; "
            f"got {'+'.join(names) or 'none'}"
        )
    for n in names:
        if n == "either" or n not in list_detectors():
            raise OodlabError(
                f"detector {detector!r}: unknown member {n!r}; members are registered detectors other than "
                f"either: {', '.join(d for d in list_detectors() if d != 'either')}"
            )
    if len(set(names)) != len(names):
        raise OodlabError(f"detector {detector!r} names a member twice: {'+'.join(names)}")
    return names


def combined_capabilities(classes: Sequence[type[Detector]]) -> Capabilities:
    """How a combination of detectors runs: from the shared pass only if every member does."""
    caps = [c.capabilities for c in classes]
    return Capabilities(
        shared_pass=all(c.shared_pass for c in caps),
        input_gradient=any(c.input_gradient for c in caps),
        stochastic=any(c.stochastic for c in caps),
        trains=any(c.trains for c in caps),
    )


@register_detector("either")
class Either(Detector):
    """Either of its members flags it: ``score(x) = min_m p_m(s_m(x))``.

    Each member ``m`` is fitted (and tunes what it tunes) as on its own; ``p_m(s)`` is the
    share of its scores on the ID validation images at or below ``s``. An input is accepted at
    threshold ``t`` exactly when every member accepts it at that member's own ID-validation
    percentile ``t``, so choosing ``t`` on ID validation data (``oodlab bench --accept-rate``)
    is "flag if either flags" with every member's threshold set on validation data too; as a
    continuous score it gives AUROC and FPR@95 the same meaning as for any detector.

    Spelled ``either:odin+hscae`` on the command line (``create_detector("either:odin+hscae")``
    or ``create_detector("either", members=["odin", "hscae"])``): two or more registered
    detectors, post-hoc or trained, with their default parameters unless ``params`` gives
    some (``{"hscae": {"levels": 5}}``). Members score one network: the suite's, or the one
    network a trained member makes, if it keeps the suite's classifier (``hscae`` does: post-hoc
    members score its frozen classifier).

    Returns:
        ``(N,)`` float64 in [0, 1]; higher = more in-distribution.

    References:
        The ODIN + HSCAE ensemble of the HSCAE report ("OOD if either flags it"), whose ODIN
        member is Liang, Li & Srikant, "Enhancing the Reliability of Out-of-distribution Image
        Detection in Neural Networks", ICLR 2018; each member's own references.
    """

    tunes = True  # the members' percentiles come from ID validation data
    quick_params: ClassVar[dict[str, Any]] = {"members": ["msp", "energy"]}
    #: Set on the classes that ``either:a+b`` names (:meth:`specialise`).
    default_members: ClassVar[tuple[str, ...] | None] = None

    def __init__(
        self, members: Sequence[str] | str | None = None, params: dict[str, Any] | None = None
    ) -> None:
        fixed = type(self).default_members
        if members is None:
            if fixed is None:
                raise OodlabError(
                    "detector 'either' needs two or more members: spell it either:a+b "
                    "(e.g. either:odin+hscae)"
                )
            members = fixed
        names = parse_members(members, self.name)
        if fixed is not None and tuple(names) != fixed:
            raise OodlabError(f"detector {self.name!r} has members {'+'.join(fixed)}, got {'+'.join(names)}")
        params = dict(params or {})
        for k in params:
            if k not in names:
                raise OodlabError(f"detector {self.name!r}: params names {k!r}, which is not a member")
        self.members = names
        self.params = params
        # Built now so that a bad member parameter is an error before anything trains.
        self._members = [create_detector(n, **params.get(n, {})) for n in names]

    @classmethod
    def specialise(cls, spec: str) -> type[Either]:
        """The class ``either:<spec>`` names: members fixed to ``spec`` (``"odin+hscae"``)."""
        names = tuple(parse_members(spec, f"either:{spec}"))
        caps = combined_capabilities([get_detector_class(n) for n in names])
        return type(
            f"Either[{'+'.join(names)}]",
            (cls,),
            {
                "name": f"either:{'+'.join(names)}",
                "default_members": names,
                "capabilities": caps,
                "__doc__": cls.__doc__,
                "__module__": __name__,
            },
        )

    @per_instance(Capabilities(shared_pass=False))
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """From the shared pass only if every member is; trains if a member trains."""
        return combined_capabilities([type(m) for m in self._members])

    @per_instance(frozenset({"logits"}))
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset().union(*(m.needs for m in self._members))

    # -- the network ---------------------------------------------------------------------------
    def network(self, base: TrainConfig) -> Network:
        """The one network every member scores (the suite's, or the one a trained member makes)."""
        own = Network.single(base)
        made = {}
        for m in self._members:
            net = m.network(base)
            if net.identity() != own.identity():
                made.setdefault(repr(net.identity()), (m.name, net))
        if not made:
            return own
        (first, net), *others = made.values()
        if others:
            raise OodlabError(
                f"detector {self.name!r}: members {first} and {others[0][0]} train different networks; "
                "combine members that score one network"
            )
        keeps_base = len(net.members) == 1 and net.members[0].classifier == base
        post_hoc = [m.name for m in self._members if m.network(base).identity() == own.identity()]
        if post_hoc and not keeps_base:
            raise OodlabError(
                f"detector {self.name!r}: {first} trains a network of its own that replaces the suite's "
                f"classifier, which {', '.join(post_hoc)} would score; combine it with trained members only"
            )
        return net

    def check_network(self, base: TrainConfig) -> None:
        self.network(base)
        for m in self._members:
            m.check_network(base)

    def required_taps(self, model: nn.Module) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for m in self._members for t in m.required_taps(model)))

    def train_taps(self, model: nn.Module) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t for m in self._members for t in m.train_taps(model)))

    # -- fitting -------------------------------------------------------------------------------
    def _fit(
        self, model: nn.Module, id_train: ImageSet, id_val: ImageSet | None, ood_val: ImageSet | None
    ) -> None:
        if id_val is None:
            raise OodlabError(
                f"detector {self.name!r} ranks each member's score among its scores on ID validation "
                "images; pass id_val= to fit()"
            )
        val = []
        for m in self._members:
            m.fit(model, id_train, id_val=id_val, ood_val=ood_val)
            val.append(np.sort(m.score_set(id_val).numpy()))
        self.val_scores_ = torch.as_tensor(np.stack(val))
        chosen = {m.name: (m.tuning().get("chosen") or {}) for m in self._members}
        self._record_tuning({"members": chosen, "percentiles_on": id_val.name}, id_val, ood_val)

    def _combine(self, member_scores: list[Tensor]) -> Tensor:
        val = self.val_scores_.numpy()
        ranks = [percentile_ranks(val[i], s.numpy()) for i, s in enumerate(member_scores)]
        return torch.as_tensor(np.min(np.stack(ranks), axis=0))

    def _bind(self) -> list[Detector]:
        for m in self._members:
            m.model_ = self.model_
        return self._members

    def _score_inputs(self, x: Tensor) -> Tensor:
        return self._combine([m.score(x) for m in self._bind()])

    def _score_outputs(self, out: Outputs) -> Tensor:
        return self._combine([m.score_outputs(out) for m in self._bind()])

    def score_set(self, images: ImageSet) -> Tensor:
        """Each member scores the set its own way (shared outputs cache, or its own passes)."""
        self._check_fitted()
        return self._finish(self._combine([m.score_set(images) for m in self._bind()]), len(images))

    # -- persistence ---------------------------------------------------------------------------
    def _fitted_state(self) -> dict[str, Any]:
        state = super()._fitted_state()
        for i, m in enumerate(self._members):
            for k, v in m._fitted_state().items():
                if k != "model_":
                    state[f"member{i}.{k}"] = v
        return state

    def _set_fitted_state(self, state: dict[str, Any]) -> None:
        own = {k: v for k, v in state.items() if not k.startswith("member")}
        super()._set_fitted_state(own)
        for i, m in enumerate(self._members):
            prefix = f"member{i}."
            m._set_fitted_state({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


__all__ = ["Either", "either_scores", "parse_members", "percentile_ranks"]
