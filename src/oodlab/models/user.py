"""A user's model: specs (how the command line and a bundle name a network), loading, weights hashes.

A spec is ``SOURCE[@WEIGHTS]``:

- ``SOURCE`` is an import path ``package.module:factory``, a file ``path/to/net.py:factory``,
  or a registered oodlab model name (``lenet``). Keyword arguments for the factory follow as
  ``:key=value`` parts: ``lenet:num_classes=10:image_size=28``,
  ``mynets:resnet18:num_classes=10``. The factory returns an ``nn.Module``. Import paths are
  resolved with the current folder on ``sys.path``, as ``python -m`` and uvicorn do.
- ``WEIGHTS`` is a ``.safetensors`` file, or a PyTorch ``.pt``/``.pth`` state dict (read with
  ``torch.load(weights_only=True)``, which unpickles nothing but tensors), loaded into the
  factory's module strictly (every key must match). Without it, the factory's own weights are
  used (e.g. it loads them itself). A bundle always stores weights as safetensors.

A spec may also be a ``.safetensors`` checkpoint written by oodlab's trainer alone: the JSON
beside it names the recipe, and the input shape comes from the data it is used with.

Anything that is not already an oodlab model is wrapped with :func:`oodlab.models.wrap` (taps,
head, mean and std as given).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from oodlab.errors import OodlabError
from oodlab.models._registry import _MODELS, definition_hash
from oodlab.models.base import TappedModel
from oodlab.models.wrap import WrappedModel, wrap


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's weights: every state-dict entry's name, dtype, shape and bytes, in
    name order (the same for the same weights however they were saved)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")
    return h.hexdigest()


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``SOURCE[@WEIGHTS]`` (see the module docstring)."""

    source: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None

    @property
    def text(self) -> str:
        """The spec without the weights part (what a bundle records)."""
        parts = [self.source, *(f"{k}={json.dumps(v)}" for k, v in self.kwargs.items())]
        return ":".join(parts)


def parse_model_spec(spec: str) -> ModelSpec:
    """Split ``SOURCE[:key=value...][@WEIGHTS]``."""
    text, _, weights = str(spec).partition("@")
    parts = text.split(":")
    # A factory path keeps its ``module:factory`` colon; a registered name has none.
    if len(parts) > 1 and "=" not in parts[1]:
        source, rest = f"{parts[0]}:{parts[1]}", parts[2:]
    else:
        source, rest = parts[0], parts[1:]
    kwargs: dict[str, Any] = {}
    for p in rest:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise OodlabError(f"model spec {spec!r}: expected SOURCE[:KEY=VALUE...][@WEIGHTS], got {p!r}")
        kwargs[k] = _value(v)
    if not source:
        raise OodlabError(f"model spec {spec!r} names no model")
    return ModelSpec(source, kwargs, weights or None)


def resolve_factory(source: str) -> Callable[..., nn.Module]:
    """The callable a spec's source names: ``pkg.mod:fn``, ``file.py:fn`` or a registered model."""
    if ":" not in source:
        if source in _MODELS:
            return _MODELS[source]
        known = ", ".join(sorted(_MODELS))
        raise OodlabError(
            f"unknown model spec {source!r}: give package.module:factory, file.py:factory, an oodlab "
            f"checkpoint (.safetensors) or a registered model ({known})"
        )
    mod_name, _, attr = source.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).expanduser()
            if not path.is_file():
                raise OodlabError(f"model spec {source!r}: no such file {path}")
            key = "oodlab_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
            module = sys.modules.get(key)
            if module is None:
                loader_spec = importlib.util.spec_from_file_location(key, path)
                assert loader_spec is not None and loader_spec.loader is not None
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[key] = module
                loader_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(mod_name)
    except OodlabError:
        raise
    except Exception as e:  # the user's module failed to import: say which and why, on one line
        raise OodlabError(
            f"model spec {source!r}: cannot import {mod_name} ({type(e).__name__}: {e})"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise OodlabError(f"model spec {source!r}: {mod_name} has no callable {attr!r}")
    return factory


@dataclass(frozen=True)
class WrapOptions:
    """How a plain ``nn.Module`` is wrapped (see :func:`oodlab.models.wrap`)."""

    taps: Mapping[str, str] | None = None
    head: str | None = None
    mean: Sequence[float] | float = 0.0
    std: Sequence[float] | float = 1.0
    in_channels: int | None = None
    image_size: int | None = None


def load_weights(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a ``.safetensors`` file into ``module`` (strict); one-line errors."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise OodlabError(f"weights file {p} does not exist")
    if p.suffix.lower() in (".pt", ".pth", ".bin"):
        # PyTorch's own format is a pickle: read with weights_only=True, which refuses anything
        # but tensors and plain containers.
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise OodlabError(f"{p} is not a state dict loadable with weights_only=True ({first})") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise OodlabError(f"{p} does not hold a state dict of tensors")
    else:
        try:
            state = load_file(str(p))
        except (OSError, SafetensorError, ValueError) as e:
            raise OodlabError(f"{p} is not a readable safetensors file ({e})") from None
    # A wrapped model's file holds the network's weights under ``module.`` plus the normalisation.
    own = module.state_dict()
    if not any(k in own for k in state) and any(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items() if k.startswith("module.")}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).strip().splitlines()[:2])
        raise OodlabError(f"weights {p} do not fit the model: {first[:300]}") from None


