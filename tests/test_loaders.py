"""Image folders, CIFAR binary and SVHN .mat loaders, on small files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from oodlab import OodlabError
from oodlab.data.loaders import (
    ImageFolderDataset,
    load_cifar,
    load_data,
    load_image_folder,
    load_svhn,
)


def write_folder(
    root: Path, n_per_class: int = 3, size: tuple[int, int] = (6, 5), rgb: bool = False
) -> np.ndarray:
    """Two classes of random images; returns the pixels in the order the loader reads them."""
    rng = np.random.default_rng(0)
    pixels = []
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            shape = (*size, 3) if rgb else size
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(a).save(root / cls / f"{i}.png")
            pixels.append(a.transpose(2, 0, 1) if rgb else a[None])
    return np.stack(pixels)


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    expected = write_folder(tmp_path / "data")
    ds = load_image_folder(tmp_path / "data")
    assert ds.x.dtype == np.uint8 and ds.x.shape == (6, 1, 6, 5)
    np.testing.assert_array_equal(ds.x, expected)
    np.testing.assert_array_equal(ds.y, [0, 0, 0, 1, 1, 1])
    assert ds.name == "data"


def test_rgb_folder_and_a_colour_image_makes_every_image_rgb(tmp_path: Path) -> None:
    expected = write_folder(tmp_path / "rgb", rgb=True)
    np.testing.assert_array_equal(load_image_folder(tmp_path / "rgb").x, expected)
    write_folder(tmp_path / "mixed")
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(tmp_path / "mixed" / "dog" / "colour.jpg")
    ds = load_image_folder(tmp_path / "mixed")
    assert ds.shape == (3, 6, 5) and len(ds) == 7
    # A grayscale image turned RGB repeats its channel.
    np.testing.assert_array_equal(ds.x[0, 0], ds.x[0, 2])


def test_flat_folder_is_unlabelled_and_resize_is_only_when_asked(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((8, 6), 10, np.uint8)).save(tmp_path / "b.PNG")
    with pytest.raises(OodlabError, match=r"different sizes: .*a.png is 4x4, .*b.PNG is 6x8.*--resize"):
        load_image_folder(tmp_path)
    ds = load_image_folder(tmp_path, resize=4)
    assert ds.y is None and ds.x.shape == (2, 1, 4, 4)
    assert (ds.x[0] == 200).all() and (ds.x[1] == 10).all()


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(OodlabError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(OodlabError, match="no images in"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(OodlabError, match="x.png: not a readable PNG/JPEG"):
        load_image_folder(tmp_path / "bad")


def test_streaming_a_folder_through_a_dataloader_gives_the_same_images(tmp_path: Path) -> None:
    write_folder(tmp_path / "d", n_per_class=5)
    whole = load_image_folder(tmp_path / "d")
    loader = torch.utils.data.DataLoader(ImageFolderDataset(tmp_path / "d"), batch_size=3)
    xs, ys = zip(*loader, strict=True)
    assert torch.equal(torch.cat(xs), whole.tensor())
    assert torch.equal(torch.cat(ys), whole.labels())


def test_memory_mapped_npy_reads_the_same_images(tmp_path: Path) -> None:
    x = np.random.default_rng(1).integers(0, 256, (10, 1, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    mapped = load_data(tmp_path / "x.npy", mmap=True)
    assert isinstance(mapped.x, np.memmap)
    assert torch.equal(mapped.tensor(2, 7), load_data(tmp_path / "x.npy").tensor(2, 7))
    assert mapped.fingerprint == load_data(tmp_path / "x.npy").fingerprint


def _cifar_bytes(n: int, n_label: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, (n, n_label), dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return np.concatenate([labels, pixels], axis=1).tobytes(), labels[:, -1], pixels.reshape(n, 3, 32, 32)


def test_cifar10_binary(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    blob, y, x = _cifar_bytes(4, 1, 0)
    (root / "test_batch.bin").write_bytes(blob)
    ds = load_cifar(tmp_path, "cifar10", "test")  # the parent folder is found too
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)
    assert torch.equal(load_data(f"cifar10:test:{root}").tensor(), ds.tensor())
    with pytest.raises(OodlabError, match=r"data_batch_1.bin is missing; extract the binary version"):
        load_cifar(root, "cifar10", "train")
    (root / "test_batch.bin").write_bytes(blob[:-1])
    with pytest.raises(OodlabError, match="not a cifar10 binary file"):
        load_cifar(root, "cifar10", "test")


def test_cifar100_binary_uses_the_fine_label(tmp_path: Path) -> None:
    blob, fine, x = _cifar_bytes(3, 2, 1)
    (tmp_path / "train.bin").write_bytes(blob)
    ds = load_cifar(tmp_path, "cifar100", "train")
    np.testing.assert_array_equal(ds.y, fine)
    np.testing.assert_array_equal(ds.x, x)


def test_svhn_mat(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    ds = load_svhn(tmp_path, "test")
    np.testing.assert_array_equal(ds.y, [0, 1, 2, 0, 9])
    np.testing.assert_array_equal(ds.x[3], x[..., 3].transpose(2, 0, 1))
    with pytest.raises(OodlabError, match=r"train_32x32.mat is missing; download"):
        load_svhn(tmp_path, "train")


def test_data_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(OodlabError, match="not found"):
        load_data(tmp_path / "missing")
    with pytest.raises(OodlabError, match="expected cifar10:SPLIT:PATH"):
        load_data("cifar10:data")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(OodlabError, match="not a data set"):
        load_data(tmp_path / "a.txt")
