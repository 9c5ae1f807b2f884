"""Your model, your data: `oodlab fit` / `score` / `bench --model`, bundles, evaluate(), specs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from oodlab import OodlabError
from oodlab.api import evaluate, parse_detectors, scores_in_batches
from oodlab.bundle import load_bundle
from oodlab.cli import main
from oodlab.data import ImageSet
from oodlab.data.loaders import ImageFolderDataset
from oodlab.models import register_model
from oodlab.models.user import load_model, weights_sha256

from .conftest import SIZE, dark_images, pattern_images
from .test_cli import tiny_suite  # noqa: F401  (the seconds-long suite of the CLI tests)
from .tvstyle import sequential_from_lenet


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def write_images(root: Path, images: ImageSet, by_class: bool = True) -> Path:
    for i, (x, y) in enumerate(
        zip(images.x, images.y if images.y is not None else [0] * len(images), strict=True)
    ):
        folder = root / f"class{y}" if by_class else root
        folder.mkdir(parents=True, exist_ok=True)
        a = (np.clip(x[0], 0, 1) * 255).round().astype(np.uint8)
        Image.fromarray(a).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def user_files(tiny_setup: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny LeNet written as a plain nn.Sequential's safetensors, and PNG folders."""
    root = tmp_path_factory.mktemp("user")
    net = sequential_from_lenet(tiny_setup["model"])
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, root / "net.safetensors")
    (root / "mynet.py").write_text(
        "from torch import nn\n\n"
        "def build(num_classes=3):\n"
        "    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),\n"
        "        nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(),\n"
        "        nn.Dropout(0.5), nn.Linear(128, num_classes))\n"
    )
    return {
        "root": root,
        "spec": f"{root / 'mynet.py'}:build@{root / 'net.safetensors'}",
        "train": write_images(root / "train", pattern_images(300, seed=20)),
        "test": write_images(root / "test", pattern_images(40, seed=21), by_class=False),
        "ood": write_images(root / "ood", dark_images(40, seed=22), by_class=False),
    }


