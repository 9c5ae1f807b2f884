"""Safe checkpoints: weights as safetensors beside a JSON of how they were made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from oodlab.errors import OodlabError
from oodlab.io import atomic_write, atomic_write_bytes


def save_checkpoint(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write ``path`` (``.safetensors``) and ``path.with_suffix('.json')`` atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True).encode())


def load_checkpoint(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load weights from ``path`` into ``model`` (strict); return the checkpoint's JSON metadata."""
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError, ValueError) as e:
        raise OodlabError(f"corrupt or unreadable checkpoint {path}: {e}; delete it to retrain") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise OodlabError(f"checkpoint {path} does not fit the model: {first}") from None
    meta_path = path.with_suffix(".json")
    try:
        return json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except ValueError as e:
        raise OodlabError(f"corrupt checkpoint metadata {meta_path}: {e}; delete it to retrain") from None
