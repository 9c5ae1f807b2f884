"""KNN's floor: the bank × queries matrix product and a top-k, nothing else.

An exact k-nearest-neighbour search cannot cost less than computing every query's distance to
every stored feature and keeping the k smallest. The floor times exactly that with the same
BLAS (``torch.addmm``), the same blocking (the queries and bank tiles
:func:`oodlab.detectors.knn.kth_neighbour_distances` uses) and ``torch.topk(k)`` per block,
without the candidate merge and the exact float64 re-check that make oodlab's search exact.
Benchmarks divide the search's time by the floor's, timed in the same run.
"""

from __future__ import annotations

import torch
from torch import Tensor

from oodlab.detectors.knn import row_sq_norms, search_blocks


def matmul_topk_floor(queries: Tensor, bank: Tensor, k: int, chunk_size: int = 1024) -> Tensor:
    """Squared-distance ranks ``‖b‖² − 2 q·b`` blockwise and the ``k`` smallest per block.

    Returns the last block's top-k values (so the work cannot be optimised away).
    """
    bank_sq = row_sq_norms(bank)
    q_step, b_step = search_blocks(len(bank), len(queries), chunk_size)
    buf = torch.empty(min(q_step, len(queries)), min(b_step, len(bank)), dtype=bank.dtype)
    last = torch.empty(0)
    for qs in range(0, len(queries), q_step):
        q = queries[qs : qs + q_step]
        for bs in range(0, len(bank), b_step):
            tile = bank[bs : bs + b_step]
            part = torch.addmm(
                bank_sq[bs : bs + b_step].unsqueeze(0),
                q,
                tile.T,
                beta=1.0,
                alpha=-2.0,
                out=buf[: len(q), : len(tile)],
            )
            last = torch.topk(part, min(k, len(tile)), dim=1, largest=False, sorted=False).values
    return last
