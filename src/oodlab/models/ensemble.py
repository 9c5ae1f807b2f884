"""`EnsembleModel`: several classifiers scored as one, by their mean softmax."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from oodlab.errors import OodlabError


class EnsembleModel(nn.Module):
    """Members ``f_1 … f_M`` of the same task; the output is ``log((1/M) Σ_m softmax(f_m(x)))``.

    The output is a vector of log-probabilities, so every detector that reads only softmax
    probabilities sees the ensemble's mean softmax: ``msp`` gives the deep-ensemble score (MSP
    of the mean softmax), and ``misp``, ``entropy``, ``temperature`` (softmax of the
    log-probabilities at T) and ``odin`` (through the whole ensemble's input gradient) are
    well defined on it. ``energy`` and ``maxlogit`` are not: ``logsumexp`` of log-probabilities
    is 0 for every input. The ensemble names no feature taps; feature-space detectors run on a
    single member.

    Computed in float64 (the members' log-softmax, then ``logsumexp − log M``) so that the
    most confident inputs keep distinct scores; returned in float32 like a model's logits.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise OodlabError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        first = members[0]
        for attr in ("num_classes", "in_channels", "image_size"):
            if hasattr(first, attr):
                setattr(self, attr, getattr(first, attr))

    def check_input(self, x: Tensor) -> None:
        """The first member's input check (all members take the same images)."""
        check = getattr(self.members[0], "check_input", None)
        if check is not None:
            check(x)

    def forward(self, x: Tensor) -> Tensor:
        logp = torch.stack([torch.log_softmax(m(x).to(torch.float64), dim=1) for m in self.members])
        return (torch.logsumexp(logp, dim=0) - math.log(len(self.members))).to(torch.float32)


__all__ = ["EnsembleModel"]
