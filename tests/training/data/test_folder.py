from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import DataConfig, DatasetError, MissingDatasetError, build_splits
from training.data.files import FileImageDataset
from training.data.folder import parse_list_file

from .writers import write_png


def _rgb(seed: int, h: int = 6, w: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _make_folder(root: Path) -> dict[str, np.ndarray]:
    """train: cat x3, dog x2; val: cat, dog; test: dog. Returns pixels by relative path."""
    layout = {
        "train/cat": 3,
        "train/dog": 2,
        "val/cat": 1,
        "val/dog": 1,
        "test/dog": 1,
    }
    pixels: dict[str, np.ndarray] = {}
    seed = 0
    for folder, n in layout.items():
        for i in range(n):
            rel = f"{folder}/{i}.png"
            pixels[rel] = _rgb(seed)
            write_png(root / rel, pixels[rel])
            seed += 1
    return pixels


def test_image_folder_native_size(tmp_path: Path) -> None:
    pixels = _make_folder(tmp_path)
    splits = build_splits(DataConfig(dataset="folder", root=tmp_path))
    assert splits.class_names == ["cat", "dog"]
    assert splits.train_class_counts == [3, 2]
    assert splits.train.labels.tolist() == [0, 0, 0, 1, 1]
    assert (len(splits.val), len(splits.test)) == (2, 1)
    assert (splits.channels, splits.height, splits.width) == (3, 6, 5)
    image, label = splits.train[4]  # train/dog/1.png
    assert label == 1 and image.dtype == torch.uint8
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), pixels["train/dog/1.png"])
    train = np.stack(
        [pixels[f"train/{c}/{i}.png"] for c, n in (("cat", 3), ("dog", 2)) for i in range(n)]
    )
    expected_mean = (train / 255.0).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(splits.mean, expected_mean, atol=1e-9)


def test_image_folder_resize_and_grey(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    write_png(tmp_path / "train/cat/big.png", np.full((20, 30, 3), (200, 100, 50), np.uint8))
    cfg = DataConfig(dataset="folder", root=tmp_path, image_size=8, channels=1)
    splits = build_splits(cfg)
    assert isinstance(splits.train, FileImageDataset)
    big = next(i for i, p in enumerate(splits.train.paths) if p.name == "big.png")
    image, _ = splits.train[big]
    assert image.shape == (1, 8, 8)
    # Pillow's L = R * 299/1000 + G * 587/1000 + B * 114/1000 = 124.4 on a flat image
    assert torch.all((image.int() - 124).abs() <= 1)


def test_image_folder_errors(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    write_png(tmp_path / "train/cat/big.png", np.zeros((9, 9, 3), np.uint8))
    splits = build_splits(
        DataConfig(dataset="folder", root=tmp_path, channels=1, stats_max_images=1)
    )
    with pytest.raises(DatasetError, match=r"big.png: image is 9x9 but .* 6x5; set --image-size"):
        [splits.train[i] for i in range(len(splits.train))]
    (tmp_path / "train/cat/big.png").write_bytes(b"\x89PNG garbage")
    splits = build_splits(
        DataConfig(dataset="folder", root=tmp_path, image_size=4, stats_max_images=1)
    )
    with pytest.raises(DatasetError, match=r"big\.png: cannot decode image"):
        [splits.train[i] for i in range(len(splits.train))]
    (tmp_path / "train/cat/big.png").unlink()
    (tmp_path / "val/cat/notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"notes\.txt: not an image file"):
        build_splits(DataConfig(dataset="folder", root=tmp_path))
    (tmp_path / "val/cat/notes.txt").unlink()
    write_png(tmp_path / "test/bird/0.png", _rgb(99))
    with pytest.raises(DatasetError, match="class 'bird' has no folder in"):
        build_splits(DataConfig(dataset="folder", root=tmp_path))
    with pytest.raises(DatasetError, match="needs train/ and val/ or test/"):
        build_splits(DataConfig(dataset="folder", root=tmp_path / "train"))


def _make_list_data(root: Path) -> tuple[Path, Path, Path]:
    for i in range(6):
        write_png(root / "img" / f"a {i}.png", _rgb(i, 4, 4))  # a space in the name
    train = root / "train.txt"
    train.write_text("img/a 0.png 0\nimg/a 1.png 1\n\nimg/a 2.png 2\nimg/a 3.png 0\n")
    val = root / "val.txt"
    val.write_text("img/a 4.png 2\n")
    test = root / "test.txt"
    test.write_text("img/a 5.png 1\n")
    return train, val, test


def test_list_files(tmp_path: Path) -> None:
    train, val, test = _make_list_data(tmp_path)
    cfg = DataConfig(dataset="list", root=tmp_path, train_list=train, val_list=val, test_list=test)
    splits = build_splits(cfg)
    assert splits.class_names == ["0", "1", "2"]
    assert splits.train_class_counts == [2, 1, 1]
    assert splits.val.labels.tolist() == [2] and splits.test.labels.tolist() == [1]
    image, label = splits.train[3]
    assert label == 0
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), _rgb(3, 4, 4))
    names = tmp_path / "names.txt"
    names.write_text("zero\none\ntwo\nthree\n")
    splits = build_splits(
        DataConfig(
            dataset="list",
            root=tmp_path,
            train_list=train,
            val_list=val,
            test_list=test,
            class_names_file=names,
            image_size=2,
        )
    )
    assert splits.class_names == ["zero", "one", "two", "three"]
    assert splits.train_class_counts == [2, 1, 1, 0]
    assert splits.test[0][0].shape == (3, 2, 2)


def test_list_file_errors(tmp_path: Path) -> None:
    train, val, test = _make_list_data(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("img/a 0.png 0\nimg/a 1.png\n")
    with pytest.raises(DatasetError, match=r"bad.txt:2: expected `relative/path.jpg label`"):
        parse_list_file(bad, tmp_path)
    bad.write_text("img/a 0.png -1\n")
    with pytest.raises(DatasetError, match=r"bad\.txt:1: expected"):
        parse_list_file(bad, tmp_path)
    bad.write_text("img/missing.png 0\n")
    with pytest.raises(MissingDatasetError, match=r"bad.txt:1: image .*missing.png not found"):
        parse_list_file(bad, tmp_path)
    val.write_text("img/a 4.png 3\n")
    cfg = DataConfig(dataset="list", root=tmp_path, train_list=train, val_list=val, test_list=test)
    with pytest.raises(DatasetError, match=r"val.txt: .*a 4.png has unknown label 3 \(3 classes"):
        build_splits(cfg)
    train.write_text("img/a 0.png 0\nimg/a 1.png 2\n")
    with pytest.raises(DatasetError, match=r"labels \[1\] never occur"):
        build_splits(cfg)
    with pytest.raises(DatasetError, match="needs --train-list, --val-list and --test-list"):
        build_splits(DataConfig(dataset="list", root=tmp_path, train_list=train))
