"""Invariants every registered detector keeps, discovered from the registry.

A detector added later is covered here without editing this file. Detectors may declare
``quick_params`` (for example a small tuning grid) to keep these tests fast. Which checks run
is chosen from each detector's declared :class:`~oodlab.detectors.base.Capabilities`, as
scikit-learn's common tests read estimator tags: shared-pass detectors must score the shared
outputs exactly as the raw images; those with their own passes must refuse shared outputs;
input-gradient ones must work under ``torch.no_grad``; stochastic ones must be seeded and
never touch the outputs cache; methods that train score a network they make from the tiny
recipe (in seconds), cached, and save and reload it without being given a model.
"""

from __future__ import annotations

import inspect
import re

import pytest
import torch

from oodlab import NotFittedError, OodlabError, features
from oodlab.detectors import Detector, create_detector, get_detector_class, list_detectors, load_detector
from oodlab.features import extract
from oodlab.metrics import auroc
from oodlab.training import make_network

from .conftest import TINY_RECIPE

DETECTORS = list_detectors()
TRAINING = [n for n in DETECTORS if get_detector_class(n).capabilities.trains]


def make(name: str) -> Detector:
    return create_detector(name, **get_detector_class(name).quick_params)


@pytest.fixture(scope="module")
def models(tiny_setup: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.nn.Module]:
    """The network each detector scores: the tiny model, or the one a method makes from its recipe."""
    ckpt = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for name in DETECTORS:
        if name in TRAINING:
            net = make(name).network(TINY_RECIPE)
            out[name], _ = make_network(net, tiny_setup["id_train"], checkpoint_dir=ckpt, progress=False)
        else:
            out[name] = tiny_setup["model"]
    out["__checkpoints__"] = ckpt  # type: ignore[assignment]
    return out


def fitted(name: str, setup: dict, models: dict) -> Detector:
    return make(name).fit(models[name], setup["id_train"], id_val=setup["id_val"], ood_val=setup["ood_val"])


@pytest.fixture(scope="module")
def fitted_detectors(tiny_setup: dict, models: dict) -> dict[str, Detector]:
    return {name: fitted(name, tiny_setup, models) for name in DETECTORS}


def test_registry_is_not_empty() -> None:
    assert {"msp", "energy", "maxlogit", "entropy", "misp", "temperature"} <= set(DETECTORS)


@pytest.mark.parametrize("name", DETECTORS)
def test_fit_returns_self(name: str, tiny_setup: dict, models: dict) -> None:
    det = make(name)
    s = tiny_setup
    assert det.fit(models[name], s["id_train"], id_val=s["id_val"], ood_val=s["ood_val"]) is det


@pytest.mark.parametrize("name", DETECTORS)
def test_unfitted_use_raises(name: str, tiny_setup: dict) -> None:
    det = make(name)
    x = tiny_setup["id_test"].tensor(0, 4)
    with pytest.raises(NotFittedError, match=name):
        det.score(x)
    with pytest.raises(NotFittedError):
        det.tuning()


@pytest.mark.parametrize("name", DETECTORS)
def test_scores_are_one_finite_float_per_input(name: str, fitted_detectors: dict, tiny_setup: dict) -> None:
    x = tiny_setup["id_test"].tensor(0, 17)
    s = fitted_detectors[name].score(x)
    assert s.shape == (17,)
    assert s.dtype == torch.float64
    assert torch.isfinite(s).all()
    assert not s.requires_grad


