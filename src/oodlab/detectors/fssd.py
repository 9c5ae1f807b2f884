"""Feature-space-singularity distance (FSSD): one tap (``fssd``) and a per-tap ensemble.

Huang et al. observe that a network maps OOD inputs close to one point of its feature space,
the *feature space singularity* ``F*``, which uniform noise images reveal: the mean of a tap's
features over noise. The distance of an input's features to ``F*`` is then an ID score.

Memory: FSSD reads a tap's *full, flattened* map (not pooled). For a conv tap that is large
(LeNet's ``conv2`` is 36,864 floats per image, 1.5 GB for 10,000 images), so the detector never
asks the shared forward pass for the maps: it asks for a :class:`~oodlab.features.ReducedTap`
per tap, the distance to ``F*`` computed batch by batch inside the pass, and only that ``(N,)``
vector is kept (and cached on disk). Without perturbation FSSD is therefore scored from the
same single pass as every other gradient-free detector. ``F*`` follows from the model, the noise
seed and count, and the image shape; it is computed once per model and shape (100 noise images)
the first time a batch of that shape is seen, and fitting uses the same centres.
With a perturbation the detector needs input gradients and runs the model itself, batch by
batch, keeping only the distances; peak memory is one batch of full maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from oodlab import features
from oodlab.data.imageset import ImageSet
from oodlab.detectors._ensemble import ValidationEnsemble, check_taps, per_instance
from oodlab.detectors._registry import register_detector
from oodlab.detectors._tuning import tune_single_score
from oodlab.detectors.base import INPUT_GRADIENT, SHARED_PASS, TAPS, Capabilities, Detector
from oodlab.detectors.mahalanobis import eval_mode
from oodlab.errors import OodlabError
from oodlab.features import LOGITS, Outputs, ReducedTap, batches, model_device, model_fingerprint
from oodlab.models.base import PENULTIMATE

#: The reference's perturbation magnitudes (``search_FSS_hyperparams``), 22 values.
PERTURBATIONS: tuple[float, ...] = (
    0.2, 0.18, 0.16, 0.14, 0.12, 0.1, 0.08, 0.06, 0.04, 0.02, 0.01,
    0.008, 0.006, 0.004, 0.002, 0.001, 0.0008, 0.0006, 0.0004, 0.0002, 0.0001, 0.0,
)  # fmt: skip


# -- the singularity and the distance, on tensors ------------------------------------------


def noise_images(model: nn.Module, shape: tuple[int, int, int], n: int, seed: int) -> Tensor:
    """The ``n`` uniform-noise images ``F*`` is averaged over, as pixels for ``model``.

    The reference feeds ``(randint(0, 255) − 127.5) / 255``, i.e. U[−0.5, 0.5), *straight into
    the network*, past the dataset normalisation. oodlab models normalise inside themselves,
    so to show the network the same input the noise ``u ~ U[−0.5, 0.5)`` is drawn in the
    normalised space (seeded ``torch.Generator``) and mapped back to pixels as
    ``u · input_std + input_mean`` (pixels outside [0, 1] are intended).
    """
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand((int(n), *shape), generator=g, dtype=torch.float32) - 0.5
    mean = getattr(model, "input_mean", torch.zeros(1)).detach().cpu().float()
    std = getattr(model, "input_std", torch.ones(1)).detach().cpu().float()
    return u * std.reshape(1, -1, 1, 1) + mean.reshape(1, -1, 1, 1)


def tap_features(model: nn.Module, x: Tensor, taps: Sequence[str]) -> dict[str, Tensor]:
    """Flattened full maps ``{tap: (N, D)}`` (``"logits"`` allowed) from one forward pass."""
    logits, raw = model.forward_taps(x, set(taps) - {LOGITS})  # type: ignore[operator]
    return {t: (logits if t == LOGITS else raw[t]).flatten(1) for t in taps}


def singularity(
    model: nn.Module, noise: Tensor, taps: Sequence[str], batch_size: int = features.BATCH_SIZE
) -> dict[str, Tensor]:
    """``F*_k`` = mean over ``noise`` of tap ``k``'s flattened map, float64 ``(D_k,)`` per tap."""
    sums: dict[str, Tensor] = {}
    device = model_device(model)
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(noise), batch_size):
            feats = tap_features(model, noise[start : start + batch_size].to(device), taps)
            for t, f in feats.items():
                s = f.to(torch.float64).sum(0).cpu()
                sums[t] = sums[t] + s if t in sums else s
    return {t: s / len(noise) for t, s in sums.items()}


