"""HSCAE: the distance between an image and its hierarchical self-conditioned reconstruction.

Also the distances themselves, as pure functions: :func:`ssim` (Wang et al. 2004, as
scikit-image computes it with Gaussian weights) and :func:`reconstruction_distances`, which
computes every distance at every level from one chain of reconstructions (the benchmark's
latent × level × distance grid uses it directly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from oodlab import features
from oodlab.data.imageset import ImageSet
from oodlab.detectors._registry import register_detector
from oodlab.detectors._training import check_int, check_positive
from oodlab.detectors.base import OWN_FORWARD, Detector, trains
from oodlab.errors import OodlabError
from oodlab.models.autoencoder import SelfConditionedAutoencoder
from oodlab.models.base import PENULTIMATE
from oodlab.training.recipes import Network, self_conditioned_autoencoder
from oodlab.training.trainer import TrainConfig

#: Levels shown in the report's picture of reconstructions.
ILLUSTRATED_LEVELS = 5
#: Distances between an input and its reconstruction (:func:`reconstruction_distances`).
DISTANCES = ("mse", "ssim", "softmax", "msp", "features")


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> Tensor:
    """The normalised 2-D Gaussian window of scikit-image's SSIM: radius ``int(truncate·σ + 0.5)``."""
    radius = int(truncate * sigma + 0.5)
    i = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (i / sigma) ** 2)
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity of each pair of images ``(N, C, H, W)``, float64 ``(N,)``.

    ``SSIM = ((2 μ_a μ_b + C1)(2 σ_ab + C2)) / ((μ_a² + μ_b² + C1)(σ_a² + σ_b² + C2))`` with
    local statistics under a Gaussian window (σ = 1.5, 11 × 11), ``C1 = (0.01 L)²``,
    ``C2 = (0.03 L)²``, ``L = data_range``, population (not sample) covariances; averaged over
    the positions where the window fits inside the image and over channels. This is
    ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``, which crops the window's radius from each
    border before averaging (so its border mode never enters). 1 for identical images.

    References:
        Wang, Bovik, Sheikh & Simoncelli, "Image Quality Assessment: From Error Visibility to
        Structural Similarity", IEEE TIP 2004.
    """
    if a.shape != b.shape or a.ndim != 4:
        raise OodlabError(
            f"ssim needs two (N, C, H, W) batches of one shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    win = gaussian_window(sigma)
    k = win.shape[-1]
    if min(a.shape[-2:]) < k:
        raise OodlabError(f"ssim needs images of at least {k}x{k} pixels, got {a.shape[-2]}x{a.shape[-1]}")
    n, c = a.shape[:2]
    x = a.to(torch.float64).reshape(n * c, 1, *a.shape[-2:])
    y = b.to(torch.float64).reshape(n * c, 1, *b.shape[-2:])
    w = win[None, None]

    def blur(t: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(t, w)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(n, c, -1).mean(dim=(1, 2))


def _softmax(logits: Tensor, temperature: float) -> Tensor:
    return torch.softmax(logits.to(torch.float64) / temperature, dim=1)


def reconstruction_distances(
    net: SelfConditionedAutoencoder,
    x: Tensor,
    levels: int,
    distances: Sequence[str] = DISTANCES,
    logits: Tensor | None = None,
) -> dict[str, Tensor]:
    """Distances between ``x`` and its reconstructions at levels ``1 … levels``.

    ``x̂_h`` is ``x`` fed through the autoencoder ``h`` times, each pass conditioned on the
    softmax at ``T = net.temperature`` of the *original* input (computed once). Distances, per
    image (``p(·) = softmax(f(·)/T)``, ``φ`` the classifier's penultimate features):

    - ``mse``: ``mean((x − x̂_h)²)`` over pixels;
    - ``ssim``: ``1 − SSIM(x, x̂_h)`` (:func:`ssim`);
    - ``softmax``: ``‖p(x) − p(x̂_h)‖₁``;
    - ``msp``: ``|max p(x) − max p(x̂_h)|``;
    - ``features``: ``‖φ(x) − φ(x̂_h)‖₂``.

    Args:
        net: The HSCAE network, in eval mode.
        x: Images ``(N, C, H, W)`` in [0, 1].
        levels: How many times the reconstruction is fed back (≥ 1).
        distances: Which distances to compute.
        logits: The classifier's logits on ``x``, if already known (the outputs cache).

    Returns:
        ``{distance: (levels, N) float64}``; row ``h − 1`` is level ``h``.
    """
    unknown = [d for d in distances if d not in DISTANCES]
    if unknown:
        raise OodlabError(f"unknown distance {unknown[0]!r}; known distances: {', '.join(DISTANCES)}")
    clf, t = net.classifier, net.temperature
    needs_features = "features" in distances
    with torch.no_grad():
        if needs_features:
            logits, taps = clf.forward_taps(x, [PENULTIMATE])
            phi = taps[PENULTIMATE].to(torch.float64)
        elif logits is None:
            logits = clf(x)
        p_x = _softmax(logits, t)
        recons = net.reconstructions(x, levels, logits)
        out: dict[str, list[Tensor]] = {d: [] for d in distances}
        for r in recons:
            if needs_features:
                lr, taps_r = clf.forward_taps(r, [PENULTIMATE])
                out["features"].append((taps_r[PENULTIMATE].to(torch.float64) - phi).norm(dim=1))
            elif {"softmax", "msp"} & set(distances):
                lr = clf(r)
            if "mse" in out:
                out["mse"].append((x.to(torch.float64) - r.to(torch.float64)).pow(2).flatten(1).mean(1))
            if "ssim" in out:
                out["ssim"].append(1.0 - ssim(x, r))
            if {"softmax", "msp"} & set(distances):
                p_r = _softmax(lr, t)
                if "softmax" in out:
                    out["softmax"].append((p_x - p_r).abs().sum(1))
                if "msp" in out:
                    out["msp"].append((p_x.max(1).values - p_r.max(1).values).abs())
    return {d: torch.stack(v) for d, v in out.items()}


@register_detector("hscae")
class HSCAE(Detector):
    """Hierarchical self-conditioned autoencoder (trains its network): ``score = −d(x, x̂_h)``.

    An autoencoder (:class:`~oodlab.models.autoencoder.ConditionalAutoencoder`: 14 plain convs
    down, 14 up, latent ``latent_dim``) is trained with MSE and Adam on the ID training images
    beside the suite's classifier, which stays frozen; every stage of it is conditioned on that
    classifier's softmax at T = 2 of the input. Since its decoder can only draw ID images in
    the class the classifier names, an OOD input (a held-out zero, taken for a 6) is redrawn as
    that class, and fed back ``levels`` times it drifts further; the score is the negated
    distance ``d`` (``distance``: ``mse``, ``ssim``, ``softmax``, ``msp`` or ``features``; see
    :func:`reconstruction_distances`) between the input and its reconstruction at level
    ``h = levels``. Training takes 4 passes of the ID training set (``epochs``; about 7 minutes on
    one idle CPU core for MNIST at ``width=8``, the setting ``benchmarks/hscae_budget.py`` chose
    on ID validation MSE and cost); scoring costs one classifier pass plus
    ``levels`` autoencoder passes (and a classifier pass per level for the classifier-based
    distances).

    Args:
        latent_dim: Size of the latent code (the report's 6, 8 or 10).
        levels: Hierarchy level ``h`` ≥ 1: how many times the reconstruction is fed back.
        distance: One of :data:`DISTANCES`.
        width: The autoencoder's channels at full resolution (2× and 4× deeper down).
        epochs: Training epochs of the autoencoder.
        lr: Adam's initial learning rate (cosine schedule).

    Returns:
        ``(N,)`` float64, at most 0 for ``mse``/``softmax``/``msp``/``features``; higher = more
        in-distribution.

    References:
        The hierarchical self-conditioned autoencoder of the HSCAE report (conditional
        autoencoder fed back ``n`` times, ensembled with ODIN by "flag if either flags", see
        the ``either`` detector); SSIM: Wang et al., IEEE TIP 2004.

    Example:
        >>> det = create_detector("hscae", latent_dim=8, levels=2)      # doctest: +SKIP
        >>> net, _ = make_network(det.network(suite.train), data.id_train)
        >>> det.fit(net, data.id_train).score(images)
    """

    capabilities = trains(OWN_FORWARD)
    quick_params: ClassVar[dict[str, Any]] = {"levels": 2, "width": 2, "epochs": 2, "lr": 5e-3}

    def __init__(
        self,
        latent_dim: int = 8,
        levels: int = 5,
        distance: str = "mse",
        width: int = 8,
        epochs: int = 4,
        lr: float = 2e-3,
    ) -> None:
        self.latent_dim = check_int("hscae", "latent_dim", latent_dim, 1)
        self.levels = check_int("hscae", "levels", levels, 1)
        if distance not in DISTANCES:
            raise OodlabError(
                f"detector 'hscae': unknown distance {distance!r}; known: {', '.join(DISTANCES)}"
            )
        self.distance = distance
        self.width = check_int("hscae", "width", width, 1)
        self.epochs = check_int("hscae", "epochs", epochs, 1)
        self.lr = check_positive("hscae", "lr", lr)

    def network(self, base: TrainConfig) -> Network:
        return Network.single(
            self_conditioned_autoencoder(
                base, latent_dim=self.latent_dim, width=self.width, epochs=self.epochs, lr=self.lr
            )
        )

    def _fit(
        self, model: nn.Module, id_train: ImageSet, id_val: ImageSet | None, ood_val: ImageSet | None
    ) -> None:
        if not isinstance(model, SelfConditionedAutoencoder):
            raise OodlabError(
                f"detector 'hscae' scores the autoencoder it trains beside a classifier, got a "
                f"{type(model).__name__}; build it with make_network(det.network(recipe), id_train)"
            )
        if model.autoencoder.latent_dim != self.latent_dim:
            raise OodlabError(
                f"detector 'hscae' (latent_dim={self.latent_dim}) got an autoencoder with latent "
                f"dimension {model.autoencoder.latent_dim}"
            )
        if self.distance == "ssim":
            ssim(*(id_train.tensor(0, 1),) * 2)  # a clear error now if the images are too small

    def _scores(self, x: Tensor, logits: Tensor | None = None) -> Tensor:
        model = self.model_
        was_training = model.training
        model.eval()
        try:
            d = reconstruction_distances(model, x, self.levels, (self.distance,), logits)
        finally:
            model.train(was_training)
        return -d[self.distance][-1]

    def _score_inputs(self, x: Tensor) -> Tensor:
        return self._scores(x)

    def illustration(self, id_images: Tensor, ood_images: Tensor) -> dict[str, np.ndarray]:
        """``{"reconstructions": uint8 (2, n, 1 + 5, C, H, W)}``: ID and OOD inputs and their
        reconstructions at levels 1-5 (the report's picture: a zero redrawn as another digit)."""
        self._check_fitted()
        model = self.model_
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                rows = [
                    torch.stack([x, *model.reconstructions(x, ILLUSTRATED_LEVELS)], dim=1)
                    for x in (id_images, ood_images)
                ]
        finally:
            model.train(was_training)
        grid = torch.stack(rows).clamp(0, 1).mul(255).round().to(torch.uint8)
        return {"reconstructions": grid.numpy()}

    def score_set(self, images: ImageSet) -> Tensor:
        """Scores of an :class:`ImageSet`; the classifier's logits come through the outputs cache."""
        self._check_fitted()
        logits = features.outputs(self.model_.classifier, images).logits
        x = images.tensor()
        parts = [
            self._scores(x[i : i + self.batch_size], logits[i : i + self.batch_size])
            for i in range(0, len(x), self.batch_size)
        ]
        return self._finish(torch.cat(parts) if parts else torch.empty(0), len(x))


__all__ = ["DISTANCES", "HSCAE", "gaussian_window", "reconstruction_distances", "ssim"]
