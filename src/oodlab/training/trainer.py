"""One trainer for every oodlab model: a typed recipe, seeded, with a progress bar and a cache.

A :class:`TrainConfig` names everything that makes a network: the model, the optimiser and
schedule, the training objective with its parameters (:mod:`oodlab.training.objectives`), the
auxiliary outlier set the objective trains on (:mod:`oodlab.training.aux`), and, for a
fine-tuning step, the configuration of the base network it starts from (``init_from``), and for a
model built around a frozen classifier (the HSCAE autoencoder), that classifier's recipe
(``classifier``): it is loaded or trained first, copied into the model and never updated. The
checkpoint cache is keyed by a hash of the configuration, the training data's content and the
auxiliary set's content, so a fine-tuning step loads (or trains) its base network from the same
cache and is itself cached like any training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from oodlab import features
from oodlab.data.imageset import ImageSet
from oodlab.data.sources import cache_dir
from oodlab.device import resolve_device
from oodlab.errors import OodlabError
from oodlab.models import TappedModel, create_model
from oodlab.models._registry import model_definition
from oodlab.training.aux import build_aux, check_aux, check_aux_set
from oodlab.training.checkpoint import load_checkpoint, save_checkpoint
from oodlab.training.objectives import create_objective

#: Bump when a change to the training code changes the weights a recipe produces.
TRAINER_VERSION = 1

OPTIMIZERS = ("adadelta", "adam", "sgd")
SCHEDULES = ("none", "step", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is made. Saved as JSON beside the weights; its hash keys the checkpoint cache."""

    model: str = "lenet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adadelta"
    lr: float = 1.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "step"
    gamma: float = 0.7
    epochs: int = 3
    batch_size: int = 64
    seed: int = 0
    #: Training objective (``oodlab.training.list_objectives()``) and its parameters.
    objective: str = "cross-entropy"
    objective_params: dict[str, Any] = field(default_factory=dict)
    #: Auxiliary outlier set (``oodlab list aux``) for objectives that use one, and its size.
    aux: str | None = None
    n_aux: int = 20_000
    #: Auxiliary images per step (``None``: as many as ``batch_size``).
    aux_batch_size: int | None = None
    #: Fine-tuning: the recipe of the base network whose weights training starts from.
    init_from: TrainConfig | None = None
    #: A model built around a frozen classifier (``model.classifier``): that classifier's recipe.
    #: It is loaded (or trained) first, copied in and frozen; its logits on every training image
    #: are computed once and given to the objective as the batch's ``context``.
    classifier: TrainConfig | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise OodlabError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise OodlabError(f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise OodlabError("epochs and batch_size must be at least 1")
        for name in ("init_from", "classifier"):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, TrainConfig.from_dict(getattr(self, name)))
        uses_aux = self.make_objective().uses_aux
        if uses_aux and self.aux is None:
            raise OodlabError(f"objective {self.objective!r} trains on auxiliary outliers: name a set (aux)")
        if not uses_aux and self.aux is not None:
            raise OodlabError(
                f"objective {self.objective!r} uses no auxiliary outliers, but aux={self.aux!r}"
            )
        if self.aux is not None:
            check_aux(self.aux)
        if isinstance(self.n_aux, bool) or not isinstance(self.n_aux, int) or self.n_aux < 1:
            raise OodlabError(f"n_aux must be a positive integer, got {self.n_aux!r}")
        if self.aux_batch_size is not None and self.aux_batch_size < 1:
            raise OodlabError(f"aux_batch_size must be at least 1, got {self.aux_batch_size}")
        if self.init_from is not None and (
            self.init_from.model != self.model or self.init_from.model_kwargs != self.model_kwargs
        ):
            raise OodlabError("init_from must name the same model and model_kwargs as the recipe it starts")

    def make_objective(self) -> Any:
        """A fresh :class:`~oodlab.training.objectives.Objective` of this recipe."""
        return create_objective(self.objective, **self.objective_params)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields left at their defaults that plain training lacked.

        Checkpoints of plain cross-entropy recipes made before objectives existed keep their keys.
        """
        d = self.to_dict()
        for f in _LATER_FIELDS:
            if getattr(self, f.name) == _default(f):
                d.pop(f.name)
        if self.init_from is not None:
            d["init_from"] = self.init_from.identity()
        if self.classifier is not None:
            d["classifier"] = self.classifier.identity()
        return d

    def key(self, data_fingerprint: str, aux_fingerprint: str | None = None) -> str:
        """Cache key: this recipe + the training (and auxiliary) data's content + the trainer version."""
        ident: dict[str, Any] = {"cfg": self.identity(), "data": data_fingerprint, "v": TRAINER_VERSION}
        if aux_fingerprint is not None:
            ident["aux"] = aux_fingerprint
        blob = json.dumps(ident, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


_LATER_FIELDS = [
    f
    for f in dataclasses.fields(TrainConfig)
    if f.name
    in ("objective", "objective_params", "aux", "n_aux", "aux_batch_size", "init_from", "classifier")
]


def build_model(cfg: TrainConfig, num_classes: int, shape: tuple[int, int, int]) -> TappedModel:
    """The model a recipe names, for ``num_classes`` classes and images of ``shape``.

    An objective that needs a method head (BINC, VIB, VIBY) gets its network with that head in
    place of the final linear layer (:meth:`Objective.head_spec`).
    """
    kw = {"num_classes": num_classes, "in_channels": shape[0], **cfg.model_kwargs}
    if shape[1] == shape[2] and "image_size" not in cfg.model_kwargs:
        kw["image_size"] = shape[1]
    head = cfg.make_objective().head_spec()
    if head is not None:
        kw["head"] = head
    return create_model(cfg.model, **kw)


def _optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )


