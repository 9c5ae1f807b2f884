"""Benchmark cells on disk: one finished (suite, seed, detector) per file pair, written atomically.

A results folder holds::

    run.json                                   the run's configuration, its hash and its cells
    cells/<suite>/seed<seed>/<detector>-<key>.npz   the cell's scores (ID and OOD, per OOD set)
    cells/<suite>/seed<seed>/<detector>-<key>.json  its rows, model summary and the .npz's sha256

The ``.json`` is written last (temporary file + ``os.replace``), so a cell is finished exactly
when its ``.json`` exists and names an ``.npz`` of the recorded hash. The key hashes everything
that made the cell (suite definition with training recipe, seed, protocol, detector name and
parameters, accept rate, extra OOD files' contents, oodlab version), so a changed
configuration never reuses an old cell.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oodlab import __version__
from oodlab.errors import OodlabError
from oodlab.io import atomic_write_bytes

CELL_FORMAT = 1
RUN_FORMAT = 1
RUN_FILE = "run.json"
CELLS_DIR = "cells"
#: Files and folders a results folder may hold that ``--overwrite`` replaces (and nothing else).
OWNED = (
    RUN_FILE,
    CELLS_DIR,
    "plots",
    "results.json",
    "results.csv",
    "results.md",
    "models.json",
    "summary.json",
    "report.html",
)


def stable_hash(obj: Any, n: int = 16) -> str:
    """A short sha256 of ``obj`` as canonical JSON (unknown types by ``repr``)."""
    blob = json.dumps(obj, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class CellSpec:
    """One unit of work: a detector on one suite for one seed, and the hash of what makes it."""

    suite: str
    seed: int
    detector: str
    key: str

    @property
    def stem(self) -> str:
        return f"cells/{self.suite}/seed{self.seed}/{self.detector}-{self.key}"

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "seed": self.seed, "detector": self.detector, "key": self.key}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellSpec:
        return cls(str(d["suite"]), int(d["seed"]), str(d["detector"]), str(d["key"]))


class CellError(OodlabError):
    """A cell file is truncated, unreadable or does not belong to its key."""


class CellStore:
    """Reads and writes the cells of one results folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def json_path(self, spec: CellSpec) -> Path:
        return self.root / f"{spec.stem}.json"

    def npz_path(self, spec: CellSpec) -> Path:
        return self.root / f"{spec.stem}.npz"

    def exists(self, spec: CellSpec) -> bool:
        return self.json_path(spec).exists()

    def write(
        self,
        spec: CellSpec,
        rows: list[dict[str, Any]],
        model: dict[str, Any],
        scores: dict[str, tuple[np.ndarray, np.ndarray]],
        extras: dict[str, np.ndarray] | None = None,
    ) -> Path:
        """Write the cell's scores, then its JSON (the completion marker); return the JSON's path.

        ``scores`` maps each OOD set to its (ID scores, OOD scores); identical ID arrays are stored once.
        ``extras`` (:meth:`~oodlab.detectors.Detector.illustration`) go in the same file.
        """
        arrays: dict[str, np.ndarray] = {}
        index: dict[str, dict[str, str]] = {}
        by_hash: dict[str, str] = {}
        for i, (ood, (id_s, ood_s)) in enumerate(scores.items()):
            id_arr = np.ascontiguousarray(id_s, dtype=np.float64)
            h = hashlib.blake2b(id_arr.tobytes(), digest_size=16).hexdigest()
            if h not in by_hash:
                by_hash[h] = f"id_{len(by_hash)}"
                arrays[by_hash[h]] = id_arr
            arrays[f"ood_{i}"] = np.ascontiguousarray(ood_s, dtype=np.float64)
            index[ood] = {"id": by_hash[h], "ood": f"ood_{i}"}
        for name, arr in (extras or {}).items():
            arrays[f"extra_{name}"] = np.ascontiguousarray(arr)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        npz = self.npz_path(spec)
        atomic_write_bytes(npz, data)
        doc = {
            "format": CELL_FORMAT,
            "oodlab": __version__,
            **spec.to_dict(),
            "rows": rows,
            "model": model,
            "scores_file": npz.name,
            "scores_sha256": hashlib.sha256(data).hexdigest(),
            "scores": index,
            **({"extras": sorted(extras)} if extras else {}),
        }
        path = self.json_path(spec)
        atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
        return path

    def load(self, spec: CellSpec, *, check_scores: bool = True) -> dict[str, Any]:
        """The cell's JSON document; :class:`CellError` naming the file if it is damaged."""
        path = self.json_path(spec)
        try:
            doc = json.loads(path.read_text())
            if doc["key"] != spec.key or doc["format"] != CELL_FORMAT:
                raise ValueError(f"it holds cell {doc['key']} (format {doc['format']}), not {spec.key}")
            rows, scores = doc["rows"], doc["scores"]
            if not isinstance(rows, list) or not rows or not isinstance(scores, dict):
                raise ValueError("it has no rows or no score index")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CellError(f"cell file {path} is truncated or unreadable ({_short(e)})") from None
        if check_scores:
            npz = self.npz_path(spec)
            try:
                ok = file_sha256(npz) == doc["scores_sha256"]
            except OSError as e:
                raise CellError(f"scores file {npz} is missing or unreadable ({_short(e)})") from None
            if not ok:
                raise CellError(
                    f"scores file {npz} is truncated or changed (sha256 differs from {path.name})"
                )
        return doc

    def load_scores(self, spec: CellSpec, doc: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{ood: (id scores, ood scores)}`` of a cell, loaded with ``allow_pickle=False``."""
        npz = self.npz_path(spec)
        try:
            with np.load(npz, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            return {ood: (arrays[v["id"]], arrays[v["ood"]]) for ood, v in doc["scores"].items()}
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise CellError(f"scores file {npz} is truncated or unreadable ({_short(e)})") from None

    def load_extras(self, spec: CellSpec, doc: dict[str, Any]) -> dict[str, np.ndarray]:
        """The cell's illustration arrays (none for most detectors)."""
        if not doc.get("extras"):
            return {}
        npz = self.npz_path(spec)
        try:
            with np.load(npz, allow_pickle=False) as f:
                return {k: f[f"extra_{k}"] for k in doc["extras"]}
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise CellError(f"scores file {npz} is truncated or unreadable ({_short(e)})") from None

    def remove(self, spec: CellSpec) -> None:
        self.json_path(spec).unlink(missing_ok=True)
        self.npz_path(spec).unlink(missing_ok=True)

    def clean_temporary(self) -> int:
        """Delete temporary files left by a killed run; return how many."""
        n = 0
        cells = self.root / CELLS_DIR
        if cells.is_dir():
            for tmp in cells.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                n += 1
        return n


def _short(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# ----------------------------------------------------------------------------------------------- run.json


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The folder's ``run.json``; a clear error naming it if missing or damaged."""
    path = Path(out_dir) / RUN_FILE
    if not path.exists():
        raise OodlabError(f"{out_dir} holds no oodlab results ({RUN_FILE} is missing)")
    try:
        doc = json.loads(path.read_text())
        doc["config"], doc["config_hash"], doc["cells"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OodlabError(
            f"{path} is truncated or unreadable ({_short(e)}); pass --overwrite to start afresh "
            "or pick another --out"
        ) from None
    return doc


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    new = json.loads(json.dumps(new, default=repr))  # as it would read back (tuples become lists)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_run_dir(out_dir: Path, manifest: dict[str, Any], *, overwrite: bool) -> bool:
    """Whether ``out_dir`` can take the run described by ``manifest``; reads, never writes.

    Returns ``True`` when the folder already holds this configuration (a resumed run). A folder
    with results of another configuration, or damaged or foreign results, is an error unless
    ``overwrite``. Nothing is written here, so a run refused later (a bad input file, a corrupt
    checkpoint) leaves the folder as it was: :func:`start_run_dir` runs just before the first
    cell is written.
    """
    out_dir = Path(out_dir)
    present = [name for name in OWNED if (out_dir / name).exists()]
    if present and not overwrite:
        if RUN_FILE not in present:
            raise OodlabError(
                f"{out_dir} holds results without {RUN_FILE} (from an older oodlab or another tool); "
                "pick another --out or pass --overwrite to replace them"
            )
        old = read_manifest(out_dir)
        if old["config_hash"] == manifest["config_hash"]:
            return True
        diff = _differences(old.get("identity", {}), manifest.get("identity", {}))
        raise OodlabError(
            f"{out_dir} holds results of a different configuration (differs in: {', '.join(diff) or '?'}); "
            "pick another --out or pass --overwrite to replace them"
        )
    return False


def start_run_dir(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Delete oodlab's own files in ``out_dir`` (and nothing else), then write ``run.json``."""
    out_dir = Path(out_dir)
    for name in OWNED:
        p = out_dir / name
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    atomic_write_bytes(out_dir / RUN_FILE, json.dumps(manifest, indent=1).encode())
