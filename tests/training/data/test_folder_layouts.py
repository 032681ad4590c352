"""Image folders in every common layout: train/+val/+test/, train/+test/, train/+val/.

A missing validation split is carved from train/ (balanced, seeded); without test/ the test split
is val/, and the validation split is still carved from train/, so calibration never sees a test
image. Each layout is a generated folder of small PNGs.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from tests.training.conftest import EVAL_PER_CLASS, TRAIN_COUNTS, write_image_folder
from training.data import DataConfig, DatasetError, build_splits
from training.data.files import FileImageDataset

NO_TEST_SOURCE = (
    "val/ (there is no test/ folder: test metrics are on val/, held out from training and from "
    "threshold calibration)"
)


def _splits(root: Path, seed: int = 0, val_per_class: int = 200) -> tuple[FileImageDataset, ...]:
    s = build_splits(
        DataConfig(dataset="folder", root=root, seed=seed, val_per_class=val_per_class)
    )
    parts = (s.train, s.val, s.test)
    assert all(isinstance(p, FileImageDataset) for p in parts)
    return parts  # type: ignore[return-value]


def _folders(data: FileImageDataset) -> set[str]:
    return {p.parent.parent.name for p in data.paths}


def _per_class(data: FileImageDataset) -> dict[int, int]:
    return dict(Counter(data.labels.tolist()))


def test_all_three_folders_are_used_as_they_are(tmp_path: Path) -> None:
    train, val, test = _splits(write_image_folder(tmp_path))
    assert [_folders(p) for p in (train, val, test)] == [{"train"}, {"val"}, {"test"}]
    assert _per_class(train) == dict(enumerate(TRAIN_COUNTS))
    assert _per_class(val) == _per_class(test) == dict.fromkeys(range(3), EVAL_PER_CLASS)
    sources = build_splits(DataConfig(dataset="folder", root=tmp_path)).sources
    assert sources == {"train": "train/", "val": "val/", "test": "test/"}


@pytest.mark.parametrize("held_out", ["test", "val"])
def test_missing_split_carves_a_balanced_seeded_val_from_train(
    tmp_path: Path, held_out: str
) -> None:
    root = write_image_folder(tmp_path, splits=("train", held_out))
    train, val, test = _splits(root)
    # a fifth of the smallest class (4 images), at least 1 -> 1 per class: balanced
    k = 1
    assert _per_class(val) == dict.fromkeys(range(3), k)
    assert _per_class(train) == {c: n - k for c, n in enumerate(TRAIN_COUNTS)}
    assert _folders(train) == _folders(val) == {"train"}
    assert not set(train.paths) & set(val.paths)
    all_train = set((root / "train").rglob("*.png"))
    assert set(train.paths) | set(val.paths) == all_train
    # the held-out folder is the test split, whichever name it has; never mixed with calibration
    assert _folders(test) == {held_out}
    assert _per_class(test) == dict.fromkeys(range(3), EVAL_PER_CLASS)
    # seeded: the same seed carves the same images, other seeds other ones
    assert _splits(root)[1].paths == val.paths
    assert any(_splits(root, seed=s)[1].paths != val.paths for s in (1, 2, 3))
    sources = build_splits(DataConfig(dataset="folder", root=root)).sources
    assert sources["val"].startswith(f"carved from train/: {k} images per class (balanced), seed 0")
    if held_out == "val":
        assert sources["test"] == NO_TEST_SOURCE
    else:
        assert sources["test"] == "test/"


def test_without_test_folder_the_log_says_where_test_metrics_come_from(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_image_folder(tmp_path, splits=("train", "val"))
    with caplog.at_level(logging.INFO, logger="training.data.folder"):
        build_splits(DataConfig(dataset="folder", root=root))
    messages = [r.getMessage() for r in caplog.records if r.name == "training.data.folder"]
    assert f"test split: {NO_TEST_SOURCE}" in messages
    assert f"no test/ folder: the test metrics are computed on val/ ({root})" in messages


def test_val_per_class_caps_the_carved_split(tmp_path: Path) -> None:
    root = tmp_path / "big"
    write_image_folder(root, splits=("train", "test"))
    for c in range(3):  # 20 more images per class: the smallest class has 24 -> a fifth is 4
        src = next((root / "train" / f"class{c}").glob("*.png"))
        for i in range(20):
            (root / "train" / f"class{c}" / f"extra{i}.png").write_bytes(src.read_bytes())
    assert _per_class(_splits(root)[1]) == dict.fromkeys(range(3), 4)
    assert _per_class(_splits(root, val_per_class=3)[1]) == dict.fromkeys(range(3), 3)


def test_layout_errors_name_the_fix(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "only-train", splits=("train",))
    with pytest.raises(
        DatasetError, match=r"has train/ but neither val/ nor test/; add a held-out"
    ):
        build_splits(DataConfig(dataset="folder", root=root))
    with pytest.raises(DatasetError, match=r"train does not exist; an image folder needs train/"):
        build_splits(DataConfig(dataset="folder", root=root / "train"))
    with pytest.raises(DatasetError, match=r"--data-root .*nowhere is not a directory"):
        build_splits(DataConfig(dataset="folder", root=tmp_path / "nowhere"))
    (root / "test" / "class0").mkdir(parents=True)
    for p in list((root / "train" / "class2").glob("*.png"))[1:]:
        p.unlink()
    with pytest.raises(DatasetError, match=r"class 2 has 1 training image\(s\); .* at least 2"):
        build_splits(DataConfig(dataset="folder", root=root))
