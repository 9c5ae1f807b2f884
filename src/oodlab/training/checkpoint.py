"""Safe checkpoints: weights as safetensors beside a JSON of how they were made."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from oodlab.errors import OodlabError


def _follow_umask(path: str) -> None:
    """Give a ``mkstemp`` file (created 0600) the permissions a plain ``open`` would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write ``path`` (``.safetensors``) and ``path.with_suffix('.json')`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        _follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