@pytest.mark.parametrize("name", DETECTORS)
def test_batch_size_does_not_change_scores(name: str, fitted_detectors: dict, tiny_setup: dict) -> None:
    det = fitted_detectors[name]
    x = tiny_setup["id_test"].tensor(0, 23)
    old = det.batch_size
    try:
        det.batch_size = 1000
        whole = det.score(x)
        det.batch_size = 5
        mini = det.score(x)
    finally:
        det.batch_size = old
    one_by_one = torch.cat([det.score(x[i : i + 1]) for i in range(len(x))])
    # The model's own output differs in the last float32 bits between batch sizes (about 1e-6);
    # detectors that scale features (ViM's α, a precision matrix) amplify that, so the tolerance
    # is relative to the spread of the scores: far below anything that changes a ranking.
    atol = 1e-6 + 1e-4 * float(whole.max() - whole.min())
    torch.testing.assert_close(mini, whole, rtol=1e-5, atol=atol)
    torch.testing.assert_close(one_by_one, whole, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("name", DETECTORS)
def test_shuffling_inputs_shuffles_scores(name: str, fitted_detectors: dict, tiny_setup: dict) -> None:
    det = fitted_detectors[name]
    x = tiny_setup["id_test"].tensor(0, 30)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(det.score(x[perm]), det.score(x)[perm], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", DETECTORS)
def test_seeded_fits_give_identical_scores(
    name: str, fitted_detectors: dict, tiny_setup: dict, models: dict
) -> None:
    x = tiny_setup["id_test"].tensor(0, 20)
    again = fitted(name, tiny_setup, models)
    assert torch.equal(again.score(x), fitted_detectors[name].score(x))


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_fit_leaves_model_unchanged(name: str, mode: str, tiny_setup: dict, models: dict) -> None:
    model = models[name]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train(mode == "train")
    try:
        det = fitted(name, tiny_setup, models)
        det.score(tiny_setup["id_test"].tensor(0, 8))
        assert model.training == (mode == "train")
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


@pytest.fixture(autouse=True)
def _known_failures(request: pytest.FixtureRequest) -> None:
    """A check a detector declares it fails (``Detector.xfail_checks``) runs as a strict xfail."""
    callspec = getattr(request.node, "callspec", None)
    name = callspec.params.get("name") if callspec is not None else None
    if name in DETECTORS:
        reason = get_detector_class(name).xfail_checks.get(request.node.originalname)
        if reason is not None:
            request.node.add_marker(pytest.mark.xfail(reason=f"{name}: {reason}", strict=True))


@pytest.mark.parametrize("name", DETECTORS)
def test_separates_an_easy_case(name: str, fitted_detectors: dict, tiny_setup: dict) -> None:
    """AUROC with ID positive above 0.9: catches a flipped score sign."""
    det = fitted_detectors[name]
    s_id = det.score(tiny_setup["id_test"].tensor())
    s_ood = det.score(tiny_setup["ood_test"].tensor())
    assert auroc(s_id, s_ood) > 0.9


@pytest.mark.parametrize("name", DETECTORS)
def test_save_and_reload_give_identical_scores(
    name: str, fitted_detectors: dict, models: dict, tiny_setup: dict, tmp_path
) -> None:
    det = fitted_detectors[name]
    det.save(tmp_path / name)
    again = load_detector(tmp_path / name, models[name])
    assert type(again) is type(det)
    assert again.get_params() == det.get_params()
    x = tiny_setup["id_test"].tensor(0, 16)
    assert torch.equal(again.score(x), det.score(x))


@pytest.mark.parametrize("name", DETECTORS)
def test_wrong_input_shape_is_a_clear_error(name: str, fitted_detectors: dict) -> None:
    det = fitted_detectors[name]
    for bad in (torch.rand(4, 3, 12, 12), torch.rand(4, 1, 20, 20), torch.rand(4, 12, 12)):
        with pytest.raises(OodlabError, match="expected"):
            det.score(bad)
    with pytest.raises(OodlabError):
        det.score([[0.0]])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", DETECTORS)
def test_shared_forward_pass_matches_raw_scoring(name: str, fitted_detectors: dict, tiny_setup: dict) -> None:
    det = fitted_detectors[name]
    if not det.capabilities.shared_pass:
        pytest.skip(f"{name} runs its own passes ({det.capabilities.describe()})")
    model, images = det.model_, tiny_setup["id_test"]
    out = extract(model, images, det.required_taps(model))
    torch.testing.assert_close(det.score_outputs(out), det.score(images.tensor()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(det.score_set(images), det.score(images.tensor()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", DETECTORS)
def test_own_passes_refuse_shared_outputs(name: str, fitted_detectors: dict, tiny_setup: dict) -> None:
    det = fitted_detectors[name]
    if det.capabilities.shared_pass:
        pytest.skip(f"{name} is scored from the shared pass")
    with pytest.raises(OodlabError, match="runs the model itself"):
        det.score_outputs(extract(det.model_, tiny_setup["id_test"]))


@pytest.mark.parametrize("name", DETECTORS)
def test_input_gradients_work_under_no_grad(name: str, fitted_detectors: dict, tiny_setup: dict) -> None:
    det = fitted_detectors[name]
    if not det.capabilities.input_gradient:
        pytest.skip(f"{name} takes no input gradient")
    x = tiny_setup["id_test"].tensor(0, 12)
    with torch.no_grad():
        inside = det.score(x)
    assert torch.equal(inside, det.score(x))


@pytest.mark.parametrize("name", DETECTORS)
def test_stochastic_scores_are_seeded_and_never_cached(
    name: str, fitted_detectors: dict, tiny_setup: dict, models: dict
) -> None:
    det = fitted_detectors[name]
    if not det.capabilities.stochastic:
        pytest.skip(f"{name} is deterministic")
    images = tiny_setup["id_test"].subset(slice(0, 25))
    with features.using_cache(features.OutputsCache()) as cache:
        first = det.score_set(images)
        second = det.score_set(images)
    assert cache.forward_passes == 0 and not cache._store, "stochastic scores went through the outputs cache"
    assert torch.equal(first, second)
    seeds = {k: v for k, v in det.get_params().items() if k == "seed"}
    assert seeds, f"{name} is stochastic but has no seed parameter"
    other = create_detector(name, **{**det.get_params(), "seed": det.get_params()["seed"] + 1})
    other.fit(
        models[name], tiny_setup["id_train"], id_val=tiny_setup["id_val"], ood_val=tiny_setup["ood_val"]
    )
    assert not torch.equal(other.score_set(images), first), "another seed should draw other passes"


@pytest.mark.parametrize("name", TRAINING)
def test_methods_that_train_make_their_network_once(name: str, tiny_setup: dict, models: dict) -> None:
    net = make(name).network(TINY_RECIPE)
    assert net.identity() != [TINY_RECIPE.identity()], "a method that trains makes a network of its own"
    again, meta = make_network(
        net, tiny_setup["id_train"], checkpoint_dir=models["__checkpoints__"], progress=False
    )
    assert meta["cached"], "its network comes from the checkpoint cache the second time"
    x = tiny_setup["id_test"].tensor(0, 10)
    with torch.no_grad():
        torch.testing.assert_close(again(x), models[name](x), rtol=0, atol=0)


@pytest.mark.parametrize("name", TRAINING)
def test_methods_that_train_save_their_network(
    name: str, fitted_detectors: dict, tiny_setup: dict, tmp_path
) -> None:
    det = fitted_detectors[name]
    det.save(tmp_path / name)
    again = load_detector(tmp_path / name)  # no model given: the saved, learned network
    assert again.model_ is not det.model_
    x = tiny_setup["id_test"].tensor(0, 16)
    assert torch.equal(again.score(x), det.score(x))


@pytest.mark.parametrize("name", DETECTORS)
def test_train_taps_cover_what_fit_reads(
    name: str, tiny_setup: dict, models: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bench runner's shared pass over the training set computes only ``train_taps``:
    fitting from that cache must not run the training set through the model again."""
    s = tiny_setup
    model, id_train = models[name], s["id_train"]
    det = make(name)
    lengths: list[int] = []
    real_extract = features.extract

    def spy(m: torch.nn.Module, images: object, *args: object, **kwargs: object) -> features.Outputs:
        lengths.append(len(images))  # type: ignore[arg-type]
        return real_extract(m, images, *args, **kwargs)  # type: ignore[arg-type]

    with features.using_cache(features.OutputsCache()):
        features.outputs(model, id_train, det.train_taps(model))
        monkeypatch.setattr(features, "extract", spy)
        det.fit(model, id_train, id_val=s["id_val"], ood_val=s["ood_val"])
    assert len(id_train) not in lengths


@pytest.mark.parametrize("name", DETECTORS)
def test_params_round_trip(name: str) -> None:
    det = make(name)
    params = det.get_params()
    assert create_detector(name, **params).get_params() == params


@pytest.mark.parametrize("name", DETECTORS)
def test_docstring_has_formula_and_references(name: str) -> None:
    doc = inspect.getdoc(get_detector_class(name)) or ""
    assert doc.strip(), f"{name} has no docstring"
    refs = doc.split("References:", 1)
    assert len(refs) == 2, f"{name}'s docstring has no 'References:' section"
    first = refs[1].strip().split("\n\n", 1)[0]
    assert re.search(r"\b(19|20)\d\d\b", first), f"{name}'s References name no paper with a year"


@pytest.mark.parametrize("name", [n for n in DETECTORS if get_detector_class(n).tunes])
def test_tuned_detectors_need_validation_data(name: str, tiny_setup: dict, models: dict) -> None:
    with pytest.raises(OodlabError, match=name):
        make(name).fit(models[name], tiny_setup["id_train"])


@pytest.mark.parametrize("name", [n for n in DETECTORS if get_detector_class(n).tunes])
def test_tuned_detectors_report_their_choice(name: str, fitted_detectors: dict) -> None:
    tuning = fitted_detectors[name].tuning()
    assert tuning["chosen"], "a tuned detector reports what it chose"
    assert tuning["id_val"] == "patterns" and tuning["ood_val"] == "dark-val"


@pytest.mark.parametrize("name", DETECTORS)
def test_empty_training_set_is_a_clear_error(name: str, tiny_setup: dict, models: dict) -> None:
    empty = tiny_setup["id_train"].subset(slice(0, 0))
    with pytest.raises(OodlabError, match="empty"):
        make(name).fit(models[name], empty, id_val=tiny_setup["id_val"], ood_val=tiny_setup["ood_val"])


# -- the same detectors on a user's own network, wrapped with oodlab.models.wrap -------------


#: Post-hoc, deterministic detectors (as ``--detectors all``): they score the network they are
#: given (the methods that train make their own; MC dropout needs dropout layers).
POST_HOC = [n for n in DETECTORS if n not in TRAINING and not get_detector_class(n).capabilities.stochastic]


def fit_on(name: str, model: torch.nn.Module, setup: dict) -> Detector:
    torch.manual_seed(0)
    return make(name).fit(model, setup["id_train"], id_val=setup["id_val"], ood_val=setup["ood_val"])


@pytest.fixture(scope="module")
def builtin_detectors(wrapped_models: dict, tiny_setup: dict) -> dict[str, dict[str, Detector]]:
    """Each post-hoc detector fitted on each built-in model of ``wrapped_models``."""
    return {
        kind: {name: fit_on(name, builtin, tiny_setup) for name in POST_HOC}
        for kind, (builtin, _) in wrapped_models.items()
    }


@pytest.mark.parametrize("kind", ["sequential", "resnet"])
@pytest.mark.parametrize("name", POST_HOC)
def test_every_detector_runs_on_a_wrapped_model(
    name: str,
    kind: str,
    wrapped_models: dict,
    builtin_detectors: dict,
    tiny_setup: dict,
    tmp_path,
) -> None:
    """Fit, score, shared pass, save/reload on a wrapped plain network; scores identical to the
    same detector on the equivalent built-in model."""
    _, wrapped = wrapped_models[kind]
    det = fit_on(name, wrapped, tiny_setup)
    x_id, x_ood = tiny_setup["id_test"].tensor(), tiny_setup["ood_test"].tensor()
    s_id, s_ood = det.score(x_id), det.score(x_ood)
    assert s_id.shape == (len(x_id),) and s_id.dtype == torch.float64 and torch.isfinite(s_id).all()
    assert auroc(s_id, s_ood) > 0.9
    if det.capabilities.shared_pass:
        torch.testing.assert_close(det.score_set(tiny_setup["id_test"]), s_id, rtol=1e-5, atol=1e-6)
    det.save(tmp_path / name)
    assert torch.equal(load_detector(tmp_path / name, wrapped).score(x_id[:16]), s_id[:16])
    builtin = builtin_detectors[kind][name]
    torch.testing.assert_close(s_id, builtin.score(x_id), rtol=1e-6, atol=1e-9)
