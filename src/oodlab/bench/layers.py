"""The layer study: per-layer OOD scores of ReLU and log-softmax residual networks.

For each suite and seed the study trains (or loads from the checkpoint cache) a ResNet with
ReLU activations and ResNets whose activation after each residual addition is a log-softmax
over channels, trained with ``entropy-min`` at each weight λ. On every network it scores, at
every tap and at the logits (``"final"``), the nine ``layer-softmax`` aggregations (statistic
over channels × pooling over positions, each oriented on validation data) and the per-layer
``mahalanobis`` score, plus the ``mahalanobis-ensemble`` over all taps, and reports:

- the AUROC of every score per layer and OOD test set (table and figure, layer on the x-axis);
- a near/far sweep: OOD sets mixing the suite's real-image OOD set (near) with Gaussian noise
  (far) at 0, 25, 50, 75 and 100 % near (:func:`oodlab.data.mixtures.mixture_index`), AUROC
  per layer along the mix;
- the blind choice: the layer aggregation with the highest *validation* AUROC (ID validation
  vs the synthetic OOD validation set), and its test AUROC next to the Mahalanobis ensemble's.

``oodlab layers --suite NAME`` runs it; each finished (suite, seed) is written to
``cells/<suite>-seed<k>.json`` and reused by a later run with the same configuration.
The Mahalanobis scores use no input preprocessing (ε = 0: the shared forward pass).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from oodlab import features
from oodlab.bench.cells import stable_hash
from oodlab.bench.suites import _SEED_MIX, Suite, SuiteData, build_suite, get_suite
from oodlab.data.imageset import ImageSet
from oodlab.data.mixtures import MixtureSpec, mixture_index
from oodlab.data.splits import permuted_split
from oodlab.detectors import Detector, create_detector
from oodlab.detectors.layer_softmax import FINAL, POOLS, STATS, layer_names, stats_tap
from oodlab.detectors.mahalanobis import tap_spec
from oodlab.errors import OodlabError
from oodlab.io import atomic_write_text
from oodlab.metrics import auroc
from oodlab.training import TrainConfig, fit_or_load
from oodlab.training.objectives import _check_nonneg
from oodlab.training.recipes import get_recipe

#: Entropy weights λ of the log-softmax networks the study compares with the ReLU one.
DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, 1e-2)
#: The residual network the study trains (a recipe of :mod:`oodlab.training.recipes`).
DEFAULT_RECIPE = "resnet18"


@dataclass(frozen=True)
class LayerStudyConfig:
    """The size of a layer study (small enough for two CPU cores by default).

    Attributes:
        lambdas: Entropy weights λ of the log-softmax networks.
        recipe: Residual-network recipe (``oodlab list recipes``) the networks follow.
        width: Width multiplier of the networks (overrides the recipe's).
        epochs: Training epochs (overrides the recipe's; ``None`` keeps it).
        optimizer: Optimiser of every network (overrides the recipe's SGD): with SGD at lr 0.1 the
            log-softmax network diverges (its features, log-probabilities, are unbounded below
            and add up along the identity shortcuts), so all networks train with Adam.
        lr: Its learning rate (cosine schedule, the recipe's weight decay).
        n_train: Train on a seeded subset of this many ID training images (``None``: all).
        n_fit: ID training images the per-layer Mahalanobis Gaussians are fitted on.
        n_eval: Images per ID/OOD test set and per validation set (seeded subsets).
    """

    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    recipe: str = DEFAULT_RECIPE
    width: float = 0.125
    epochs: int | None = 2
    optimizer: str = "adam"
    lr: float = 2e-3
    n_train: int | None = 12_800
    n_fit: int = 5000
    n_eval: int = 2000


def subsample(images: ImageSet, n: int | None, seed: int) -> ImageSet:
    """A seeded subset of ``n`` images of ``images`` (all of them if ``n`` is ``None`` or larger)."""
    if n is None or n >= len(images):
        return images
    part = permuted_split(images, [n], seed)[0]
    return ImageSet(images.name, part.x, part.y)


def layer_networks(base: TrainConfig, cfg: LayerStudyConfig | None = None) -> dict[str, TrainConfig]:
    """The study's networks, by label: ``relu``, then ``logsoftmax λ=<λ>`` for each λ.

    Each is ``cfg.recipe`` applied to the suite's ``base`` recipe (its weight decay, batch size
    and the seed), at ``cfg.width`` for ``cfg.epochs`` with ``cfg.optimizer`` at ``cfg.lr`` and a
    cosine schedule; the log-softmax ones set
    ``activation="logsoftmax"`` and train with the ``entropy-min`` objective at weight λ.
    """
    cfg = cfg or LayerStudyConfig()
    lams = [_check_nonneg("lam", lam, "entropy-min") for lam in cfg.lambdas]
    relu = get_recipe(cfg.recipe).make(base)
    if relu.model not in ("resnet18", "resnet34"):
        raise OodlabError(
            f"the layer study needs a residual network; recipe {cfg.recipe!r} trains {relu.model}"
        )
    relu = replace(
        relu,
        model_kwargs={**relu.model_kwargs, "width": cfg.width},
        epochs=relu.epochs if cfg.epochs is None else cfg.epochs,
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        schedule="cosine",
    )
    nets = {"relu": relu}
    for lam in lams:
        nets[f"logsoftmax λ={lam:g}"] = replace(
            relu,
            model_kwargs={**relu.model_kwargs, "activation": "logsoftmax"},
            objective="entropy-min",
            objective_params={"lam": lam},
        )
    return nets


#: Near-OOD shares of the sweep, in percent.
MIX_PERCENTS: tuple[int, ...] = (0, 25, 50, 75, 100)
#: The far OOD set of the sweep.
FAR_SET = "gaussian"
MAHALANOBIS = "mahalanobis"
ENSEMBLE = "mahalanobis-ensemble"


def aggregations() -> list[str]:
    """The nine aggregation labels, ``"<stat>-<pool>"`` (e.g. ``"misp-min"``), statistic-major."""
    return [f"{st}-{po}" for st in STATS for po in POOLS]


def near_set(suite: Suite) -> str:
    """The suite's real-image OOD test set (the held-out classes, or its first OOD dataset)."""
    if suite.holdout:
        return f"{suite.id_dataset}-{'-'.join(map(str, suite.holdout))}"
    if suite.ood_datasets:
        return next(iter(suite.ood_datasets))
    raise OodlabError(f"suite {suite.name!r} has no real-image OOD test set for the layer study")


def check_study(suite: Suite, cfg: LayerStudyConfig) -> None:
    """Refuse a suite or configuration the study cannot run, before anything is trained."""
    near_set(suite)
    if FAR_SET not in suite.synthetic:
        raise OodlabError(f"suite {suite.name!r} has no {FAR_SET!r} OOD set for the near/far sweep")
    layer_networks(suite.train, cfg)
    for name, n in (("n_fit", cfg.n_fit), ("n_eval", cfg.n_eval)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 10:
            raise OodlabError(f"{name} must be an integer >= 10, got {n!r}")


def _accuracy(model: nn.Module, images: ImageSet) -> float:
    logits = features.outputs(model, images).logits
    return float((logits.argmax(1).numpy() == images.y).mean())


def study_detectors(model: nn.Module) -> dict[tuple[str, str], Detector]:
    """``{(layer, score): unfitted detector}``: nine ``layer-softmax`` aggregations at every layer,
    ``mahalanobis`` (ε = 0) at every tap, and ``(ENSEMBLE, ENSEMBLE)``."""
    dets: dict[tuple[str, str], Detector] = {}
    for layer in layer_names(model):
        for agg in aggregations():
            stat, pool = agg.split("-")
            dets[(layer, agg)] = create_detector("layer-softmax", layer=layer, stat=stat, pool=pool)
        if layer != FINAL:
            dets[(layer, MAHALANOBIS)] = create_detector(MAHALANOBIS, tap=layer, noise=0.0)
    dets[(ENSEMBLE, ENSEMBLE)] = create_detector(ENSEMBLE, noise=0.0)
    return dets


def score_network(
    model: nn.Module, data: SuiteData, cfg: LayerStudyConfig, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Fit and score every study detector on one network; AUROC per (layer, score, OOD set), the
    validation AUROC of every layer aggregation, the near/far sweep and the blind choice."""
    seed = data.seed
    fit_set = subsample(data.id_train, cfg.n_fit, seed)
    id_val, ood_val = subsample(data.id_val, cfg.n_eval, seed), subsample(data.ood_val, cfg.n_eval, seed)
    id_test = subsample(data.id_test, cfg.n_eval, seed)
    oods = {name: subsample(s, cfg.n_eval, seed) for name, s in data.ood_tests.items()}
    taps = list(getattr(model, "tap_names", ()))
    specs = [stats_tap(t) for t in taps] + [tap_spec(t) for t in taps]
    t0 = time.perf_counter()
    features.outputs(model, fit_set, [tap_spec(t) for t in taps])
    for images in (id_val, ood_val, id_test, *oods.values()):
        features.outputs(model, images, specs)  # one pass per set; every detector reads it
    dets = study_detectors(model)
    scores: dict[str, dict[str, list[float]]] = {}
    val_auroc: dict[str, float] = {}
    orientation: dict[str, int] = {}
    test: dict[str, dict[str, float]] = {}
    for (layer, score), det in dets.items():
        det.fit(model, fit_set, id_val=id_val, ood_val=ood_val)
        key = f"{layer}/{score}"
        s_id = det.score_set(id_test).numpy()
        per_ood = {name: det.score_set(images).numpy() for name, images in oods.items()}
        test[key] = {name: auroc(s_id, s) for name, s in per_ood.items()}
        if score not in (MAHALANOBIS, ENSEMBLE):
            val_auroc[key] = auroc(det.score_set(id_val), det.score_set(ood_val))
            orientation[key] = int(det.orientation_)  # type: ignore[attr-defined]
        scores[key] = {"id": s_id, **per_ood}  # type: ignore[dict-item]
    near = near_set(data.suite)
    sweep: dict[str, dict[str, float]] = {}
    for pct in MIX_PERCENTS:
        spec = MixtureSpec(f"mix{pct}", near, FAR_SET, pct / 100)
        ia, ib, order = mixture_index(spec, len(oods[near]), len(oods[FAR_SET]), seed + _SEED_MIX)
        sweep[str(pct)] = {
            key: auroc(s["id"], np.concatenate([s[near][ia], s[FAR_SET][ib]])[order])
            for key, s in scores.items()
        }
    blind = max(val_auroc, key=lambda k: (val_auroc[k], -list(val_auroc).index(k)))
    log(f"  scored {len(dets)} detectors in {time.perf_counter() - t0:.0f} s; blind choice {blind}")
    return {
        "layers": list(layer_names(model)),
        "test_auroc": test,
        "validation_auroc": val_auroc,
        "orientation": orientation,
        "sweep": sweep,
        "near": near,
        "far": FAR_SET,
        "blind_choice": blind,
        "ensemble_tuning": dets[(ENSEMBLE, ENSEMBLE)].tuning().get("chosen", {}),
        "sizes": {
            "fit": len(fit_set),
            "id_val": len(id_val),
            "ood_val": len(ood_val),
            "id_test": len(id_test),
            **{name: len(images) for name, images in oods.items()},
        },
    }


def study_config_dict(cfg: LayerStudyConfig) -> dict[str, Any]:
    """The configuration as JSON (what keys a results folder)."""
    return dataclasses.asdict(cfg)


def run_cell(
    suite: Suite,
    seed: int,
    cfg: LayerStudyConfig,
    *,
    checkpoint_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train or load the study's networks for (``suite``, ``seed``) and score each of them."""
    data = build_suite(suite, seed=seed)
    train_set = subsample(data.id_train, cfg.n_train, seed)
    cell: dict[str, Any] = {
        "suite": suite.name,
        "seed": seed,
        "config": study_config_dict(cfg),
        "networks": {},
    }
    for label, recipe in layer_networks(replace(suite.train, seed=seed), cfg).items():
        model, meta = fit_or_load(recipe, train_set, checkpoint_dir=checkpoint_dir, progress=False)
        log(f"{suite.name} seed {seed} {label}: {'loaded' if meta['cached'] else 'trained'}")
        with torch.no_grad():
            result = score_network(model, data, cfg, log)
        result.update(
            recipe=recipe.identity(),
            checkpoint=Path(meta["path"]).name,
            train_seconds=meta["stats"]["train_seconds"],
            id_accuracy=_accuracy(model, data.id_test),
            id_val_accuracy=_accuracy(model, data.id_val),
        )
        cell["networks"][label] = result
        features.default_cache.clear()
    return cell


def run_layers(
    suites: Sequence[str],
    seeds: Sequence[int],
    cfg: LayerStudyConfig,
    out_dir: Path,
    *,
    checkpoint_dir: Path | None = None,
    plots: bool = True,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Run the study for every (suite, seed), seeds outermost, and write the report.

    Finished cells under ``out_dir/cells`` with the same configuration are reused; a cell made
    with another configuration is refused (delete the folder or choose another).
    """
    resolved = [get_suite(s) for s in suites]
    for suite in resolved:
        check_study(suite, cfg)
    cells_dir = out_dir / "cells"
    conf = study_config_dict(cfg)
    for seed in seeds:
        for suite in resolved:
            path = cells_dir / f"{suite.name}-seed{seed}.json"
            if path.exists():
                old = json.loads(path.read_text())
                if old.get("config") != conf:
                    raise OodlabError(
                        f"{path} was made with another layer-study configuration "
                        f"({stable_hash(old.get('config'))}); choose another --out or delete it"
                    )
                log(f"{suite.name} seed {seed}: reused {path}")
                continue
            cell = run_cell(suite, seed, cfg, checkpoint_dir=checkpoint_dir, log=log)
            atomic_write_text(path, json.dumps(cell, indent=1))
    return write_layer_report(out_dir, plots=plots)


# -- the report ----------------------------------------------------------------------------


def _ms(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def _pm(values: Sequence[float], digits: int = 2) -> str:
    st = _ms(values)
    text = f"{100 * st['mean']:.{digits}f}"
    return f"{text} ± {100 * st['std']:.{digits}f}" if len(values) > 1 else text


def load_cells(out_dir: Path) -> list[dict[str, Any]]:
    """Every finished (suite, seed) cell under ``out_dir/cells``, sorted by suite then seed."""
    paths = sorted((out_dir / "cells").glob("*.json"))
    if not paths:
        raise OodlabError(f"no layer-study results under {out_dir / 'cells'}; run `oodlab layers` first")
    cells = [json.loads(p.read_text()) for p in paths]
    return sorted(cells, key=lambda c: (c["suite"], c["seed"]))


def _by_suite(cells: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in cells:
        out.setdefault(c["suite"], []).append(c)
    return out


def _nets(cells: Sequence[dict[str, Any]]) -> list[str]:
    return list(cells[0]["networks"])


def _vals(cells: Sequence[dict[str, Any]], net: str, fn: Callable[[dict[str, Any]], float]) -> list[float]:
    return [fn(c["networks"][net]) for c in cells]


def _near_auroc(key: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: r["test_auroc"][key][r["near"]]


def _mean_auroc(key: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(np.mean(list(r["test_auroc"][key].values())))


def layer_table(cells: Sequence[dict[str, Any]], net: str) -> tuple[list[str], list[list[str]]]:
    """AUROC (near OOD set) per layer: the nine aggregations and per-layer Mahalanobis."""
    r0 = cells[0]["networks"][net]
    header = ["layer", *aggregations(), MAHALANOBIS]
    body = []
    for layer in r0["layers"]:
        row = [layer]
        for score in [*aggregations(), MAHALANOBIS]:
            key = f"{layer}/{score}"
            row.append(_pm(_vals(cells, net, _near_auroc(key))) if key in r0["test_auroc"] else "–")
        body.append(row)
    ens = f"{ENSEMBLE}/{ENSEMBLE}"
    body.append([f"({ENSEMBLE}, all taps)", *[""] * 9, _pm(_vals(cells, net, _near_auroc(ens)))])
    return header, body


def compact_layer_table(cells: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """min-MiSP and Mahalanobis per layer (near OOD set) for every network, side by side."""
    nets = _nets(cells)
    header = ["layer", *[f"{n}: {score}" for n in nets for score in ("misp-min", MAHALANOBIS)]]
    body = []
    for layer in cells[0]["networks"][nets[0]]["layers"]:
        row = [layer]
        for net in nets:
            for score in ("misp-min", MAHALANOBIS):
                key = f"{layer}/{score}"
                known = key in cells[0]["networks"][net]["test_auroc"]
                row.append(_pm(_vals(cells, net, _near_auroc(key))) if known else "–")
        body.append(row)
    ens = f"{ENSEMBLE}/{ENSEMBLE}"
    body.append(["(ensemble)", *[x for n in nets for x in ("", _pm(_vals(cells, n, _near_auroc(ens))))]])
    return header, body


def _argbest(r: dict[str, Any], keys: Sequence[str], ood: str | None = None) -> str:
    return max(keys, key=lambda k: r["test_auroc"][k][ood or r["near"]])


def _share_reversed(r: dict[str, Any]) -> float:
    """Share of the layer aggregations whose test AUROC on the near set is below 0.5."""
    keys = list(r["validation_auroc"])
    return float(np.mean([r["test_auroc"][k][r["near"]] < 0.5 for k in keys]))


def network_rows(cells: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """ID accuracy of each network (and its difference from the ReLU network), training time."""
    header = [
        "network",
        "ID test acc.",
        "Δ vs relu (points)",
        "ID val. acc.",
        "train s",
        "layer aggregations below 50 (orientation from validation reversed on the test set)",
    ]
    body = []
    for net in _nets(cells):
        acc = _vals(cells, net, lambda r: r["id_accuracy"])
        delta = [a - b for a, b in zip(acc, _vals(cells, "relu", lambda r: r["id_accuracy"]), strict=True)]
        body.append(
            [
                net,
                _pm(acc),
                _pm(delta),
                _pm(_vals(cells, net, lambda r: r["id_val_accuracy"])),
                f"{np.mean(_vals(cells, net, lambda r: r['train_seconds'])):.0f}",
                _pm(_vals(cells, net, _share_reversed), digits=0) + " %",
            ]
        )
    return header, body


def blind_rows(cells: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The validation-chosen layer aggregation vs the Mahalanobis ensemble, per network."""
    near = cells[0]["networks"]["relu"]["near"]
    header = [
        "network",
        "blind choice (per seed)",
        f"its AUROC ({near})",
        f"{ENSEMBLE} ({near})",
        "difference",
        "its AUROC (mean of OOD sets)",
        f"{ENSEMBLE} (mean of OOD sets)",
    ]
    ens = f"{ENSEMBLE}/{ENSEMBLE}"
    body = []
    for net in _nets(cells):
        chosen = _vals(cells, net, lambda r: r["blind_choice"])  # type: ignore[arg-type, return-value]
        b = [c["networks"][net]["test_auroc"][k][near] for c, k in zip(cells, chosen, strict=True)]
        bm = [
            float(np.mean(list(c["networks"][net]["test_auroc"][k].values())))
            for c, k in zip(cells, chosen, strict=True)
        ]
        e = _vals(cells, net, _near_auroc(ens))
        body.append(
            [
                net,
                ", ".join(str(k) for k in chosen),
                _pm(b),
                _pm(e),
                _pm([x - y for x, y in zip(b, e, strict=True)]),
                _pm(bm),
                _pm(_vals(cells, net, _mean_auroc(ens))),
            ]
        )
    return header, body


def sweep_rows(cells: Sequence[dict[str, Any]], net: str) -> tuple[list[str], list[list[str]]]:
    """AUROC per layer along the near/far mix: ``misp-min / mahalanobis`` per cell."""
    r0 = cells[0]["networks"][net]
    layers = r0["layers"]
    header = ["near %", *layers, "best layer (misp-min / mahalanobis)"]
    body = []
    for pct in MIX_PERCENTS:
        row = [str(pct)]
        means: dict[str, dict[str, float]] = {"misp-min": {}, MAHALANOBIS: {}}
        for layer in layers:
            parts = []
            for score in ("misp-min", MAHALANOBIS):
                key = f"{layer}/{score}"
                if key in r0["sweep"][str(pct)]:
                    v = [c["networks"][net]["sweep"][str(pct)][key] for c in cells]
                    means[score][layer] = float(np.mean(v))
                    parts.append(f"{100 * np.mean(v):.1f}")
                else:
                    parts.append("–")
            row.append(" / ".join(parts))
        row.append(" / ".join(max(m, key=m.__getitem__) for m in means.values()))
        body.append(row)
    return header, body


def claims(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each claim of the study, per log-softmax network: the numbers (means over seeds) and a verdict."""
    out: list[dict[str, Any]] = []
    nets = [n for n in _nets(cells) if n != "relu"]
    acc = {n: float(np.mean(_vals(cells, n, lambda r: r["id_accuracy"]))) for n in _nets(cells)}

    def mean_near(net: str, key: str) -> float:
        return float(np.mean(_vals(cells, net, _near_auroc(key))))

    for net in nets:
        layers = cells[0]["networks"][net]["layers"]
        taps = [la for la in layers if la != FINAL]
        d = 100 * (acc[net] - acc["relu"])
        out.append(
            {
                "network": net,
                "claim": "keeps ID accuracy (within 1.5 points of the ReLU network)",
                "numbers": f"{100 * acc[net]:.2f} vs {100 * acc['relu']:.2f} ({d:+.2f})",
                "holds": d >= -1.5,
            }
        )
        msp, misp = mean_near(net, f"{FINAL}/msp-max"), mean_near(net, f"{FINAL}/misp-max")
        out.append(
            {
                "network": net,
                "claim": "MiSP beats MSP at the final layer",
                "numbers": f"MiSP {100 * misp:.2f} vs MSP {100 * msp:.2f}",
                "holds": misp > msp,
            }
        )
        # min-MiSP at the layer chosen on validation, against the ensemble.
        per_seed = []
        for c in cells:
            r = c["networks"][net]
            best = max(layers, key=lambda la: r["validation_auroc"][f"{la}/misp-min"])
            per_seed.append(r["test_auroc"][f"{best}/misp-min"][r["near"]])
        ens = mean_near(net, f"{ENSEMBLE}/{ENSEMBLE}")
        m = float(np.mean(per_seed))
        out.append(
            {
                "network": net,
                "claim": "min-MiSP (layer chosen on validation) comes within 1 point of the Mahalanobis "
                "ensemble",
                "numbers": f"min-MiSP {100 * m:.2f} vs ensemble {100 * ens:.2f}",
                "holds": m >= ens - 0.01,
            }
        )
        means = {a: float(np.mean([mean_near(net, f"{la}/{a}") for la in taps])) for a in aggregations()}
        wins = sum(
            _argbest(c["networks"][net], [f"{la}/{a}" for a in aggregations()]).endswith("/misp-min")
            for c in cells
            for la in taps
        )
        best = max(means, key=means.__getitem__)
        out.append(
            {
                "network": net,
                "claim": "min of MiSP is the best of the nine aggregations",
                "numbers": f"mean over taps: misp-min {100 * means['misp-min']:.2f}, best {best} "
                f"{100 * means[best]:.2f}; misp-min best at {wins} of {len(taps) * len(cells)} (tap, seed)",
                "holds": best == "misp-min",
            }
        )
        early, late = taps[:2], taps[-3:-1]
        e_maha = np.mean([mean_near(net, f"{la}/{MAHALANOBIS}") for la in early])
        e_misp = np.mean([mean_near(net, f"{la}/misp-min") for la in early])
        l_maha = np.mean([mean_near(net, f"{la}/{MAHALANOBIS}") for la in late])
        l_misp = np.mean([mean_near(net, f"{la}/misp-min") for la in late])
        out.append(
            {
                "network": net,
                "claim": f"Mahalanobis better in early blocks ({', '.join(early)}), min-MiSP in the final "
                f"blocks ({', '.join(late)})",
                "numbers": f"early: Mahalanobis {100 * e_maha:.2f} vs min-MiSP {100 * e_misp:.2f}; "
                f"late: Mahalanobis {100 * l_maha:.2f} vs min-MiSP {100 * l_misp:.2f}",
                "holds": bool(e_maha > e_misp and l_misp > l_maha),
            }
        )
        idx = {}
        for pct in (0, 100):
            sw = {
                la: float(
                    np.mean(
                        [
                            max(
                                v
                                for k, v in c["networks"][net]["sweep"][str(pct)].items()
                                if k.startswith(f"{la}/")
                            )
                            for c in cells
                        ]
                    )
                )
                for la in taps
            }
            idx[pct] = max(sw, key=sw.__getitem__)
        out.append(
            {
                "network": net,
                "claim": "early layers help with far OOD, late layers with near OOD",
                "numbers": f"best tap (best score at each tap, mean over seeds): all far {idx[0]}, "
                f"all near {idx[100]}",
                "holds": taps.index(idx[0]) < taps.index(idx[100]),
            }
        )
    lam = sorted(nets, key=lambda n: float(n.split("=")[1]))
    if len(lam) > 1:
        out.append(
            {
                "network": ", ".join(lam),
                "claim": "more entropy weight costs more accuracy",
                "numbers": ", ".join(f"{n}: {100 * acc[n]:.2f}" for n in lam),
                "holds": all(acc[a] >= acc[b] for a, b in zip(lam, lam[1:], strict=False)),
            }
        )
    return out


def layer_figure(cells: Sequence[dict[str, Any]], title: str) -> Any:
    """AUROC on the near OOD set per layer (x-axis): one panel per network, one line per score."""
    from matplotlib.figure import Figure

    nets = _nets(cells)
    fig = Figure(figsize=(4.2 * len(nets) + 1.6, 3.6), layout="constrained")
    axes = fig.subplots(1, len(nets), sharey=True, squeeze=False)[0]
    colours = {"msp": "tab:blue", "misp": "tab:red", "asp": "tab:green"}
    styles = {"max": ":", "min": "-", "mean": "--"}
    for ax, net in zip(axes, nets, strict=True):
        r0 = cells[0]["networks"][net]
        layers = r0["layers"]
        x = np.arange(len(layers))
        for agg in aggregations():
            stat, pool = agg.split("-")
            y = [100 * np.mean(_vals(cells, net, _near_auroc(f"{la}/{agg}"))) for la in layers]
            ax.plot(x, y, styles[pool], color=colours[stat], lw=2.2 if agg == "misp-min" else 1, label=agg)
        taps = [la for la in layers if la != FINAL]
        y = [100 * np.mean(_vals(cells, net, _near_auroc(f"{la}/{MAHALANOBIS}"))) for la in taps]
        ax.plot(np.arange(len(taps)), y, "o-", color="black", lw=2, label=MAHALANOBIS)
        ens = 100 * np.mean(_vals(cells, net, _near_auroc(f"{ENSEMBLE}/{ENSEMBLE}")))
        ax.axhline(ens, color="grey", ls="-.", lw=1, label=f"{ENSEMBLE}")
        ax.set_xticks(x, layers, rotation=45, ha="right")
        ax.set_title(net)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"AUROC % ({cells[0]['networks']['relu']['near']})")
    fig.legend(*axes[-1].get_legend_handles_labels(), loc="outside right upper", fontsize=7)
    fig.suptitle(title)
    return fig


def sweep_figure(cells: Sequence[dict[str, Any]], title: str) -> Any:
    """AUROC per tap along the near/far mix: min-MiSP (solid) and Mahalanobis (dashed) per network."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    nets = _nets(cells)
    fig = Figure(figsize=(4.2 * len(nets) + 1.6, 3.6), layout="constrained")
    axes = fig.subplots(1, len(nets), sharey=True, squeeze=False)[0]
    cmap = colormaps["viridis"]
    for ax, net in zip(axes, nets, strict=True):
        taps = [la for la in cells[0]["networks"][net]["layers"] if la != FINAL]
        x = np.arange(len(taps))
        for i, pct in enumerate(MIX_PERCENTS):
            colour = cmap(i / (len(MIX_PERCENTS) - 1))
            for score, ls in (("misp-min", "-"), (MAHALANOBIS, "--")):
                y = [
                    100 * np.mean([c["networks"][net]["sweep"][str(pct)][f"{la}/{score}"] for c in cells])
                    for la in taps
                ]
                ax.plot(x, y, ls, color=colour, label=f"{pct}% near, {score}")
        ax.set_xticks(x, taps, rotation=45, ha="right")
        ax.set_title(net)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    r0 = cells[0]["networks"]["relu"]
    axes[0].set_ylabel(f"AUROC % ({r0['near']} + {r0['far']})")
    fig.legend(*axes[-1].get_legend_handles_labels(), loc="outside right upper", fontsize=6)
    fig.suptitle(title)
    return fig


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    from tabulate import tabulate

    return tabulate(body, headers=list(header), tablefmt="github", disable_numparse=True)


def _sections(cells: Sequence[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    """``(kind, title, content)`` of one suite's report: ``("table", title, (header, body))`` or
    ``("claims", title, rows)``."""
    seeds = [c["seed"] for c in cells]
    what = f"mean ± std over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    near = cells[0]["networks"]["relu"]["near"]
    parts: list[tuple[str, str, Any]] = [("table", f"Networks ({what})", network_rows(cells))]
    parts.append(
        ("table", f"min-MiSP and Mahalanobis per layer on {near} ({what})", compact_layer_table(cells))
    )
    for net in _nets(cells):
        parts.append(("table", f"AUROC per layer on {near}, {net} ({what})", layer_table(cells, net)))
    parts.append(
        ("table", f"Blind choice on validation vs the Mahalanobis ensemble ({what})", blind_rows(cells))
    )
    for net in _nets(cells):
        parts.append(
            (
                "table",
                f"Near/far sweep ({near} + {FAR_SET}), {net}: AUROC misp-min / mahalanobis ({what})",
                sweep_rows(cells, net),
            )
        )
    parts.append(("claims", f"Claims ({what}; AUROC on {near})", claims(cells)))
    return parts


def _claims_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    return ["network", "claim", "numbers", "holds"], [
        [r["network"], r["claim"], r["numbers"], "yes" if r["holds"] else "no"] for r in rows
    ]


def markdown_layers(cells: Sequence[dict[str, Any]]) -> str:
    """The whole report as Markdown (percent)."""
    cfg = cells[0]["config"]
    lines = [
        "# Layer study: per-layer softmax statistics vs Mahalanobis",
        "",
        "AUROC in percent, ID positive, on seeded subsets of the test sets; every score is oriented and "
        "every choice is made on ID validation vs the synthetic OOD validation set, never on a test set. "
        f"Configuration: `{json.dumps(cfg)}`.",
    ]
    for suite, group in _by_suite(cells).items():
        lines += ["", f"## {suite}"]
        for kind, title, content in _sections(group):
            header, body = _claims_table(content) if kind == "claims" else content
            lines += ["", f"### {title}", "", _md_table(header, body)]
    return "\n".join(lines) + "\n"


def write_layer_report(out_dir: Path, *, plots: bool = True) -> list[Path]:
    """``layers.json`` (every cell), ``layers.md``, ``plots/`` and a self-contained ``report.html``."""
    import base64
    import html

    from oodlab.bench.html import _CSS, _table
    from oodlab.bench.plots import _RC, _save

    cells = load_cells(out_dir)
    written = [out_dir / "layers.json", out_dir / "layers.md", out_dir / "report.html"]
    atomic_write_text(written[0], json.dumps({"cells": cells}, indent=1))
    atomic_write_text(written[1], markdown_layers(cells))
    figures: dict[str, list[tuple[str, dict[str, str]]]] = {}
    if plots:
        import matplotlib

        with matplotlib.rc_context(_RC):
            for suite, group in _by_suite(cells).items():
                for name, make in (("layers", layer_figure), ("sweep", sweep_figure)):
                    title = f"{suite}: AUROC per layer" if name == "layers" else f"{suite}: near/far sweep"
                    saved = _save(make(group, title), out_dir / "plots" / f"{name}-{suite}")
                    figures.setdefault(suite, []).append((title, saved))
                    written += [Path(saved["png"]), Path(saved["svg"])]
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>oodlab layer study</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>oodlab layer study</h1>",
        '<p class="note">AUROC in percent, ID positive. Scores are oriented and choices made on validation '
        f"data only. Configuration: {esc(json.dumps(cells[0]['config']))}.</p>",
    ]
    for suite, group in _by_suite(cells).items():
        parts.append(f'<h2 id="suite-{esc(suite)}">{esc(suite)}</h2>')
        for title, saved in figures.get(suite, []):
            data = base64.b64encode(Path(saved["png"]).read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{esc(title)}">'
                f"<figcaption>{esc(title)} (layer on the x-axis)</figcaption></figure>"
            )
        for kind, title, content in _sections(group):
            header, body = _claims_table(content) if kind == "claims" else content
            parts += [f"<h3>{esc(title)}</h3>", _table(header, [[esc(x) for x in row] for row in body])]
    parts.append("</body></html>")
    atomic_write_text(written[2], "\n".join(parts) + "\n")
    return written