def fss_distance(feats: Tensor, centre: Tensor) -> Tensor:
    """``‖F − F*‖₂`` per input, ``(N,)`` float64; ``feats`` ``(N, ...)``, ``centre`` flattened.

    Computed in the features' dtype (float32) over the map as it lies in memory: the shared pass
    runs this on every batch of full conv maps, where a float64 copy costs as much memory
    traffic as the forward pass itself. The difference is taken before squaring (no
    ``‖F‖² − 2F·F* + ‖F*‖²`` cancellation), so small distances keep float32's relative accuracy.
    """
    c = centre.to(device=feats.device, dtype=feats.dtype).reshape(1, *feats.shape[1:])
    if feats.ndim == 4 and feats.is_contiguous(memory_format=torch.channels_last):
        # laid out as the maps, the subtraction is one straight pass (about 2× faster on a CPU)
        c = c.contiguous(memory_format=torch.channels_last)
    dims = tuple(range(1, feats.ndim))
    return torch.linalg.vector_norm(feats - c, dim=dims).to(torch.float64)


def standardised_gradients(
    model: nn.Module, x: Tensor, taps: Sequence[str], centres: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Per tap, the reference's perturbation direction, in pixel units ``(N, C, H, W)``.

    ``g = ∇_z (−‖F_k − F*_k‖)`` with ``z`` the normalised input (``= ∇ₓ · std``), standardised
    to zero mean and unit standard deviation *per image* (the reference standardises over the
    whole batch, which would make scores depend on the batch). A step ``m·ĝ/std`` in normalised
    space, as the reference takes, is the step ``m·ĝ`` in pixels. One forward pass for all taps,
    one ``torch.autograd.grad`` per tap (input only: no ``.grad`` on parameters).
    """
    std = getattr(model, "input_std", torch.ones(1)).detach().to(x.device).reshape(1, -1, 1, 1)
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        feats = tap_features(model, xg, taps)
        out = {}
        for i, t in enumerate(taps):
            loss = -fss_distance(feats[t], centres[t]).sum()
            (grad,) = torch.autograd.grad(loss, xg, retain_graph=i + 1 < len(taps))
            g = (grad * std).flatten(1).to(torch.float64)
            mu, sd = g.mean(1, keepdim=True), g.std(1, keepdim=True)
            g = torch.where(
                sd > 0, (g - mu) / torch.where(sd > 0, sd, torch.ones_like(sd)), torch.zeros_like(g)
            )
            out[t] = g.to(x.dtype).reshape(x.shape)
    return out


def perturbed_distances(
    model: nn.Module, x: Tensor, directions: dict[str, Tensor], m: float, centres: dict[str, Tensor]
) -> Tensor:
    """Per-tap distances ``(N, k)`` of ``x + m·ĝ_k`` (each tap on its own perturbed input)."""
    cols = []
    with torch.no_grad():
        for t, d in directions.items():
            f = tap_features(model, x + m * d, [t])[t]
            cols.append(fss_distance(f, centres[t]).cpu())
    return torch.stack(cols, dim=1)


def _capabilities(det: _FSSDBase) -> Capabilities:
    """The shared pass without a perturbation; else input gradients."""
    return SHARED_PASS if det._uses_shared_pass() else INPUT_GRADIENT


class _FSSDBase(Detector):
    """Fitting and scoring shared by ``fssd`` and ``fssd-ensemble``."""

    n_noise: int
    seed: int
    perturbation: float | None
    grid: list[float]

    def _taps(self, model: nn.Module) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _uses_shared_pass(self) -> bool:
        m = getattr(self, "perturbation_", self.perturbation)
        return m is not None and m == 0

    needs = TAPS
    capabilities = per_instance(SHARED_PASS)(_capabilities)  # type: ignore[assignment]

    def required_taps(self, model: nn.Module) -> tuple[ReducedTap, ...]:
        """One :class:`~oodlab.features.ReducedTap` per tap: the distance to ``F*``, ``(N,)``."""
        if not self._uses_shared_pass():
            return ()
        taps = getattr(self, "taps_", None) or self._taps(model)
        check_taps(self.name, model, taps, allow_logits=True)
        return self._distance_taps(model, taps)

    def train_taps(self, model: nn.Module) -> tuple[ReducedTap, ...]:
        """None: the centre comes from noise images, and fitting reads only the training set's
        image shape (its distances would be a wasted reduction over every conv map)."""
        return ()

    def _distance_taps(self, model: nn.Module, taps: Sequence[str]) -> tuple[ReducedTap, ...]:
        fingerprint = model_fingerprint(model)  # once per pass, not per batch
        return tuple(self._distance_tap(model, t, fingerprint) for t in taps)

    def _distance_tap(self, model: nn.Module, tap: str, fingerprint: str) -> ReducedTap:
        def distance(value: Tensor, x: Tensor) -> Tensor:
            return fss_distance(value, self._centres_for(model, tuple(x.shape[1:]), fingerprint)[tap])

        return ReducedTap(tap, self._distance_key(tap), distance)

    def _distance_key(self, tap: str) -> str:
        # F* follows from the model (part of every cache key), the image shape (part of the
        # images' hash), the noise count and seed: those two go in the key.
        return f"{tap}@fssd(n_noise={int(self.n_noise)},seed={int(self.seed)})"

    def _centres_for(
        self, model: nn.Module, shape: tuple[int, ...], fingerprint: str | None = None
    ) -> dict[str, Tensor]:
        """``F*`` of every tap for ``model`` and images of ``shape``, computed once and memoised.

        A fitted detector uses its own (saved) centres for images of the shape it was fitted on.
        """
        if getattr(self, "image_shape_", None) == list(shape):
            return self._centres()
        taps = getattr(self, "taps_", None) or self._taps(model)
        fingerprint = fingerprint or model_fingerprint(model)
        key = (fingerprint, shape, int(self.n_noise), int(self.seed), tuple(taps))
        memo = self.__dict__.setdefault("_centre_memo", {})
        if key not in memo:
            noise = noise_images(model, shape, self.n_noise, self.seed)  # type: ignore[arg-type]
            memo.clear()
            memo[key] = singularity(model, noise, taps, self.batch_size)
        return memo[key]

    def _check_params(self) -> None:
        if int(self.n_noise) < 1:
            raise OodlabError(f"detector {self.name!r}: n_noise must be at least 1, got {self.n_noise}")
        values = list(self.grid) if self.perturbation is None else [self.perturbation]
        if not values or any(not np.isfinite(v) or v < 0 for v in values):
            raise OodlabError(f"detector {self.name!r}: perturbations must be finite and >= 0, got {values}")

    def _fit_centres(self, model: nn.Module, id_train: ImageSet) -> list[str]:
        self._check_params()
        taps = self._taps(model)
        check_taps(self.name, model, taps, allow_logits=True)
        centres = self._centres_for(model, tuple(id_train.shape))
        self.taps_ = list(taps)
        self.dims_ = [int(centres[t].numel()) for t in taps]
        self.centres_ = torch.cat([centres[t] for t in taps])
        self.image_shape_ = list(id_train.shape)
        return taps

    def _centres(self) -> dict[str, Tensor]:
        return dict(zip(self.taps_, torch.split(self.centres_, self.dims_), strict=True))

    def _distances_from_outputs(self, out: Outputs) -> Tensor:
        # Reading needs only the keys: no model fingerprint, no ReducedTap.
        return torch.stack([out.tap(self._distance_key(t)).to(torch.float64) for t in self.taps_], dim=1)

    def _distances_from_inputs(self, x: Tensor, m: float) -> Tensor:
        model, centres = self.model_, self._centres()
        x = x.to(model_device(model))
        with eval_mode(model):
            if m > 0:
                return perturbed_distances(
                    model, x, standardised_gradients(model, x, self.taps_, centres), m, centres
                )
            with torch.no_grad():
                feats = tap_features(model, x, self.taps_)
            return torch.stack([fss_distance(feats[t], c).cpu() for t, c in centres.items()], dim=1)

    def _validation_distances(
        self, model: nn.Module, images: ImageSet, candidates: Sequence[float]
    ) -> dict[float, Tensor]:
        """Per-tap distances ``(N, k)`` for every magnitude; one gradient pass per image."""
        centres = self._centres()
        result: dict[float, Tensor] = {}
        if any(m == 0 for m in candidates):
            out = features.outputs(model, images, self._distance_taps(model, self.taps_))
            result[0.0] = self._distances_from_outputs(out)
        positive = [float(m) for m in candidates if m > 0]
        if positive:
            chunks: dict[float, list[Tensor]] = {m: [] for m in positive}
            device = model_device(model)
            with eval_mode(model):
                for xb in batches(images, self.batch_size):
                    xb = xb.to(device)
                    directions = standardised_gradients(model, xb, self.taps_, centres)  # reused for every m
                    for m in positive:
                        chunks[m].append(perturbed_distances(model, xb, directions, m, centres))
            result.update({m: torch.cat(c) for m, c in chunks.items()})
        return result


@register_detector("fssd")
class FSSD(_FSSDBase):
    """Distance of a tap's features to the feature space singularity.

    ``score(x) = ‖F_k(x̃) − F*_k‖₂`` where ``F_k`` is tap ``k``'s full map, flattened (not
    pooled), and ``F*_k`` its mean over ``n_noise`` uniform-noise images (see
    :func:`noise_images`: U[−0.5, 0.5) as the network's normalised input, as in the reference).
    OOD inputs collapse towards ``F*``, so a larger distance means more ID.

    Optional perturbation (the reference's input preprocessing): ``x̃ = x + m·ĝ`` with ``ĝ`` the
    gradient of ``−‖F_k(x) − F*_k‖`` with respect to the normalised input, standardised per
    image (see :func:`standardised_gradients`); the step moves ``x`` towards ``F*`` as the
    reference's does. ``m = 0`` (the default) scores the unperturbed input.

    Args:
        tap: A tap of the model (``model.tap_names``) or ``"logits"``.
        n_noise: Noise images averaged for ``F*`` (the reference's 100).
        seed: Seed of the noise (same seed, same ``F*``).
        perturbation: ``m``; ``0`` none; ``None`` tunes it on validation data: the value of
            ``grid`` with the lowest FPR@95%TPR on (``id_val``, ``ood_val``).
        grid: Candidate ``m`` (default the reference's 22 values 0.2 … 0.0001, 0).

    Returns:
        ``(N,)`` float64, at least 0; higher = more in-distribution.

    References:
        Huang et al., "Feature Space Singularity for Out-of-Distribution Detection", SafeAI @
        AAAI 2021; reference code github.com/megvii-research/FSSD_OoD_Detection.

    Example:
        >>> det = create_detector("fssd", tap="penultimate").fit(model, id_train)  # doctest: +SKIP
        >>> det.score(x)  # doctest: +SKIP
    """

    @per_instance(False)
    def tunes(self) -> bool:  # type: ignore[override]
        """True when the perturbation is tuned on validation data (``perturbation=None``)."""
        return self.perturbation is None

    def __init__(
        self,
        tap: str = PENULTIMATE,
        n_noise: int = 100,
        seed: int = 0,
        perturbation: float | None = 0.0,
        grid: Sequence[float] = PERTURBATIONS,
    ) -> None:
        self.tap = tap
        self.n_noise = n_noise
        self.seed = seed
        self.perturbation = perturbation
        self.grid = [float(m) for m in grid]

    def _taps(self, model: nn.Module) -> list[str]:
        return [self.tap]

    def _fit(self, model, id_train, id_val, ood_val) -> None:  # type: ignore[no-untyped-def]
        if self.perturbation is None:
            id_val, ood_val = self._require_validation(id_val, ood_val, "the perturbation")
        self._fit_centres(model, id_train)
        if self.perturbation is not None:
            self.perturbation_ = float(self.perturbation)
            return
        s_id = self._validation_distances(model, id_val, self.grid)
        s_ood = self._validation_distances(model, ood_val, self.grid)
        self.perturbation_ = tune_single_score(self, "perturbation", self.grid, s_id, s_ood, id_val, ood_val)

    def _score_outputs(self, out: Outputs) -> Tensor:
        return self._distances_from_outputs(out)[:, 0]

    def _score_inputs(self, x: Tensor) -> Tensor:
        return self._distances_from_inputs(x, self.perturbation_)[:, 0]


@register_detector("fssd-ensemble")
class FSSDEnsemble(ValidationEnsemble, _FSSDBase):
    """FSSD at every tap, combined by a logistic regression fitted on validation data.

    ``score(x) = Σ_k α_k (FSSD_k(x̃_k) − m_k) / s_k + b``: ``FSSD_k`` the distance of
    :class:`FSSD` at tap ``k`` (each tap with its own perturbed input when ``m > 0``, one ``m``
    shared by all, as in the reference), ``m_k, s_k`` standardise the distances, and ``α, b``
    are a logistic regression (ID = 1, L2, ``C = 1``; the reference uses ``LogisticRegressionCV``
    on raw distances) of ID vs OOD validation images, fitted on the first half of ``id_val`` and
    ``ood_val``; ``m`` (when tuned) is the grid value whose combined score has the lowest
    FPR@95%TPR on the second halves. Given 1000 + 1000 validation images this is the reference's
    500 / 500 split; the paper's FMNIST → MNIST 99.6 AUROC is this ensemble with MNIST itself
    as OOD validation (``--protocol paper``).

    Args:
        taps: Taps to combine; default every tap of the model and the logits (LeNet:
            conv1, conv2, penultimate, logits, the reference's four).
        n_noise, seed, perturbation, grid: As for :class:`FSSD`.

    Returns:
        ``(N,)`` float64, the regression's log-odds of ID; higher = more in-distribution.

    References:
        Huang et al., "Feature Space Singularity for Out-of-Distribution Detection", SafeAI @
        AAAI 2021; reference code github.com/megvii-research/FSSD_OoD_Detection (``test_fss.py``).

    Example:
        >>> det = create_detector("fssd-ensemble").fit(model, id_train, id_val=v, ood_val=o)  # doctest: +SKIP
        >>> det.coef_, det.score(x)  # doctest: +SKIP
    """

    tunes = True
    capabilities = per_instance(INPUT_GRADIENT)(_capabilities)  # type: ignore[assignment]

    def __init__(
        self,
        taps: Sequence[str] | None = None,
        n_noise: int = 100,
        seed: int = 0,
        perturbation: float | None = 0.0,
        grid: Sequence[float] = PERTURBATIONS,
        combination: str = "validated",
    ) -> None:
        self.taps = None if taps is None else list(taps)
        self.n_noise = n_noise
        self.seed = seed
        self.perturbation = perturbation
        self.grid = [float(m) for m in grid]
        self.combination = combination

    def _taps(self, model: nn.Module) -> list[str]:
        if self.taps is not None:
            if not self.taps:
                raise OodlabError(
                    f"detector {self.name!r}: taps= is empty; name at least one tap or pass None"
                )
            return list(self.taps)
        names = getattr(model, "tap_names", None)
        if names is None:
            check_taps(self.name, model, [])
        return [*names, LOGITS]

    def _fit(self, model, id_train, id_val, ood_val) -> None:  # type: ignore[no-untyped-def]
        self._check_combination()
        id_val, ood_val = self._require_validation(id_val, ood_val, "its layer weights")
        taps = self._fit_centres(model, id_train)
        grid = self.grid if self.perturbation is None else [float(self.perturbation)]
        s_id = self._validation_distances(model, id_val, grid)
        s_ood = self._validation_distances(model, ood_val, grid)
        self.perturbation_ = self._fit_ensemble(
            "perturbation", "alpha", taps, grid, s_id, s_ood, id_val, ood_val
        )

    def _members_outputs(self, out: Outputs) -> Tensor:
        return self._distances_from_outputs(out)

    def _members_inputs(self, x: Tensor) -> Tensor:
        return self._distances_from_inputs(x, self.perturbation_)


__all__ = ["FSSD", "FSSDEnsemble", "PERTURBATIONS", "fss_distance", "noise_images", "singularity"]
