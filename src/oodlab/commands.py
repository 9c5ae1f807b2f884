"""The commands that work on a user's own model and data: ``fit``, ``score``, ``serve``, and
``bench --model``. Every argument is checked before anything is written."""

from __future__ import annotations

import csv
import functools
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from oodlab.errors import OodlabError


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def _floats(value: str | None, what: str) -> list[float] | float | None:
    if value is None:
        return None
    try:
        vals = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise OodlabError(f"{what} takes comma-separated numbers, got {value!r}") from None
    if not vals:
        raise OodlabError(f"{what} is empty")
    return vals[0] if len(vals) == 1 else vals


def parse_size(value: str | None) -> tuple[int, int] | None:
    """``"32"`` → (32, 32); ``"24x32"`` → (24, 32) (height × width)."""
    if value is None:
        return None
    parts = value.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise OodlabError(f"--resize takes SIDE or HxW, got {value!r}") from None
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise OodlabError(f"--resize takes SIDE or HxW of positive integers, got {value!r}")
    return size  # type: ignore[return-value]


def parse_named(values: tuple[str, ...], option: str) -> dict[str, str]:
    """``("a=x", "b=y")`` → ``{"a": "x", "b": "y"}``; one-line errors for a malformed or repeated name."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name or not value:
            raise OodlabError(f"{option} takes NAME=PATH, got {v!r}")
        if name in out:
            raise OodlabError(f"{option} name {name!r} given twice")
        out[name] = value
    return out


def parse_taps(value: str | None) -> dict[str, str] | None:
    """``"a=layer3,b=layer4"`` → ``{"a": "layer3", "b": "layer4"}``; a bare path names itself."""
    if value is None:
        return None
    out: dict[str, str] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, path = item.partition("=")
        out[name if sep else item] = path if sep else item
    return out


@dataclass(frozen=True)
class ModelArgs:
    """The ``--model`` options of a command: the spec and how a plain ``nn.Module`` is wrapped."""

    spec: str | None
    taps: str | None
    head: str | None
    mean: str | None
    std: str | None
    resize: str | None

    @property
    def size(self) -> tuple[int, int] | None:
        return parse_size(self.resize)

    def load(self, shape: tuple[int, int, int]) -> tuple[Any, dict[str, Any]]:
        """The model and its reference (see :func:`oodlab.models.user.load_model`)."""
        from oodlab.models.user import WrapOptions, load_model

        if not self.spec:
            raise OodlabError("--model is required: name the classifier (see --help)")
        m, s = _floats(self.mean, "--mean"), _floats(self.std, "--std")
        opts = WrapOptions(
            taps=parse_taps(self.taps),
            head=self.head,
            mean=0.0 if m is None else m,
            std=1.0 if s is None else s,
        )
        return load_model(self.spec, wrap_options=opts, data_shape=shape)


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--model`` options, handed to the command as one ``model_args: ModelArgs``."""
    opts = [
        click.option(
            "--model",
            "model_spec",
            metavar="SPEC",
            help="The classifier: package.module:factory[@weights.safetensors], file.py:factory[@...], "
            "a registered model with arguments (lenet:num_classes=10@w.safetensors), or an oodlab "
            "training checkpoint (.safetensors with its JSON).",
        ),
        click.option("--taps", default=None, metavar="NAME=PATH,...", help="Submodules detectors may read."),
        click.option("--head", default=None, metavar="PATH", help="The final nn.Linear [the last one]."),
        click.option("--mean", default=None, metavar="M[,M,M]", help="Input mean, pixels in [0,1] [0]."),
        click.option("--std", default=None, metavar="S[,S,S]", help="Input std [1]."),
        click.option("--resize", default=None, metavar="SIDE|HxW", help="Resize folder images to this size."),
    ]

    @functools.wraps(f)
    def inner(*args: Any, model_spec: str | None, taps: str | None, head: str | None, mean: str | None,
              std: str | None, resize: str | None, **kwargs: Any) -> Any:  # fmt: skip
        return f(*args, model_args=ModelArgs(model_spec, taps, head, mean, std, resize), **kwargs)

    for o in reversed(opts):
        inner = o(inner)
    return inner


def _data(
    spec: str, resize: tuple[int, int] | None, name: str | None = None, channels: int | None = None
) -> Any:
    from oodlab.data.loaders import load_data

    return load_data(spec, name, resize=resize, channels=channels)


