"""Deep nearest neighbours: distance to the k-th nearest ID training feature."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from oodlab import features
from oodlab.data.imageset import ImageSet
from oodlab.detectors._ensemble import per_instance
from oodlab.detectors._features import ROWS, FeatureFitted, check_features
from oodlab.detectors._registry import register_detector
from oodlab.detectors._tuning import select_on_validation
from oodlab.detectors.base import TAPS, Detector
from oodlab.errors import OodlabError
from oodlab.features import Outputs
from oodlab.memory import format_bytes, require_memory
from oodlab.models.base import PENULTIMATE

#: Neighbour searches ``knn`` offers (``index=``): ``exact`` (default) is oodlab's own exact
#: search; ``ivf`` and ``hnsw`` are faiss's approximate indexes (``pip install 'oodlab[faiss]'``).
INDEX_KINDS = ("exact", "ivf", "hnsw")


def l2_normalize(z: Tensor, out: Tensor | None = None, rows: int = ROWS) -> Tensor:
    """Rows of ``z`` divided by their L2 norm (+1e-10, as the reference code), in float32.

    Computed in float64 a block of ``rows`` rows at a time, into ``out`` (may be ``z`` itself,
    flattened to 2-D and float32, to normalise in place) or a new float32 tensor.
    """
    z = z.flatten(1)
    res = torch.empty(z.shape, dtype=torch.float32) if out is None else out
    for start in range(0, len(z), rows):
        z64 = z[start : start + rows].to(torch.float64)
        res[start : start + rows] = z64 / (z64.norm(dim=1, keepdim=True) + 1e-10)
    return res


#: Candidate ``k`` when it is tuned on validation data: the paper's 50 and its neighbours on a log scale.
K_GRID = (1, 2, 5, 10, 20, 50, 100, 200)

#: Candidates re-ranked exactly around the k-th, on each side, when the float32 ranking is clear.
_WINDOW = 4


def kth_neighbour_distance(
    queries: Tensor, bank: Tensor, k: int, chunk_size: int = 1024, max_elements: int = 1 << 24
) -> Tensor:
    """Euclidean distance from each row of ``queries`` to its ``k``-th nearest row of ``bank``.

    Exact up to float64 rounding, computed fast: per chunk of ``chunk_size`` queries (fewer if
    needed to keep ``chunk × len(bank) ≤ max_elements``, so memory stays bounded), one
    float32 matmul ranks the bank by ``‖b‖² − 2 q·b`` and keeps ``k + max(8, k/2)``
    candidates. A float32 dot product is off by at most
    ``tol = d·u·(max‖b‖² + 2‖q‖·max‖b‖)`` (``d`` the dimension, ``u`` float32's unit
    roundoff), so a candidate whose float32 value is more than ``2·tol`` below the ``k``-th
    candidate's is surely nearer than the exact ``k``-th neighbour, and one more than ``2·tol``
    above surely farther: only the candidates in between are recomputed in float64 and the
    right one of them is returned. A row whose candidates might miss a closer neighbour
    outside them is redone in float64 over the whole bank. The
    result therefore depends neither on the chunking nor on BLAS blocking, and near-identical
    vectors keep their precision.

    Returns:
        ``(len(queries),)`` float64.
    """
    return kth_neighbour_distances(queries, bank, [k], chunk_size, max_elements)[:, 0]


def search_blocks(
    n_bank: int, n_queries: int, chunk_size: int = 1024, max_elements: int = 1 << 24
) -> tuple[int, int]:
    """``(queries per block, bank rows per block)`` of the exact search.

    The distance block ``queries × bank rows`` holds at most ``max_elements`` float32 values
    (64 MiB by default). While that leaves room for at least 256 queries against the whole
    bank (banks up to 65,536 rows) the bank is not split; beyond it, blocks of ``chunk_size``
    queries meet the bank in tiles of ``max_elements // chunk_size`` rows, so a bank of a
    million rows is searched with the same bounded memory and with matrix products large
    enough to run near the BLAS's peak (a few queries against the whole bank would be limited
    by memory bandwidth instead).
    """
    n_bank, chunk_size, max_elements = max(1, n_bank), max(1, int(chunk_size)), max(1, int(max_elements))
    whole = max(1, min(chunk_size, max_elements // n_bank))
    if whole >= min(chunk_size, 256, max(1, n_queries)):
        return whole, n_bank
    return chunk_size, max(1, max_elements // chunk_size)


def row_sq_norms(bank: Tensor, rows: int = 65536) -> Tensor:
    """``‖b‖²`` per row, in ``bank``'s dtype, a block of rows at a time (no bank-sized temporary)."""
    return torch.cat([(b * b).sum(dim=1) for b in bank.split(rows)]) if len(bank) else bank.new_empty(0)