def _lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    if cfg.schedule == "step":
        return cfg.gamma ** (step // steps_per_epoch)
    if cfg.schedule == "cosine":
        total = cfg.epochs * steps_per_epoch
        return 0.5 * (1 + math.cos(math.pi * step / total))
    return 1.0


def _freeze_classifier(
    cfg: TrainConfig, model: nn.Module, classifier: nn.Module | None, data: ImageSet
) -> Tensor | None:
    """Copy ``classifier`` into ``model.classifier`` and freeze it; its logits on ``data``."""
    if cfg.classifier is None:
        return None
    target = getattr(model, "classifier", None)
    if classifier is None or not isinstance(target, nn.Module):
        raise OodlabError(
            f"recipe for {cfg.model!r} is built around a frozen classifier: the model needs a "
            "`classifier` module and train() the trained classifier (classifier=)"
        )
    target.load_state_dict(classifier.state_dict(), strict=True)
    target.requires_grad_(False)
    return features.outputs(classifier, data).logits


def train(
    cfg: TrainConfig,
    data: ImageSet,
    *,
    aux: ImageSet | None = None,
    init: TappedModel | None = None,
    classifier: nn.Module | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> tuple[TappedModel, dict[str, Any]]:
    """Train a model on ``data`` with ``cfg``'s objective.

    Deterministic for a given ``cfg.seed`` on a given machine: the seed fixes initialisation,
    batch order, the auxiliary batches and dropout.

    Args:
        cfg: The recipe.
        data: Labelled ID training images.
        aux: Auxiliary outliers, for objectives that use them: each step draws
            ``cfg.aux_batch_size`` of them (with replacement) beside the ID batch.
        init: Start from a copy of this network's weights (fine-tuning); it is not modified.
        classifier: For a recipe with ``cfg.classifier``: the trained classifier, copied into
            the model's ``classifier`` and frozen; its logits on ``data`` (computed once, through
            the outputs cache) are each batch's ``context``. It is not modified.
        progress: Show a progress bar.
        device: Where to train (:func:`oodlab.device.resolve_device`; ``None``: the CPU); the
            model is returned there.

    Returns:
        The model in eval mode, and a dict of training statistics.
    """
    if data.y is None or len(data) == 0:
        raise OodlabError(f"cannot train on {data.name!r}: it needs labelled images")
    objective = cfg.make_objective()
    if objective.uses_aux:
        if aux is None:
            raise OodlabError(f"objective {cfg.objective!r} needs auxiliary outliers (aux)")
        check_aux_set(aux, data.shape)
    num_classes = int(data.y.max()) + 1
    torch.manual_seed(cfg.seed)
    dev = resolve_device(device)
    model = build_model(cfg, num_classes, data.shape)
    if init is not None:
        model.load_state_dict(init.state_dict(), strict=True)
    x_all, y_all = data.tensor(), data.labels()
    context = _freeze_classifier(cfg, model, classifier, data)
    model.to(dev)  # after the frozen classifier is copied in, so it moves with the model
    x_aux = aux.tensor() if objective.uses_aux and aux is not None else None
    gen = torch.Generator().manual_seed(cfg.seed)
    # A generator of its own, so the ID batches are those plain training would draw.
    gen_aux = torch.Generator().manual_seed(cfg.seed + 1)
    aux_batch = cfg.aux_batch_size or cfg.batch_size
    model.eval()
    probe = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed + 2))[:5000]
    settled = objective.prepare(model, x_all[probe].to(dev), None if x_aux is None else x_aux[:5000].to(dev))
    opt = _optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    base_lrs = [g["lr"] for g in opt.param_groups]
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    step, t0, losses = 0, time.perf_counter(), []
    # channels-last convolutions train about twice as fast on CPU (oneDNN); eval stays contiguous.
    model.to(memory_format=torch.channels_last)
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(data), generator=gen)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"train {cfg.model} ({cfg.objective}) epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        running = 0.0
        for i in bar:
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            for g, lr in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = lr * _lr_factor(cfg, step, steps_per_epoch)
            xb = x_all[idx].to(dev).contiguous(memory_format=torch.channels_last)
            ab = None
            if x_aux is not None:
                pick = torch.randint(len(x_aux), (aux_batch,), generator=gen_aux)
                ab = x_aux[pick].to(dev).contiguous(memory_format=torch.channels_last)
            if context is None:
                loss = objective.loss(model, xb, y_all[idx].to(dev), ab)
            else:
                loss = objective.loss(model, xb, y_all[idx].to(dev), ab, context=context[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running += loss.item()
            if i % 50 == 0:
                bar.set_postfix(loss=f"{running / (i + 1):.4f}")
        losses.append(running / steps_per_epoch)
    opt.zero_grad(set_to_none=True)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    stats = {
        "epoch_losses": losses,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "num_classes": num_classes,
        "objective": {"name": cfg.objective, "params": objective.get_params(), "settled": settled},
    }
    return model, stats


def fit_or_load(
    cfg: TrainConfig,
    data: ImageSet,
    *,
    aux: ImageSet | None = None,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> tuple[TappedModel, dict[str, Any]]:
    """Load the cached checkpoint for (``cfg``, ``data``) if there is one, else train and cache it.

    ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``; ``None``: the CPU) is where the model trains
    and is returned. A model trained on CUDA has other weights than one trained on the CPU, so
    it is cached under its own name (``…-cuda.safetensors``).

    A fine-tuning recipe (``cfg.init_from``) first loads or trains its base network the same
    way, and so does a recipe built around a frozen classifier (``cfg.classifier``), its classifier;
    way. The auxiliary outliers are ``aux`` if given, else ``cfg.n_aux`` images of the named
    set ``cfg.aux`` built from ``data`` for ``cfg.seed``; their content hash is part of the key.

    Returns:
        The model in eval mode and the checkpoint's metadata (recipe, data hash, statistics,
        ``"cached": True`` when it was loaded).
    """
    directory = checkpoint_dir or (cache_dir() / "models")
    if cfg.make_objective().uses_aux:
        if aux is None:
            assert cfg.aux is not None  # TrainConfig checks it
            aux = build_aux(cfg.aux, data, cfg.n_aux, cfg.seed)
        check_aux_set(aux, data.shape)
    else:
        aux = None
    key = cfg.key(data.fingerprint, None if aux is None else aux.fingerprint)
    dev = resolve_device(device)
    path = directory / f"{cfg.model}-{key}{'-cuda' if dev.type == 'cuda' else ''}.safetensors"
    definition = model_definition(cfg.model)
    # The key keeps its old form (cached checkpoints stay valid); the network's definition is
    # checked against the one recorded beside the weights, so an edited model class retrains
    # instead of reloading the old class's weights. Checkpoints from before the record are trusted.
    if path.exists() and load_checkpoint_meta(path).get("definition", definition) == definition:
        meta = load_checkpoint_meta(path)
        model = build_model(cfg, int(meta["stats"]["num_classes"]), data.shape)
        load_checkpoint(model, path)
        model.to(dev).eval()
        return model, {**meta, "cached": True, "path": str(path)}
    base = frozen = None
    base_meta: dict[str, Any] | None = None
    frozen_meta: dict[str, Any] | None = None
    if cfg.init_from is not None:
        base, base_meta = fit_or_load(
            cfg.init_from, data, checkpoint_dir=directory, progress=progress, device=dev
        )
    if cfg.classifier is not None:
        frozen, frozen_meta = fit_or_load(
            cfg.classifier, data, checkpoint_dir=directory, progress=progress, device=dev
        )
    model, stats = train(cfg, data, aux=aux, init=base, classifier=frozen, progress=progress, device=dev)
    meta: dict[str, Any] = {
        "config": cfg.to_dict(),
        "data": {"name": data.name, "fingerprint": data.fingerprint, "n": len(data)},
        "stats": stats,
        "trainer_version": TRAINER_VERSION,
        "definition": definition,
    }
    if aux is not None:
        meta["aux"] = {"name": aux.name, "fingerprint": aux.fingerprint, "n": len(aux)}
    if base_meta is not None:
        meta["init_from"] = {"path": base_meta["path"], "train_seconds": base_meta["stats"]["train_seconds"]}
    if frozen_meta is not None:
        meta["classifier"] = {
            "path": frozen_meta["path"],
            "train_seconds": frozen_meta["stats"]["train_seconds"],
        }
    save_checkpoint(model, path, meta)
    return model, {**meta, "cached": False, "path": str(path)}


def load_checkpoint_meta(path: Path) -> dict[str, Any]:
    """The JSON beside a checkpoint; a clear error if it is missing or unreadable."""
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        meta["stats"]["num_classes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OodlabError(
            f"corrupt checkpoint metadata {meta_path} ({e}); delete it and {path.name} to retrain"
        ) from None
    return meta