@click.command()
@model_options
@click.option(
    "--train",
    "train_spec",
    required=True,
    metavar="DATA",
    help="ID training images: folder, .npy/.npz, or cifar10:train:PATH.",
)
@click.option(
    "--val", "val_spec", default=None, metavar="DATA", help="ID validation images [a seeded 10% of --train]."
)
@click.option(
    "--detectors",
    default="default",
    show_default=True,
    metavar="SPECS",
    help="e.g. knn:k=50,mahalanobis:noise=0,energy; 'default' or 'all'.",
)
@click.option(
    "--primary", default=None, metavar="SPEC", help="Detector that scores [the best on validation]."
)
@click.option(
    "--accept-rate",
    type=float,
    default=0.95,
    show_default=True,
    help="Share of ID validation images the threshold accepts.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    metavar="BUNDLE",
    help="Bundle folder to write.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
def fit(
    model_args: ModelArgs,
    train_spec: str,
    val_spec: str | None,
    detectors: str,
    primary: str | None,
    accept_rate: float,
    seed: int,
    out: Path,
    overwrite: bool,
) -> None:
    """Fit detectors on your model and images, tune them blind, and write a bundle.

    Tuning follows the blind protocol: ID validation images (--val, or 10% of --train) against a
    synthetic OOD validation set made from them; no OOD data is needed. Each detector's
    threshold accepts --accept-rate of the ID validation images; the bundle's primary detector
    is the one with the highest validation AUROC unless --primary names one.
    """
    from oodlab.api import parse_detectors
    from oodlab.bundle import fit_bundle

    size = model_args.size
    specs = parse_detectors(detectors)
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise OodlabError(f"{out} exists; choose another --out or pass --overwrite")
    id_train = _data(train_spec, size)
    id_val = _data(val_spec, size, channels=id_train.shape[0]) if val_spec else None
    if id_val is not None and id_val.shape != id_train.shape:
        raise OodlabError(f"--val images are {id_val.shape}, --train images {id_train.shape}; pass --resize")
    model, ref = model_args.load(id_train.shape)
    t0 = time.perf_counter()
    path = fit_bundle(
        model,
        ref,
        id_train,
        out,
        detectors=specs,
        id_val=id_val,
        accept_rate=accept_rate,
        seed=seed,
        primary=primary,
        overwrite=overwrite,
        data_info={"resize": list(size) if size else None},
    )
    manifest = json.loads((path / "manifest.json").read_text())
    for e in manifest["detectors"]:
        v = e["validation"]
        mark = "*" if e["label"] == manifest["primary"] else " "
        click.echo(
            f"{mark} {e['label']:28s} validation AUROC {100 * v['auroc']:6.2f}  "
            f"FPR@95 {100 * v['fpr95']:6.2f}  "
            f"threshold {e['threshold']:.6g}"
        )
    _log(f"wrote bundle {path} (primary detector {manifest['primary']}) in {time.perf_counter() - t0:.1f} s")


def _score_rows(bundle: Any, images: str, detector: str | None, batch_size: int) -> list[dict[str, Any]]:
    """Score a folder (streamed through a DataLoader), an array file, or one image file."""
    from oodlab.data.loaders import IMAGE_SUFFIXES, ImageFolderDataset, image_to_array, load_data

    c, h, w = bundle.input_shape
    resize = bundle.manifest["input"].get("resize")
    p = Path(images).expanduser()
    entry = bundle.entry(detector)
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
        from PIL import Image

        try:
            with Image.open(p) as img:
                a = image_to_array(img, c, tuple(resize) if resize else None)
        except OSError as e:
            raise OodlabError(f"{p}: not a readable PNG/JPEG image ({e})") from None
        x = torch.from_numpy(a[None].astype(np.float32) / np.float32(255.0))
        names, batches = [p.name], [x]
    elif p.is_dir():
        ds = ImageFolderDataset(p, resize=tuple(resize) if resize else None, channels=c)
        names = [str(f.relative_to(p)) for f in ds.files]
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
        batches = (xb for xb, _ in loader)
    else:
        data = load_data(p, mmap=True)
        names = [str(i) for i in range(len(data))]
        batches = (data.tensor(i, i + batch_size) for i in range(0, len(data), batch_size))
    scores, accepts = [], []
    for xb in batches:
        s, a = bundle.score(xb, entry["label"])
        scores.append(s)
        accepts.append(a)
    s_all, a_all = np.concatenate(scores), np.concatenate(accepts)
    return [
        {
            "image": n,
            "score": float(s),
            "accept": bool(a),
            "detector": entry["label"],
            "threshold": entry["threshold"],
        }
        for n, s, a in zip(names, s_all, a_all, strict=True)
    ]


@click.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.argument("images", metavar="IMAGES")
@click.option(
    "--detector", default=None, metavar="SPEC", help="Score with this detector of the bundle [its primary]."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json"]),
    default=None,
    help="Output format [from --out, else csv].",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write here instead of stdout.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 65536),
    default=256,
    show_default=True,
    help="Images per forward pass (folders are read batch by batch).",
)
def score(
    bundle_dir: Path, images: str, detector: str | None, fmt: str | None, out: Path | None, batch_size: int
) -> None:
    """Score images with a bundle: score (higher = more in-distribution) and accept/reject per image.

    IMAGES is a folder (read batch by batch), a .npy/.npz array, or one PNG/JPEG file.
    """
    from oodlab.bundle import load_bundle
    from oodlab.io import atomic_write_text

    if fmt is None:
        fmt = "json" if out is not None and out.suffix.lower() == ".json" else "csv"
    bundle = load_bundle(bundle_dir)
    rows = _score_rows(bundle, images, detector, batch_size)
    if fmt == "json":
        entry = bundle.entry(detector)
        text = json.dumps(
            {
                "detector": entry["label"],
                "threshold": entry["threshold"],
                "results": [{k: r[k] for k in ("image", "score", "accept")} for r in rows],
            },
            indent=1,
        )
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, fieldnames=["image", "score", "accept", "detector", "threshold"], lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if out is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
    n_acc = sum(r["accept"] for r in rows)
    _log(
        f"{len(rows)} images, {n_acc} accepted, {len(rows) - n_acc} rejected{f'; wrote {out}' if out else ''}"
    )