def kth_neighbour_distances(
    queries: Tensor, bank: Tensor, ks: Sequence[int], chunk_size: int = 1024, max_elements: int = 1 << 24
) -> Tensor:
    """:func:`kth_neighbour_distance` for several ``ks`` from one search: ``(len(queries), len(ks))``.

    The matmul and the top-k run once, for the largest ``k``; each ``k`` then gets the exact
    re-check of :func:`kth_neighbour_distance` on those candidates, so column ``j`` equals
    ``kth_neighbour_distance(queries, bank, ks[j])``. A bank too large for one distance block
    (:func:`search_blocks`) is searched tile by tile: each tile keeps its own best candidates
    and the best of those are the bank's (the same set, since every global candidate is among
    its tile's best).
    """
    n = len(bank)
    for k in ks:
        if not 1 <= k <= n:
            raise OodlabError(f"k={k} must be between 1 and the number of stored features ({n})")
    if len(queries) == 0 or not ks:
        return torch.empty(len(queries), len(ks), dtype=torch.float64)
    k_max = max(ks)
    n_cand = min(n, k_max + max(8, k_max // 2))
    bank_sq = row_sq_norms(bank)
    bank_max = float(bank_sq.max().sqrt())
    unit = float(torch.finfo(torch.float32).eps) / 2
    bank64: Tensor | None = None
    step, tile = search_blocks(n, len(queries), chunk_size, max_elements)
    # One buffer for every chunk's distances: a fresh tensor of this size is a new mmap each
    # time, whose page faults and unmapping made the matmuls take 1.6× as long (LeNet, 55k bank).
    buf = torch.empty(min(step, len(queries)), min(tile, n), dtype=bank.dtype)
    out = []
    for start in range(0, len(queries), step):
        q = queries[start : start + step]
        q64 = q.to(torch.float64)
        q_sq = (q64 * q64).sum(dim=1)
        tol = q.shape[1] * unit * (bank_max**2 + 2 * q_sq.sqrt() * bank_max)
        if tile >= n:
            part = torch.addmm(bank_sq.unsqueeze(0), q, bank.T, beta=1.0, alpha=-2.0, out=buf[: len(q)])
            vals, idx = torch.topk(part, n_cand, dim=1, largest=False, sorted=True)
        else:
            vals, idx = _tiled_topk(q, bank, bank_sq, n_cand, tile, buf)
        vals64 = vals.to(torch.float64)
        kth = torch.empty(len(q), len(ks), dtype=torch.float64)
        margin = (2 * tol).unsqueeze(1)
        for j, k in enumerate(ks):
            # Candidates whose float32 value lies more than 2·tol below the k-th one's are surely
            # nearer than the exact k-th neighbour, those more than 2·tol above surely farther:
            # only ranks [lo, hi) between are recomputed in float64, and the k-th is the
            # (k − lo)-th of those.
            p = k - 1
            vp = vals64[:, p : p + 1]
            lo = (vals64 < vp - margin).sum(dim=1)
            hi = (vals64 <= vp + margin).sum(dim=1)
            width = int((hi - lo).max())
            offsets = torch.arange(width)
            ranks = (lo.unsqueeze(1) + offsets).clamp(max=n_cand - 1)
            exact = _sq_dists_to(q64, bank, idx.gather(1, ranks))
            exact[offsets.unsqueeze(0) >= (hi - lo).unsqueeze(1)] = torch.inf
            col = exact.sort(dim=1).values.gather(1, (p - lo).unsqueeze(1))[:, 0]
            if n_cand < n:
                unsure = (vals64[:, -1] + q_sq - 2 * tol) < col
                if unsure.any():
                    if bank64 is None and n * bank.shape[1] <= max_elements:
                        bank64 = bank.to(torch.float64)
                    col[unsure] = (
                        _sq_dists64(q64[unsure], bank if bank64 is None else bank64).kthvalue(k, dim=1).values
                    )
            kth[:, j] = col
        out.append(kth.clamp(min=0).sqrt())
    return torch.cat(out)


def _tiled_topk(
    q: Tensor, bank: Tensor, bank_sq: Tensor, n_cand: int, tile: int, buf: Tensor
) -> tuple[Tensor, Tensor]:
    """The ``n_cand`` smallest ``‖b‖² − 2 q·b`` over ``bank`` searched in tiles of ``tile`` rows:
    values and bank indices ``(len(q), n_cand)``, sorted ascending."""
    vals, idx = [], []
    for bs in range(0, len(bank), tile):
        rows = bank[bs : bs + tile]
        part = torch.addmm(
            bank_sq[bs : bs + tile].unsqueeze(0),
            q,
            rows.T,
            beta=1.0,
            alpha=-2.0,
            out=buf[: len(q), : len(rows)],
        )
        v, i = torch.topk(part, min(n_cand, len(rows)), dim=1, largest=False, sorted=False)
        vals.append(v)
        idx.append(i + bs)
    v, pos = torch.topk(torch.cat(vals, dim=1), n_cand, dim=1, largest=False, sorted=True)
    return v, torch.cat(idx, dim=1).gather(1, pos)


def _sq_dists_to(q64: Tensor, bank: Tensor, idx: Tensor, max_elements: int = 1 << 22) -> Tensor:
    """Exact squared distances ``(B, m)`` in float64 from ``q64[i]`` to ``bank[idx[i, j]]``.

    As many rows at a time as keep the ``(rows, m, D)`` float64 temporary within
    ``max_elements`` (32 MiB): few large operations, since each small one pays a thread
    start-up that dominates on a busy machine (64-row pieces were 4× slower than one block).
    """
    m, d = idx.shape[1], bank.shape[1]
    rows = max(1, max_elements // max(1, m * d))
    parts = []
    for q, i in zip(q64.split(rows), idx.split(rows), strict=True):
        diff = bank[i].to(torch.float64)
        diff -= q.unsqueeze(1)
        parts.append(diff.square_().sum(dim=2))
    return torch.cat(parts) if parts else torch.empty(idx.shape, dtype=torch.float64)


def _sq_dists64(rows: Tensor, bank: Tensor, block: int = 8192) -> Tensor:
    """Exact squared distances ``(len(rows), len(bank))`` in float64, one row and a block of the
    bank at a time (``bank`` float64, or float32 converted block by block for a large bank)."""
    parts = [
        torch.cat([((r.unsqueeze(0) - b.to(torch.float64)) ** 2).sum(dim=1) for b in bank.split(block)])
        for r in rows
    ]
    return torch.stack(parts)


@register_detector("knn")
class KNN(FeatureFitted, Detector):
    """Deep k-nearest-neighbour OOD detection on L2-normalised penultimate features.

    ``score(x) = −‖ẑ(x) − ẑ_(k)‖`` where ``ẑ = z/‖z‖`` is the normalised penultimate feature
    and ``ẑ_(k)`` its ``k``-th nearest neighbour (Euclidean) among the normalised ID training
    features. Fit stores those features (float32, optionally a seeded subsample); scoring runs
    one matmul per chunk of :attr:`chunk_size` queries against all of them, then a ``topk``.
    Feature units that are zero on every stored feature are left out of the search and their
    (constant) contribution added back, which is exact.

    Args:
        k: Which neighbour. ``None`` (default) tunes it on validation data: the value of
            ``grid`` with the lowest FPR@95%TPR on (``id_val``, ``ood_val``), ties to the
            higher AUROC. On this project's LeNets that picks k = 1–2 and beats the paper's
            fixed k = 50 (its CIFAR-10 choice) on every suite and seed tried
            (``benchmarks/results/knn-k.md``); pass ``k=50`` for the paper's setting. Must not
            exceed the number of stored training features.
        grid: Candidate ``k`` values when ``k=None`` (those above the number of stored
            features are skipped).
        subsample: Keep only part of the training features: a float in (0, 1] is a fraction,
            an int ≥ 1 a count; ``None`` keeps all. Chosen with ``seed``. Scoring cost falls
            in proportion; scale ``k`` with the fraction (the paper: k=1000 on all of
            ImageNet, 10 on 1%) so the k-th neighbour stays at the same quantile.
        seed: Seed of the subsample (and of the ``ivf`` index's training sample).
        index: The neighbour search. ``"exact"`` (default): the exact search above, whose
            cost is the bank × queries matrix product (its floor, ``benchmarks/knn_floor.py``).
            ``"ivf"`` / ``"hnsw"``: faiss's approximate inverted-file (``IndexIVFFlat``, ``nlist``
            lists, ``nprobe`` searched) or graph (``IndexHNSWFlat``, ``hnsw_m`` links,
            ``ef_search``) index, for banks of millions where the exact product is too slow;
            they return approximately the k-th neighbour (recall and speed at 1.2M × 512:
            ``benchmarks/results/bank.md``). Needs ``pip install 'oodlab[faiss]'``. A neighbour
            the index does not return (fewer than k in the searched lists) counts as distance 2,
            the largest between unit vectors.
        nlist: Lists of the ``ivf`` index; ``None`` = ``4·√n`` (at most ``n / 39``, faiss's
            minimum training points per list).
        nprobe: Lists the ``ivf`` index searches per query.
        hnsw_m: Links per node of the ``hnsw`` graph.
        ef_search: Search breadth of the ``hnsw`` graph (at least ``k``).

    Returns:
        ``score`` gives ``(N,)`` float64 in ``[−2, 0]``; higher = more in-distribution.

    References:
        Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors",
        ICML 2022; reference code github.com/deeplearning-wisc/knn-ood.

    Example:
        >>> det = create_detector("knn").fit(model, id_train, id_val=v, ood_val=o)  # doctest: +SKIP
        >>> det.tuning()["chosen"]  # doctest: +SKIP
        >>> det = create_detector("knn", k=50).fit(model, id_train)  # the paper's k  # doctest: +SKIP
        >>> det.score(x)  # doctest: +SKIP
        >>> det = create_detector("knn", k=1000, index="ivf").fit_features(bank)  # doctest: +SKIP
        >>> det.score_features(query_features)  # doctest: +SKIP
    """

    needs = TAPS
    #: Queries per distance matmul; memory is about ``4 · chunk_size · n_train`` bytes.
    chunk_size: int = 1024
    quick_params = {"grid": (1, 5)}

    @per_instance(True)
    def tunes(self) -> bool:  # type: ignore[override]
        """True when ``k`` is tuned on validation data (``k=None``, the default)."""
        return self.k is None

    def __init__(
        self,
        k: int | None = None,
        subsample: float | int | None = None,
        seed: int = 0,
        grid: Sequence[int] = K_GRID,
        index: str = "exact",
        nlist: int | None = None,
        nprobe: int = 32,
        hnsw_m: int = 32,
        ef_search: int = 128,
    ) -> None:
        self.k = k
        self.subsample = subsample
        self.seed = seed
        self.grid = [int(v) for v in grid]
        self.index = index
        self.nlist = nlist
        self.nprobe = nprobe
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search

    def required_taps(self, model: nn.Module) -> tuple[str, ...]:
        return (PENULTIMATE,)

    def _n_keep(self, n: int) -> int:
        s = self.subsample
        if s is None:
            return n
        if isinstance(s, bool) or not isinstance(s, int | float):
            raise OodlabError(
                f"detector {self.name!r}: subsample must be a fraction, a count or None, got {s!r}"
            )
        if isinstance(s, float):
            if not 0.0 < s <= 1.0:
                raise OodlabError(f"detector {self.name!r}: a subsample fraction must be in (0, 1], got {s}")
            return max(1, round(s * n))
        if s < 1:
            raise OodlabError(f"detector {self.name!r}: a subsample count must be at least 1, got {s}")
        return min(s, n)

    def _check_params(self) -> None:
        for v in [self.k] if self.k is not None else self.grid:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OodlabError(f"detector {self.name!r}: k must be a positive integer, got {v!r}")
        if self.k is None and not self.grid:
            raise OodlabError(f"detector {self.name!r}: k=None tunes k over grid, but grid is empty")
        if self.index not in INDEX_KINDS:
            raise OodlabError(
                f"detector {self.name!r}: unknown index {self.index!r}; known: {', '.join(INDEX_KINDS)}"
            )
        if self.index != "exact":
            _import_faiss(self.index)

    def _fit(
        self, model: nn.Module, id_train: ImageSet, id_val: ImageSet | None, ood_val: ImageSet | None
    ) -> None:
        self._check_params()
        if self.k is None:
            id_val, ood_val = self._require_validation(id_val, ood_val, "k")
        feats = features.outputs(model, id_train, (PENULTIMATE,)).tap(PENULTIMATE)
        self._store(self._subsampled(feats), copy=True)
        if self.k is not None:
            self.k_ = self.k
            return
        grid = [v for v in self.grid if v <= self.n_bank_]
        # one neighbour search per validation set serves every candidate k
        s_id = self._scores(features.outputs(model, id_val, (PENULTIMATE,)).tap(PENULTIMATE), grid)
        s_ood = self._scores(features.outputs(model, ood_val, (PENULTIMATE,)).tap(PENULTIMATE), grid)
        best, rows = select_on_validation(list(range(len(grid))), lambda j: (s_id[:, j], s_ood[:, j]))
        self.k_ = grid[best]
        self._record_tuning({"k": self.k_, "criterion": "fpr95"}, id_val, ood_val)
        self.tuning_["candidates"] = [{"k": v, **r} for v, r in zip(grid, rows, strict=True)]

    def fit_features(self, train_features: Tensor, *, copy: bool = True) -> KNN:
        """Fit from precomputed ID training features ``(N, D)`` instead of a model and images.

        ``k`` must be given (tuning it needs validation images). With ``copy=False`` and a
        float32 ``train_features``, the features are normalised in place and kept as the bank,
        so no second bank-sized array is allocated (``train_features`` is overwritten). The
        fitted detector has no model: score with :meth:`score_features`.

        Returns:
            ``self``.
        """
        self._start_feature_fit()
        feats = check_features(self.name, train_features, "train_features")
        self._check_params()
        if self.k is None:
            raise OodlabError(
                f"detector {self.name!r}: fit_features needs a fixed k (k=None tunes k on validation "
                "images); pass k=, e.g. k=50"
            )
        self._store(self._subsampled(feats), copy=copy)
        self.k_ = self.k
        return self

    def _subsampled(self, feats: Tensor) -> Tensor:
        n_keep = self._n_keep(len(feats))
        if n_keep < len(feats):
            rng = np.random.default_rng(self.seed)
            keep = np.sort(rng.choice(len(feats), size=n_keep, replace=False))
            feats = feats[torch.from_numpy(keep)]
        smallest = self.k if self.k is not None else min(self.grid)
        if smallest > len(feats):
            raise OodlabError(
                f"detector {self.name!r}: k={smallest} is larger than the {len(feats)} training features "
                f"it keeps; lower k or keep more training data"
            )
        return feats

    def _store(self, feats: Tensor, copy: bool) -> None:
        """Normalise the training features into the bank (or the faiss index) and keep it."""
        feats = feats.flatten(1)
        n, d = feats.shape
        self.n_bank_ = n
        self._index = None
        if self.index != "exact":
            self.live_ = torch.ones(d, dtype=torch.bool)
            self._index = _build_faiss_index(self, feats)
            return
        in_place = not copy and feats.dtype == torch.float32 and feats.is_contiguous()
        if not in_place:
            require_memory(
                4 * n * d,
                f"detector {self.name!r}: the normalised feature bank ({n} × {d} float32)",
                "keep part of it with subsample=, or search approximately with index='ivf' "
                "(pip install 'oodlab[faiss]')",
            )
        bank = l2_normalize(feats, out=feats if in_place else None)
        # A unit that no stored feature uses (a ReLU unit dead on all training images) adds the
        # same ẑ_j² to a query's distance to every stored feature: it cannot change the ranking,
        # so the search runs without it and adds it back (exact; saves its share of the matmul).
        live = torch.zeros(d, dtype=torch.bool)
        for block in bank.split(ROWS):
            live |= (block != 0).any(dim=0)
        self.live_ = live
        self.bank_ = bank if bool(live.all()) else bank[:, live].contiguous()

    def _scores(self, z: Tensor, ks: Sequence[int]) -> Tensor:
        """Scores ``(N, len(ks))`` of penultimate features ``z``, one column per ``k``, from one search."""
        queries = l2_normalize(z)
        live = self.live_
        if self.index != "exact":
            return -_faiss_kth(self, queries, ks)
        d_live = kth_neighbour_distances(queries[:, live].contiguous(), self.bank_, ks, self.chunk_size)
        dead = queries[:, ~live].to(torch.float64)
        return -(d_live.square() + (dead * dead).sum(dim=1, keepdim=True)).sqrt()

    def _score_outputs(self, out: Outputs) -> Tensor:
        return self._score_features(out.tap(PENULTIMATE))

    def _score_features(self, feats: Tensor) -> Tensor:
        # detectors saved before k could be tuned have no k_: their k is the fixed one
        return self._scores(feats, [getattr(self, "k_", self.k)])[:, 0]

    def _fitted_state(self) -> dict[str, Any]:
        state = super()._fitted_state()
        if self.index != "exact":
            faiss = _import_faiss(self.index)
            state["index_blob_"] = torch.from_numpy(faiss.serialize_index(_faiss_index(self)).copy())
        return state


def _import_faiss(kind: str) -> Any:
    try:
        import faiss
    except ImportError:
        raise OodlabError(
            f"knn index={kind!r} needs faiss, which is not installed: pip install 'oodlab[faiss]'"
        ) from None
    return faiss


def _faiss_index(det: KNN) -> Any:
    """The detector's faiss index, rebuilt from its saved bytes after :func:`load_detector`."""
    index = getattr(det, "_index", None)
    if index is None:
        blob = getattr(det, "index_blob_", None)
        if blob is None:
            raise OodlabError(f"detector {det.name!r}: its faiss index is missing; fit it again")
        faiss = _import_faiss(det.index)
        index = faiss.deserialize_index(np.ascontiguousarray(torch.as_tensor(blob).numpy()))
        _set_search_params(det, index)
        det._index = index
    return index


def _set_search_params(det: KNN, index: Any) -> None:
    if det.index == "ivf":
        index.nprobe = int(det.nprobe)
    else:
        index.hnsw.efSearch = max(int(det.ef_search), int(det.k_ if hasattr(det, "k_") else det.k or 1))


def _build_faiss_index(det: KNN, feats: Tensor) -> Any:
    """A faiss index of the normalised ``feats``, filled a block at a time (no normalised copy)."""
    faiss = _import_faiss(det.index)
    n, d = feats.shape
    need = 4 * n * d + (8 * det.hnsw_m * n if det.index == "hnsw" else 8 * n)
    require_memory(need, f"detector {det.name!r}: the faiss {det.index} index of {n} × {d} features")
    if det.index == "ivf":
        nlist = det.nlist if det.nlist is not None else max(1, min(n // 39, round(4 * n**0.5)))
        if not 1 <= nlist <= n:
            raise OodlabError(f"detector {det.name!r}: nlist must be in [1, {n}], got {nlist}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        rng = np.random.default_rng(det.seed)
        n_train = min(n, 64 * nlist)
        sample = torch.from_numpy(np.sort(rng.choice(n, size=n_train, replace=False)))
        index.train(l2_normalize(feats[sample]).numpy())
    else:
        index = faiss.IndexHNSWFlat(d, int(det.hnsw_m))
    for block in feats.split(ROWS):
        index.add(l2_normalize(block).numpy())
    det.k_ = det.k if det.k is not None else max(det.grid)
    _set_search_params(det, index)
    return index


def _faiss_kth(det: KNN, queries: Tensor, ks: Sequence[int]) -> Tensor:
    """Distances ``(N, len(ks))`` float64 to the approximately k-th neighbours, from one search."""
    index = _faiss_index(det)
    k_max = max(ks)
    if det.index == "hnsw":
        index.hnsw.efSearch = max(int(det.ef_search), k_max)
    sq, found = index.search(np.ascontiguousarray(queries.numpy()), k_max)
    sq = torch.from_numpy(sq).to(torch.float64).clamp(min=0)
    sq[torch.from_numpy(found) < 0] = 4.0  # not returned: the largest squared distance of unit vectors
    return torch.stack([sq[:, k - 1] for k in ks], dim=1).sqrt()


def bank_bytes(n: int, d: int) -> str:
    """Size of an ``n × d`` float32 bank, for messages: ``2.46 GB``."""
    return format_bytes(4 * n * d)


__all__ = [
    "INDEX_KINDS",
    "K_GRID",
    "KNN",
    "bank_bytes",
    "kth_neighbour_distance",
    "kth_neighbour_distances",
    "l2_normalize",
    "search_blocks",
]