@pytest.fixture(scope="module")
def bundle_dir(user_files: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "b"
    argv = ["fit", "--model", user_files["spec"], "--taps", "conv2=3", "--mean", "0.5", "--std", "0.5"]
    argv += ["--train", str(user_files["train"]), "--detectors", "msp,knn:k=5,mahalanobis:noise=0"]
    main([*argv, "--out", str(out)])
    return out


def test_fit_writes_a_complete_bundle(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["oodlab"]
    assert [d["label"] for d in manifest["detectors"]] == ["msp", "knn:k=5", "mahalanobis:noise=0"]
    assert manifest["primary"] in {d["label"] for d in manifest["detectors"]}
    model = manifest["model"]
    assert model["source"].endswith("mynet.py:build") and model["weights_file"] == "model.safetensors"
    assert model["wrap"]["taps"] == {"conv2": "3"} and model["wrap"]["mean"] == [0.5]
    assert len(model["weights_sha256"]) == 64 and len(model["weights_file_sha256"]) == 64
    for d in manifest["detectors"]:
        assert d["accept_rate"] == 0.95 and d["validation"]["id_accepted"] >= 0.95
        assert d["validation"]["ood_val"].startswith("synthetic-")
    assert set(manifest["files"]) == {
        p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()
    } - {"manifest.json"}
    assert not list(bundle_dir.parent.glob(".*tmp"))


def test_score_csv_json_and_streaming(bundle_dir: Path, user_files: dict, capsys, tmp_path: Path) -> None:
    code, out, err = run(["score", str(bundle_dir), str(user_files["test"])], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 40 and rows[0]["image"] == "0000.png"
    assert sum(r["accept"] == "True" for r in rows) >= 36
    code, _, _ = run(
        ["score", str(bundle_dir), str(user_files["ood"]), "--out", str(tmp_path / "o.json")], capsys
    )
    doc = json.loads((tmp_path / "o.json").read_text())
    assert code == 0 and len(doc["results"]) == 40
    assert sum(r["accept"] for r in doc["results"]) <= 4
    # Batch by batch (a folder through a DataLoader) equals one batch in memory.
    bundle = load_bundle(bundle_dir)
    loader = torch.utils.data.DataLoader(ImageFolderDataset(user_files["test"]), batch_size=7)
    det = bundle.detectors[bundle.primary]
    streamed = scores_in_batches(det, loader)
    whole = torch.cat([x for x, _ in loader])
    np.testing.assert_allclose(streamed, det.score(whole).numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(streamed, [float(r["score"]) for r in rows], rtol=1e-6, atol=1e-9)


def test_a_bundle_refuses_other_weights_and_newer_formats(bundle_dir: Path, tmp_path: Path, capsys) -> None:
    bundle = load_bundle(bundle_dir)
    other = bundle.model
    with torch.no_grad():
        other.module[0].bias.add_(1.0)
    try:
        with pytest.raises(OodlabError, match="model weights differ from the bundle's"):
            load_bundle(bundle_dir, model=other)
    finally:
        with torch.no_grad():
            other.module[0].bias.sub_(1.0)
    copy = tmp_path / "newer"
    copy.mkdir()
    for p in bundle_dir.rglob("*"):
        if p.is_file():
            (copy / p.relative_to(bundle_dir)).parent.mkdir(parents=True, exist_ok=True)
            (copy / p.relative_to(bundle_dir)).write_bytes(p.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format": 99}))
    code, out, err = run(["score", str(copy), str(tmp_path)], capsys)
    assert code == 1 and "format 99, newer than this oodlab" in err and err.count("\n") == 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "model.safetensors").write_bytes(b"x" + (copy / "model.safetensors").read_bytes()[1:])
    with pytest.raises(OodlabError, match="altered"):
        load_bundle(copy)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "no_such_module_xyz:build"], "cannot import no_such_module_xyz"),
        (["--model", "not-a-model"], "unknown model spec"),
        (
            ["--taps", "a=layer9"],
            "'layer9' is not a submodule of Sequential; the children of Sequential are: 0, 1",
        ),
        (["--head", "1"], "head '1' is a ReLU, not an nn.Linear"),
        (["--detectors", "knn:kk=3"], "unexpected keyword argument 'kk'"),
    ],
)
def test_fit_bad_input_is_one_line_and_writes_nothing(
    extra: list[str], message: str, user_files: dict, tmp_path: Path, capsys
) -> None:
    argv = [
        "fit",
        "--model",
        user_files["spec"],
        "--train",
        str(user_files["train"]),
        "--out",
        str(tmp_path / "b"),
    ]
    code, out, err = run([*argv, *extra], capsys)
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_fit_refuses_a_folder_without_images_or_of_mixed_sizes(
    user_files: dict, tmp_path: Path, capsys
) -> None:
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(mixed / "b.png")
    for data, message in ((tmp_path / "empty", "no images in"), (mixed, "images of different sizes")):
        argv = ["fit", "--model", user_files["spec"], "--train", str(data), "--out", str(tmp_path / "b")]
        code, _, err = run(argv, capsys)
        assert code == 1 and message in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_bench_on_your_model(user_files: dict, tmp_path: Path, capsys) -> None:
    argv = [
        "bench",
        "--model",
        user_files["spec"],
        "--mean",
        "0.5",
        "--std",
        "0.5",
        "--detectors",
        "energy,knn:k=5",
    ]
    argv += [
        "--train",
        str(user_files["train"]),
        "--id",
        str(user_files["test"]),
        "--ood",
        f"dark={user_files['ood']}",
    ]
    code, out, err = run([*argv, "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [(r["detector"], r["ood"]) for r in rows] == [("energy", "dark"), ("knn:k=5", "dark")]
    assert all(r["auroc"] > 0.9 for r in rows) and "knn:k=5" in out


def test_evaluate_equals_fitting_by_hand(tiny_setup: dict) -> None:
    s = tiny_setup
    rows = evaluate(
        s["model"], s["id_train"], s["id_test"], {"dark": s["ood_test"]}, detectors="energy,knn:k=3"
    )
    assert [r["detector"] for r in rows] == ["energy", "knn:k=3"]
    assert rows[1]["params"]["k"] == 3 and rows[1]["tuned_on"]["ood_val"].startswith("synthetic-")
    assert all(r["auroc"] > 0.9 for r in rows)
    with pytest.raises(OodlabError, match="blind protocol only"):
        evaluate(s["model"], s["id_train"], s["id_test"], {"dark": s["ood_test"]}, protocol="paper")


def test_detector_variants_in_python() -> None:
    specs = parse_detectors(["knn:k=50", ("mahalanobis", {"noise": 0})])
    assert [s.label for s in specs] == ["knn:k=50", "mahalanobis:noise=0"]
    assert specs[0].create().get_params()["k"] == 50


def test_all_in_python_is_all_of_the_bench() -> None:
    """``parse_detectors("all")`` is the bench's ``--detectors all``: it used to include
    ``either``, which names its members, and so raised."""
    from oodlab.bench.runner import resolve_detectors

    labels = [s.label for s in parse_detectors("all")]
    assert labels == sorted(resolve_detectors("all"))
    assert "either" not in labels and "mc-dropout" not in labels and "deep-ensemble" not in labels


def test_model_spec_for_a_registered_model(tiny_setup: dict, tmp_path: Path) -> None:
    lenet = tiny_setup["model"]
    save_file({k: v.contiguous() for k, v in lenet.state_dict().items()}, tmp_path / "w.safetensors")
    model, ref = load_model(
        f"lenet:num_classes=3:in_channels=1:image_size={SIZE}@{tmp_path / 'w.safetensors'}"
    )
    assert ref["wrap"] is None and ref["weights_sha256"] == weights_sha256(lenet)
    x = tiny_setup["id_test"].tensor(0, 5)
    assert torch.equal(model(x), lenet(x))


def test_registering_twice_is_fine_and_an_edited_class_retrains(tmp_path: Path) -> None:
    import importlib.util

    from oodlab.models._registry import _MODELS, model_definition
    from oodlab.training import TrainConfig, fit_or_load

    def load(source: str, tag: str) -> None:
        path = tmp_path / f"net_{tag}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("user_net", path)  # one module name: a re-run cell
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]

    src = (
        "from oodlab.models import register_model\nfrom oodlab.models.mlp import MLP\n\n"
        "class Net(MLP):\n    pass\n\n"
        "@register_model('test-user-net')\ndef make(**kw):\n    return Net(hidden=(8,), dropout=DROP, **kw)\n"
    )
    cfg = TrainConfig(
        model="test-user-net", optimizer="adam", lr=1e-3, schedule="none", epochs=1, batch_size=32
    )
    data = pattern_images(64, seed=40)
    try:
        load(src.replace("DROP", "0.0"), "a")
        first = model_definition("test-user-net")
        assert not fit_or_load(cfg, data, checkpoint_dir=tmp_path, progress=False)[1]["cached"]
        load(src.replace("DROP", "0.0"), "a")  # the same cell run again: fine, same definition
        assert model_definition("test-user-net") == first
        assert fit_or_load(cfg, data, checkpoint_dir=tmp_path, progress=False)[1]["cached"]
        # The class edited (same shapes): it retrains rather than reloading the old weights.
        load(src.replace("DROP", "0.1"), "b")
        assert model_definition("test-user-net") != first
        assert not fit_or_load(cfg, data, checkpoint_dir=tmp_path, progress=False)[1]["cached"]

        def other(**kw: object) -> torch.nn.Module:
            return torch.nn.Linear(3, 3)

        with pytest.raises(OodlabError, match="already registered by user_net.make"):
            register_model("test-user-net")(other)
    finally:
        _MODELS.pop("test-user-net", None)


def test_suite_bench_takes_detector_variants(tiny_suite: str, tmp_path: Path, capsys) -> None:  # noqa: F811
    argv = ["bench", "--suite", tiny_suite, "--detectors", "knn:k=3,knn,mahalanobis:noise=0", "--quiet"]
    code, out, err = run([*argv, "--out", str(tmp_path / "r"), "--no-plots"], capsys)
    assert code == 0, err
    rows = json.loads((tmp_path / "r" / "results.json").read_text())
    assert {r["detector"] for r in rows} == {"knn:k=3", "knn", "mahalanobis:noise=0"}
    assert {r["params"]["k"] for r in rows if r["detector"] == "knn:k=3"} == {3}
    assert all(r["params"]["noise"] == 0 for r in rows if r["detector"].startswith("mahalanobis"))
    code, _, err = run(["bench", "--suite", tiny_suite, "--detectors", "knn:k"], capsys)
    assert code == 1 and "expected NAME:KEY=VALUE" in err