@click.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 65536),
    default=512,
    show_default=True,
    help="Most images per forward pass.",
)
@click.option(
    "--max-body-mb", type=float, default=32.0, show_default=True, help="Largest request body accepted."
)
def serve(bundle_dir: Path, host: str, port: int, max_batch: int, max_body_mb: float) -> None:
    """Serve a bundle over HTTP: POST /score, GET /health, GET /info, GET /docs (OpenAPI).

    Concurrent requests are micro-batched through one forward pass. Bad input gets a 4xx with a
    one-line reason.
    """
    import uvicorn

    from oodlab.bundle import load_bundle
    from oodlab.serve import create_app

    bundle = load_bundle(bundle_dir)
    app = create_app(bundle, max_batch=max_batch, max_body_bytes=int(max_body_mb * 2**20))
    _log(f"serving {bundle_dir} (detector {bundle.primary}) on http://{host}:{port}")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def bench_user_model(
    model_args: ModelArgs,
    id_spec: str | None,
    train_spec: str | None,
    ood: tuple[str, ...],
    detectors: str,
    seed: int,
    accept_rate: float,
    out_dir: Path | None,
) -> None:
    """``oodlab bench --model``: :func:`oodlab.api.evaluate` on the user's model and sets."""
    from oodlab.api import evaluate, parse_detectors
    from oodlab.bench.report import console_report, write_results
    from oodlab.data.splits import train_val_split
    from oodlab.io import atomic_write_text

    if not id_spec:
        raise OodlabError("--model needs --id DATA (ID test images; with --train, the training images)")
    if not ood:
        raise OodlabError("--model needs at least one --ood NAME=DATA")
    specs = parse_detectors(detectors)
    size = model_args.size
    oods = parse_named(ood, "--ood")
    id_all = _data(id_spec, size)
    if train_spec:
        id_train, id_test = _data(train_spec, size, channels=id_all.shape[0]), id_all
    else:
        # Without --train the ID images are split in half: one to fit and tune, one to test.
        id_train, id_test = train_val_split(id_all, 0.5, seed)
    ood_sets = {n: _data(p, size, name=n, channels=id_all.shape[0]) for n, p in oods.items()}
    model, ref = model_args.load(id_train.shape)
    rows = evaluate(
        model,
        id_train,
        id_test,
        ood_sets,
        detectors=specs,
        accept_rate=accept_rate,
        seed=seed,
        name=Path(id_spec).name or "user",
    )
    models = [{"suite": rows[0]["suite"], "seed": seed, "id_accuracy": rows[0]["id_accuracy"], "model": ref}]
    click.echo(console_report(rows, models))
    if out_dir is not None:
        # The suite reports describe a suite's recipe and checkpoint; here models.json holds the
        # user's model reference instead.
        paths = write_results(out_dir, rows, [])
        atomic_write_text(out_dir / "models.json", json.dumps(models, indent=1))
        _log(f"wrote {', '.join(str(p) for p in paths)}")
