"""The user's own data: an image folder (root/{train,val,test}/<class>/*, val/ or test/ may be
missing: training.data.layout) or list files."""

from __future__ import annotations

import logging
from pathlib import Path

from training.data.config import DataConfig, DatasetError, MissingDatasetError
from training.data.dataset import DataSplits, channel_stats, class_counts
from training.data.files import IMAGE_SUFFIXES, make_file_datasets
from training.data.layout import Part, carve_per_class, carve_val, detect_layout

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


def _class_images(class_dir: Path) -> list[Path]:
    files = sorted(p for p in class_dir.iterdir() if not p.name.startswith("."))
    for p in files:
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(
                f"{p}: not an image file; a class folder may hold only images "
                f"({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
    return files


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_split(split_dir: Path, index: dict[str, int]) -> Part:
    """(paths, labels) of one split folder; its classes must all be train/ classes."""
    paths: list[Path] = []
    labels: list[int] = []
    for d in _class_dirs(split_dir):
        if d.name not in index:
            raise DatasetError(
                f"{d}: class {d.name!r} has no folder in {split_dir.parent / 'train'}"
            )
        images = _class_images(d)
        if split_dir.name == "train" and not images:
            raise DatasetError(f"{d}: no training images for class {d.name!r}")
        paths += images
        labels += [index[d.name]] * len(images)
    return paths, labels


def read_image_folder(
    root: Path, val_per_class: int, seed: int
) -> tuple[list[str], list[Part], dict[str, str]]:
    """Class names (the train sub-folders, sorted), (paths, labels) for train, val, test, and
    where each split comes from (training.data.layout: a missing split is carved or replaced)."""
    if not root.is_dir():
        raise MissingDatasetError(
            f"--data-root {root} is not a directory; give the folder that holds train/ and val/ "
            "or test/"
        )
    layout = detect_layout(root)
    class_names = [d.name for d in _class_dirs(root / "train")]
    if not class_names:
        raise DatasetError(f"{root / 'train'} has no class sub-folders")
    index = {name: i for i, name in enumerate(class_names)}
    train = _read_split(root / "train", index)
    held = {s: _read_split(root / s, index) for s in ("val", "test") if (root / s).is_dir()}
    if not layout.carve_val:
        sources = {"train": "train/", "val": "val/", "test": "test/"}
        return class_names, [train, held["val"], held["test"]], sources
    k = carve_per_class(train[1], len(class_names), val_per_class)
    train, val = carve_val(train, len(class_names), k, seed)
    sources = {
        "train": "train/ minus the carved validation images",
        "val": f"carved from train/: {k} images per class (balanced), seed {seed}; there is no "
        + ("test/ folder, so val/ is the test split" if layout.val_folder else "val/ folder"),
        "test": layout.test_source,
    }
    test = held["test"] if layout.test_folder else held["val"]
    return class_names, [train, val, test], sources


def parse_list_file(list_file: Path, root: Path) -> Part:
    """Lines `relative/path.jpg label` (paths relative to root; blank lines ignored)."""
    if not list_file.is_file():
        raise MissingDatasetError(f"list file {list_file} not found")
    paths: list[Path] = []
    labels: list[int] = []
    for n, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetError(
                f"{list_file}:{n}: expected `relative/path.jpg label` (label an integer >= 0), "
                f"got {line!r}"
            )
        path = root / fields[0].strip()
        if not path.is_file():
            raise MissingDatasetError(f"{list_file}:{n}: image {path} not found")
        paths.append(path)
        labels.append(int(fields[1]))
    if not paths:
        raise DatasetError(f"{list_file}: no entries")
    return paths, labels


def _list_class_names(cfg: DataConfig, train_labels: list[int]) -> list[str]:
    if cfg.class_names_file is not None:
        if not cfg.class_names_file.is_file():
            raise MissingDatasetError(f"class names file {cfg.class_names_file} not found")
        return [s.strip() for s in cfg.class_names_file.read_text().splitlines() if s.strip()]
    num_classes = max(train_labels) + 1
    missing = sorted(set(range(num_classes)) - set(train_labels))
    if missing:
        raise DatasetError(
            f"{cfg.train_list}: labels must be 0..{num_classes - 1} with every class present in "
            f"training, but labels {missing[:10]} never occur; give --class-names-file to fix C"
        )
    return [str(c) for c in range(num_classes)]


def read_list_files(cfg: DataConfig) -> tuple[list[str], list[Part]]:
    if cfg.root is None:
        raise MissingDatasetError("list data needs --data-root, the directory the paths start from")
    lists = [cfg.train_list, cfg.val_list, cfg.test_list]
    if any(p is None for p in lists):
        raise DatasetError("list data needs --train-list, --val-list and --test-list")
    parts = [parse_list_file(p, cfg.root) for p in lists if p is not None]
    class_names = _list_class_names(cfg, parts[0][1])
    for (paths, labels), list_file in zip(parts, lists, strict=True):
        for path, label in zip(paths, labels, strict=True):
            if label >= len(class_names):
                raise DatasetError(
                    f"{list_file}: {path} has unknown label {label} "
                    f"({len(class_names)} classes: 0..{len(class_names) - 1})"
                )
    return class_names, parts


def build_folder_splits(cfg: DataConfig) -> DataSplits:
    if cfg.root is None:
        raise MissingDatasetError("folder data needs --data-root (root/train/<class>/*.png ...)")
    class_names, parts, sources = read_image_folder(cfg.root, cfg.val_per_class, cfg.seed)
    for split, source in sources.items():
        log.info("%s split: %s", split, source)
    if sources["test"] != "test/":
        log.warning("no test/ folder: the test metrics are computed on val/ (%s)", cfg.root)
    return _file_splits(cfg, f"folder-{cfg.root.name}", class_names, parts, sources)


def build_list_splits(cfg: DataConfig) -> DataSplits:
    class_names, parts = read_list_files(cfg)
    assert cfg.train_list is not None  # checked by read_list_files
    lists = (cfg.train_list, cfg.val_list, cfg.test_list)
    sources = {s: f"list file {p}" for s, p in zip(SPLITS, lists, strict=True)}
    return _file_splits(cfg, f"list-{cfg.train_list.stem}", class_names, parts, sources)


def _file_splits(
    cfg: DataConfig, name: str, class_names: list[str], parts: list[Part], sources: dict[str, str]
) -> DataSplits:
    channels = cfg.channels if cfg.channels is not None else 3
    train, val, test = make_file_datasets(parts, channels, cfg.image_size)
    for split, data in zip(SPLITS, (train, val, test), strict=True):
        if len(data) == 0:
            raise DatasetError(f"{name}: the {split} split holds no images")
    mean, std = channel_stats(train, max_images=cfg.stats_max_images, seed=cfg.seed)
    counts = class_counts(train.labels, len(class_names))
    c, h, w = train.shape
    log.info(
        "%s: train %d, val %d, test %d, %dx%dx%d", name, len(train), len(val), len(test), c, h, w
    )
    return DataSplits(name, train, val, test, class_names, counts, c, h, w, mean, std, sources)