def _oodlab_checkpoint(
    path: Path, data_shape: tuple[int, int, int] | None
) -> tuple[nn.Module, dict[str, Any]]:
    from oodlab.training.trainer import TrainConfig, build_model, load_checkpoint_meta

    meta = load_checkpoint_meta(path)
    try:
        cfg = TrainConfig.from_dict(meta["config"])
    except (KeyError, TypeError) as e:
        raise OodlabError(f"{path}: its JSON is not an oodlab training record ({e})") from None
    if data_shape is None:
        raise OodlabError(
            f"{path}: an oodlab checkpoint needs the data it was trained on for its input shape"
        )
    model = build_model(cfg, int(meta["stats"]["num_classes"]), data_shape)
    load_weights(model, path)
    kwargs = {
        "num_classes": int(meta["stats"]["num_classes"]),
        "in_channels": data_shape[0],
        **cfg.model_kwargs,
    }
    if data_shape[1] == data_shape[2] and "image_size" not in cfg.model_kwargs:
        kwargs["image_size"] = data_shape[1]
    return model, {"source": cfg.model, "kwargs": kwargs}


def load_model(
    spec: str,
    *,
    wrap_options: WrapOptions | None = None,
    data_shape: tuple[int, int, int] | None = None,
) -> tuple[TappedModel, dict[str, Any]]:
    """Build the model a spec names, in eval mode, and a reference to it for a bundle.

    Args:
        spec: See the module docstring.
        wrap_options: How to wrap a plain ``nn.Module``.
        data_shape: ``(C, H, W)`` of the data it will see (for oodlab checkpoints, and as the
            default input size of a wrapped model).

    Returns:
        ``(model, reference)``; the reference holds ``source`` and ``kwargs`` (rebuild),
        ``weights_file`` and its ``weights_file_sha256`` when given, ``definition`` (hash of the
        factory's source), ``wrap`` (the wrapper's arguments, or ``None``) and ``weights_sha256``.
    """
    opts = wrap_options or WrapOptions()
    p = Path(str(spec)).expanduser()
    if str(spec).endswith(".safetensors") and "@" not in str(spec):
        if not p.is_file():
            raise OodlabError(f"model checkpoint {p} does not exist")
        module, rebuild = _oodlab_checkpoint(p, data_shape)
        parsed = ModelSpec(rebuild["source"], rebuild["kwargs"], str(p))
    else:
        parsed = parse_model_spec(spec)
        factory = resolve_factory(parsed.source)
        try:
            module = factory(**parsed.kwargs)
        except OodlabError:
            raise
        except Exception as e:
            raise OodlabError(f"model spec {spec!r}: the factory failed ({type(e).__name__}: {e})") from None
        if not isinstance(module, nn.Module):
            raise OodlabError(
                f"model spec {spec!r}: the factory returned {type(module).__name__}, not an nn.Module"
            )
        if parsed.weights:
            load_weights(module, parsed.weights)
    factory_obj = resolve_factory(parsed.source)
    wrap_cfg = None
    if isinstance(module, TappedModel):
        model: TappedModel = module
    else:
        image_size = opts.image_size
        if image_size is None and data_shape is not None and data_shape[1] == data_shape[2]:
            image_size = data_shape[1]
        model = wrap(
            module,
            taps=opts.taps,
            head=opts.head,
            mean=opts.mean,
            std=opts.std,
            in_channels=opts.in_channels
            if opts.in_channels is not None
            else (data_shape[0] if data_shape else None),
            image_size=image_size,
        )
        wrap_cfg = model.wrap_config()
    model.eval()
    ref = {
        "source": parsed.source,
        "kwargs": parsed.kwargs,
        "weights_file": str(parsed.weights) if parsed.weights else None,
        "weights_file_sha256": file_sha256(Path(parsed.weights).expanduser()) if parsed.weights else None,
        "definition": definition_hash(factory_obj),
        "wrap": wrap_cfg,
        "weights_sha256": weights_sha256(model),
    }
    return model, ref


def rebuild_model(ref: Mapping[str, Any], weights_path: Path | None) -> TappedModel:
    """The model a bundle's reference names, with the weights at ``weights_path`` (or the
    factory's own), wrapped as recorded. The caller checks the weights' hash."""
    factory = resolve_factory(ref["source"])
    try:
        module = factory(**ref.get("kwargs", {}))
    except Exception as e:
        raise OodlabError(f"cannot rebuild the model {ref['source']!r} ({type(e).__name__}: {e})") from None
    if weights_path is not None:
        target = module
        load_weights(target, weights_path)
    w = ref.get("wrap")
    if w is not None:
        if isinstance(module, TappedModel):
            raise OodlabError(
                f"{ref['source']!r} now builds an oodlab model, but the bundle wrapped a plain one"
            )
        module = wrap(
            module,
            taps=w["taps"],
            head=w["head"],
            mean=w["mean"],
            std=w["std"],
            in_channels=w["in_channels"],
            image_size=w["image_size"],
        )
    if not isinstance(module, TappedModel):
        raise OodlabError(
            f"{ref['source']!r} builds a {type(module).__name__}, not the model the bundle holds"
        )
    return module.eval()


__all__ = [
    "ModelSpec",
    "WrapOptions",
    "WrappedModel",
    "file_sha256",
    "load_model",
    "load_weights",
    "parse_model_spec",
    "rebuild_model",
    "resolve_factory",
    "weights_sha256",
]
