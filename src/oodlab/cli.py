"""The ``oodlab`` command."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from oodlab.commands import ModelArgs, bench_user_model, fit, model_options, parse_named, score, serve
from oodlab.errors import OodlabError


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def _parse_ood_npy(values: tuple[str, ...]) -> dict[str, str]:
    out = parse_named(values, "--ood-npy")
    for name, path in out.items():
        if not Path(path).is_file():
            raise OodlabError(f"--ood-npy {name}: no such file {path}")
    return out


def _parse_params(values: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``("deep-ensemble.members=3", ...)`` → ``{"deep-ensemble": {"members": 3}}`` (values as JSON)."""
    out: dict[str, dict[str, Any]] = {}
    for v in values:
        target, sep, raw = v.partition("=")
        det, dot, param = target.partition(".")
        if not sep or not dot or not det or not param:
            raise OodlabError(f"--param takes DETECTOR.PARAM=VALUE, got {v!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # a bare word is a string: aux=edges
        out.setdefault(det, {})[param] = value
    return out


def _parse_names(value: str, what: str) -> list[str]:
    names = [s.strip() for s in value.split(",") if s.strip()]
    if not names:
        raise OodlabError(f"{what} is empty; name at least one")
    return names


def _parse_ints(value: str, what: str) -> list[int]:
    try:
        return [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise OodlabError(f"{what} takes comma-separated integers, got {value!r}") from None


def _suites_and_seeds(fn: Callable[..., None]) -> Callable[..., None]:
    """The ``--suite``, ``--seed`` and ``--seeds`` options of the commands that run suites."""
    options = [
        click.option(
            "--suite",
            "suites",
            multiple=True,
            metavar="NAME",
            help="Suite to run (repeat or comma-separate); default: mnist-holdout0, fmnist-vs-mnist, "
            "mnist-vs-fmnist. See `oodlab list suites`.",
        ),
        click.option(
            "--seed", type=int, default=None, help="Seed of the split, the synthetic sets and the model [0]."
        ),
        click.option("--seeds", default=None, metavar="0,1,2", help="Several seeds (overrides --seed)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _suite_and_seed_lists(
    suites: tuple[str, ...], seed: int | None, seeds: str | None
) -> tuple[list[str], list[int]]:
    from oodlab.bench import DEFAULT_SUITES

    names = [s.strip() for v in suites for s in v.split(",") if s.strip()] or list(DEFAULT_SUITES)
    return names, _parse_ints(seeds, "--seeds") if seeds else [seed if seed is not None else 0]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="oodlab")
def cli() -> None:
    """oodlab: out-of-distribution detection for image classifiers.

    Scores say how in-distribution an input looks (higher = more in-distribution). `oodlab bench`
    trains (or loads from its cache) a classifier per suite, fits the detectors on in-distribution
    training data, tunes them on validation data only, and reports AUROC, AUPR-In/Out, FPR@95TPR,
    detection error, FPR@80TPR and accuracy at a validation-chosen threshold.
    """


@cli.command()
@_suites_and_seeds
@click.option(
    "--detectors",
    default="default",
    show_default=True,
    metavar="A,B|default|all|auto",
    help="Comma-separated detector and method names, 'default' (the logit detectors), 'all' (every "
    "post-hoc detector), or 'auto' (every post-hoc detector, and per suite and seed the one chosen "
    "on validation data alone, reported beside the test-best). Methods that train their network "
    "(outlier-exposure, energy-finetune, deep-ensemble) or sample (mc-dropout) are named explicitly; "
    "see `oodlab list detectors`.",
)
@click.option(
    "--protocol",
    type=click.Choice(["blind", "paper"]),
    default="blind",
    show_default=True,
    help="blind: tune on ID validation + synthetic OOD validation; paper: tune on 500+500 images "
    "cut from each test set (as the FSSD reference code; for comparison with papers only).",
)
@click.option(
    "--ood-npy",
    "ood_npy",
    multiple=True,
    metavar="NAME=PATH",
    help="Add a .npy/.npz array of images (N×H×W or N×C×H×W, uint8 or float in [0,1]) as an OOD "
    "test set named NAME. Repeatable.",
)
@click.option(
    "--accept-rate",
    type=float,
    default=0.95,
    show_default=True,
    help="Share of ID validation images the reported threshold accepts (ID acc. / OOD rej. columns).",
)
@click.option(
    "--recipe",
    default="lenet",
    show_default=True,
    metavar="NAME",
    help="How each suite's classifier is trained: lenet (the suites' own), lenet5, resnet18 or lenet-caffe. "
    "See `oodlab list recipes`.",
)
@click.option("--epochs", type=int, default=None, help="Override the recipe's training epochs.")
@click.option(
    "--corruptions",
    default=None,
    metavar="A,B",
    help="Corruptions of the corruption suites (default: all; see `oodlab list corruptions`).",
)
@click.option(
    "--mixture",
    "mixtures",
    multiple=True,
    metavar="NAME=NEAR+FAR:P",
    help="Add an OOD test set NAME mixing two of the suite's OOD test sets, P (0-1) of NEAR and the "
    "rest of FAR, e.g. mix=mnist+gaussian:0.3. Seeded. Repeatable.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results"),
    show_default=True,
    help="Folder for the results: one file per finished cell (suite × seed × detector) under cells/, "
    "then results.json/.csv/.md, summary.json, models.json, plots/ and report.html. A run killed and "
    "restarted with the same arguments computes only the unfinished cells.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the results in --out even if they come from a different configuration.",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="DETECTOR.PARAM=VALUE",
    help="A hyperparameter of one of --detectors, e.g. deep-ensemble.members=3, mc-dropout.passes=16, "
    "outlier-exposure.aux=edges (VALUE read as JSON, else as a string). Repeatable.",
)
@click.option("--no-plots", is_flag=True, help="Skip the plots (tables and report.html only).")
@click.option(
    "--no-feature-cache",
    is_flag=True,
    help="Do not read or write the on-disk cache of model outputs ($OODLAB_CACHE/features).",
)
@click.option(
    "--executor",
    type=click.Choice(["in-process", "ray"]),
    default="in-process",
    show_default=True,
    help="Where trainings and cells run: in this process, or as Ray tasks (extra oodlab[ray]) on "
    "the cluster at --address, or on a local Ray runtime that starts and stops with the run.",
)
@click.option(
    "--address",
    default=None,
    metavar="HOST:PORT",
    help="With --executor ray: the head node of a running Ray cluster (`ray start --head`).",
)
@click.option(
    "--resources",
    "resources",
    multiple=True,
    metavar="KIND=cpus:N[,gpus:G]",
    help="With --executor ray: what one task asks for, KIND train (make a network) or score (fit "
    "and score one cell); torch runs with N threads in it. Default: cpus = this process's torch "
    "threads, which keeps results identical to --executor in-process. Repeatable.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@model_options
@click.option("--id", "id_spec", default=None, metavar="DATA", help="With --model: ID test images.")
@click.option(
    "--train",
    "train_spec",
    default=None,
    metavar="DATA",
    help="With --model: ID training images [half of --id].",
)
@click.option(
    "--ood", "ood", multiple=True, metavar="NAME=DATA", help="With --model: an OOD test set. Repeatable."
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    metavar="auto|cpu|cuda",
    help="Where the networks train and run: auto is CUDA when PyTorch sees a GPU, else the CPU.",
)
@click.pass_context
def bench(
    ctx: click.Context,
    suites: tuple[str, ...],
    detectors: str,
    seed: int | None,
    seeds: str | None,
    protocol: str,
    ood_npy: tuple[str, ...],
    accept_rate: float,
    recipe: str,
    epochs: int | None,
    corruptions: str | None,
    mixtures: tuple[str, ...],
    out_dir: Path,
    overwrite: bool,
    params: tuple[str, ...],
    no_plots: bool,
    no_feature_cache: bool,
    executor: str,
    address: str | None,
    resources: tuple[str, ...],
    quiet: bool,
    model_args: ModelArgs,
    id_spec: str | None,
    train_spec: str | None,
    ood: tuple[str, ...],
    device: str,
) -> None:
    """Run detectors on benchmark suites (or, with --model, on your model and images) and write the results.

    Prints one table per suite and seed (a row per detector × OOD test set; mean ± std over seeds
    when several are given) and writes to --out: results.json (a list of rows: suite, seed,
    protocol, detector, ood, every metric as a fraction, the tuning and the run's configuration),
    results.csv, results.md, summary.json (mean ± std over seeds), models.json, plots/ (PNG and
    SVG) and report.html (one self-contained page). Each seed retrains the model and refits the
    detectors.
    """
    if model_args.spec is not None:
        # The user's model: one evaluate() run; results are written only to an --out given.
        explicit = ctx.get_parameter_source("out_dir") == click.core.ParameterSource.COMMANDLINE
        seed0 = _parse_ints(seeds, "--seeds")[0] if seeds else (seed or 0)
        args = (model_args, id_spec, train_spec, ood, detectors, seed0, accept_rate)
        return bench_user_model(*args, out_dir if explicit else None)
    from oodlab.bench import BenchConfig, resolve_detectors, run_bench
    from oodlab.bench.executors import create_executor
    from oodlab.bench.report import console_report, write_report

    suite_names, seed_list = _suite_and_seed_lists(suites, seed, seeds)
    cfg = BenchConfig(
        suites=suite_names,
        detectors=resolve_detectors(detectors),
        seeds=seed_list,
        protocol=protocol,
        accept_rate=accept_rate,
        extra_ood=_parse_ood_npy(ood_npy),
        recipe=recipe,
        epochs=epochs,
        corruptions=_parse_names(corruptions, "--corruptions") if corruptions is not None else None,
        mixtures=list(mixtures),
        detector_params=_parse_params(params),
        select=detectors.strip() == "auto",
    )
    from oodlab.device import resolve_device

    resolved = resolve_device(device)  # a missing GPU is an error before anything runs
    runner = create_executor(executor, address, resources)
    t0 = time.perf_counter()
    rows, models = run_bench(
        cfg,
        out_dir=out_dir,
        overwrite=overwrite,
        progress=not quiet,
        log=_log,
        feature_cache=not no_feature_cache,
        device=str(resolved),
        executor=runner,
    )
    click.echo(console_report(rows, models))
    paths = write_report(out_dir, plots=not no_plots, log=_log)
    shown = [p for p in paths if p.parent == out_dir]
    _log(
        f"\nwrote {', '.join(str(p) for p in shown)} and {len(paths) - len(shown)} plot files "
        f"in {time.perf_counter() - t0:.0f} s"
    )


@cli.command()
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--no-plots", is_flag=True, help="Skip the plots (tables and report.html only).")
def report(out_dir: Path, no_plots: bool) -> None:
    """Rebuild the tables, plots and report.html of a results folder from its saved cells.

    Nothing is recomputed: DIR is the --out folder of `oodlab bench`. An unfinished run gives a
    report of its finished cells.
    """
    from oodlab.bench.report import console_report, load_run, write_report
    from oodlab.bench.runner import assemble

    paths = write_report(out_dir, plots=not no_plots, log=_log)
    manifest, cells = load_run(out_dir, log=lambda _: None)
    rows, models = assemble([d for _, d in cells], manifest)
    click.echo(console_report(rows, models))
    _log(f"wrote {len(paths)} files to {out_dir}, e.g. {out_dir / 'report.html'}")


def _parse_floats(value: str, what: str) -> list[float]:
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise OodlabError(f"{what} takes comma-separated numbers, got {value!r}") from None
    if not out:
        raise OodlabError(f"{what} is empty; give at least one number")
    return out


@cli.command()
@_suites_and_seeds
@click.option(
    "--lambdas",
    default="0,0.01",
    show_default=True,
    metavar="L1,L2",
    help="Entropy weights λ of the log-softmax networks (each compared with the ReLU network).",
)
@click.option("--width", type=float, default=0.125, show_default=True, help="ResNet-18 width multiplier.")
@click.option("--epochs", type=int, default=2, show_default=True, help="Training epochs.")
@click.option(
    "--n-train", type=int, default=12_800, show_default=True, help="ID training images (seeded subset)."
)
@click.option(
    "--n-fit", type=int, default=5000, show_default=True, help="ID training images Mahalanobis is fitted on."
)
@click.option(
    "--n-eval", type=int, default=2000, show_default=True, help="Images per test and validation set."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("results-layers"),
    show_default=True,
    help="Folder for cells/, layers.json, layers.md, plots/ and report.html; finished cells are reused.",
)
@click.option("--no-plots", is_flag=True, help="Skip the plots.")
def layers(
    suites: tuple[str, ...],
    seed: int | None,
    seeds: str | None,
    lambdas: str,
    width: float,
    epochs: int,
    n_train: int,
    n_fit: int,
    n_eval: int,
    out_dir: Path,
    no_plots: bool,
) -> None:
    """The layer study: per-layer softmax statistics of ReLU and log-softmax ResNets vs Mahalanobis.

    For each suite and seed, trains (or loads) a ResNet-18 with ReLU activations and one with
    log-softmax activations after the residual additions per entropy weight λ, and reports the
    AUROC per layer of the nine layer-softmax aggregations and of per-layer Mahalanobis, a
    near/far sweep, and the validation-chosen aggregation against the Mahalanobis ensemble.
    """
    from oodlab.bench.layers import LayerStudyConfig, run_layers

    suite_names, seed_list = _suite_and_seed_lists(suites, seed, seeds)
    if width <= 0 or epochs < 1 or n_train < 1:
        raise OodlabError("--width must be positive, --epochs and --n-train at least 1")
    cfg = LayerStudyConfig(
        lambdas=tuple(_parse_floats(lambdas, "--lambdas")),
        width=width,
        epochs=epochs,
        n_train=n_train,
        n_fit=n_fit,
        n_eval=n_eval,
    )
    t0 = time.perf_counter()
    paths = run_layers(suite_names, seed_list, cfg, out_dir, plots=not no_plots, log=_log)
    click.echo((out_dir / "layers.md").read_text())
    _log(
        f"wrote {len(paths)} files to {out_dir} in {time.perf_counter() - t0:.0f} s, "
        f"e.g. {out_dir / 'report.html'}"
    )


@cli.command("list")
@click.argument(
    "what",
    type=click.Choice(
        ["detectors", "suites", "recipes", "models", "datasets", "corruptions", "aux", "objectives"]
    ),
    default="detectors",
)
def list_cmd(what: str) -> None:
    """List detectors (and how each runs), suites, recipes, models, datasets, corruptions,
    auxiliary outlier sets or training objectives."""
    if what == "detectors":
        from oodlab.detectors import get_detector_class, list_detectors

        for n in list_detectors():
            cls = get_detector_class(n)
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            click.echo(f"{n:24s} [{cls.capabilities.describe()}] {doc}")
    elif what == "aux":
        from oodlab.training import list_aux

        for name, description in list_aux():
            click.echo(f"{name:24s} {description}")
    elif what == "objectives":
        from oodlab.training import get_objective_class, list_objectives

        for n in list_objectives():
            doc = (get_objective_class(n).__doc__ or "").strip().splitlines()[0]
            click.echo(f"{n:24s} {doc}")
    elif what == "suites":
        from oodlab.bench import SUITES

        for s in SUITES.values():
            click.echo(f"{s.name:24s} {s.description}")
    elif what == "recipes":
        from oodlab.training import RECIPES

        for r in RECIPES.values():
            click.echo(f"{r.name:24s} {r.description}")
    elif what == "corruptions":
        from oodlab.data.corruptions import CORRUPTIONS, describe_corruption

        for c in CORRUPTIONS:
            click.echo(f"{c:24s} {describe_corruption(c)} (severities 1-5; OOD sets {c}-1 … {c}-5)")
    elif what == "models":
        from oodlab.models import list_models

        click.echo("\n".join(list_models()))
    else:
        from oodlab.data import list_datasets

        click.echo("\n".join(list_datasets()))


@cli.command()
def data() -> None:
    """Find, verify (sha256) and convert the offline datasets into the .npz cache."""
    from oodlab.data import list_datasets, load_dataset

    for name in list_datasets():
        for split in ("train", "test"):
            ds = load_dataset(name, split)
            click.echo(f"{name:16s} {split:5s} {len(ds):6d} images of shape {ds.shape}")


cli.add_command(fit)
cli.add_command(score)
cli.add_command(serve)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit status 1, without a traceback."""
    try:
        cli.main(args=argv, prog_name="oodlab", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except OodlabError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
