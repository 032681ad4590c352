"""elf-export retrofit: early exits for an existing ONNX classifier, its backbone untouched.

elf-export retrofit --onnx MODEL.onnx --data-root DIR [--dataset folder] [--cuts auto|NAME ...]
    --out models/NAME [--image-size 224] [--channels 3] [--mean M ...] [--std S ...]
    [--tolerance 0.005] [--tail-tolerance 0.01 [--protect-classes 7,8,9]]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model_export.export import ExportConfig
from model_export.retrofit.heads import HeadConfig
from model_export.retrofit.pipeline import RetrofitConfig
from training.cli_errors import OneLineParser, model_name, renamed
from training.data import DataConfig
from training.data.config import DATASETS


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) not in (1, 2) or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW (e.g. 224 or 224x224), got {text}")
    return (dims[0], dims[-1])


def _data_group(p: argparse.ArgumentParser) -> None:
    g, d = p.add_argument_group("data (as elf-train)"), DataConfig()
    g.add_argument("--dataset", choices=DATASETS, default=d.dataset)
    g.add_argument("--data-root", type=Path, help="data directory (fashion-mnist: the default)")
    g.add_argument("--imbalance-ratio", type=float, default=d.imbalance_ratio)
    g.add_argument("--n-max", type=int, default=d.n_max)
    g.add_argument("--val-per-class", type=int, default=d.val_per_class)
    g.add_argument("--data-seed", type=int, default=d.seed)
    g.add_argument("--class-order", type=int, nargs="+", help="long tail's classes, head first")
    for split in ("train", "val", "test"):
        g.add_argument(f"--{split}-list", type=Path, help=f"list data: {split} list")
    g.add_argument("--class-names-file", type=Path, help="list data: one class name per line")


def _preprocessing_group(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocessing (recorded in the manifest)")
    g.add_argument("--image-size", type=_size, metavar="SIZE|HxW",
                   help="as elf-train's (default: the model's input shape)")  # fmt: skip
    renamed(g, "--size", "--image-size")
    g.add_argument("--channels", type=int, choices=(1, 3), help="default: the model's input")
    g.add_argument("--mean", type=float, nargs="+", help="per channel, [0, 1] scale "
                   "(default: the training split's)")  # fmt: skip
    g.add_argument("--std", type=float, nargs="+", help="per channel (default: training split's)")


def _exit_group(p: argparse.ArgumentParser) -> None:
    g, h = p.add_argument_group("exits"), HeadConfig()
    g.add_argument("--cuts", nargs="+", default=["auto"],
                   help="tensor names to cut at, or auto (default): ends of downsampling stages "
                   "spread evenly in FLOPs")  # fmt: skip
    g.add_argument("--exits", type=int, default=3, help="automatic cuts: how many (default 3)")
    g.add_argument("--head-blocks", type=int, default=h.blocks, help="conv blocks per head")
    g.add_argument("--head-width", type=int, default=h.width, help="head channels")
    g.add_argument("--epochs", type=int, default=h.epochs, help="head training epochs")
    g.add_argument("--lr", type=float, default=h.lr)
    g.add_argument("--head-batch-size", type=int, default=h.batch_size)
    g.add_argument("--distill", type=float, default=h.distill,
                   help="weight in [0, 1] of distillation from the model's prediction")  # fmt: skip
    g.add_argument("--seed", type=int, default=h.seed)
    g.add_argument("--threads", type=int, help="torch threads for head training (default: torch's)")


def retrofit_parser(common: object) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="elf-export retrofit",
        description="Add trained early exits to an existing ONNX image classifier (the backbone "
        "is not changed) and write a verified, calibrated model directory.",
    )
    p.add_argument("--onnx", type=Path, required=True, help="the classifier (.onnx)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--name", type=model_name,
                   help="model name (default: the --out directory's name)")  # fmt: skip
    p.add_argument("--version", default="1")
    _data_group(p)
    _preprocessing_group(p)
    _exit_group(p)
    common(p)  # type: ignore[operator]
    return p


def retrofit_config(a: argparse.Namespace, command: str) -> RetrofitConfig:
    data = DataConfig(
        dataset=a.dataset, root=a.data_root, imbalance_ratio=a.imbalance_ratio, n_max=a.n_max,
        val_per_class=a.val_per_class, seed=a.data_seed,
        class_order=tuple(a.class_order) if a.class_order else None, train_list=a.train_list,
        val_list=a.val_list, test_list=a.test_list, class_names_file=a.class_names_file,
    )  # fmt: skip
    head = HeadConfig(
        blocks=a.head_blocks, width=a.head_width, epochs=a.epochs, batch_size=a.head_batch_size,
        lr=a.lr, distill=a.distill, seed=a.seed, threads=a.threads,
    )  # fmt: skip
    cuts = () if a.cuts == ["auto"] else tuple(a.cuts)
    export = ExportConfig(
        out=a.out, tolerance=a.tolerance, name=a.name, version=a.version, device=a.device,
        batch_size=a.batch_size, progress=not a.no_progress, command=command,
        tail_tolerance=a.tail_tolerance, protect_classes=a.protect_classes,
    )  # fmt: skip
    return RetrofitConfig(
        onnx=a.onnx, data=data, export=export, cuts=cuts, num_exits=a.exits, head=head,
        channels=a.channels, image_size=a.image_size, mean=tuple(a.mean) if a.mean else None,
        std=tuple(a.std) if a.std else None,
    )  # fmt: skip
