"""elf-train: train a multi-exit network (standard / multi-exit / ELF) on a long-tailed data set.

Writes OUT/checkpoint.pt, config.json, metrics.jsonl (per epoch), metrics.json (test metrics per
exit and at thresholds calibrated on the validation split), predictions.npz and
per_class_accuracy.png. For DistributedDataParallel run it under torchrun:
`torchrun --nproc_per_node N -m training.cli ...` (--batch-size is per process).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.checkpoint import CheckpointError
from training.cli_errors import (
    OneLineParser,
    add_log_level,
    fraction,
    renamed,
    run_reporting_errors,
)
from training.config import OptimConfig, TrainConfig
from training.data import AugmentConfig, DataConfig, DatasetError
from training.data.config import DATASETS
from training.data.dataset import DatasetStatsError
from training.losses import BASE_LOSSES, METHODS, LossConfig
from training.networks import VARIANTS, ModelConfig
from training.trainer import main as train_main


def _opt(g: Any, flag: str, default: Any, help: str, **kw: Any) -> None:
    """An option whose type follows its default; the default is appended to the help."""
    if "type" not in kw and "action" not in kw and default is not None:
        kw["type"] = type(default[0]) if isinstance(default, list | tuple) else type(default)
    if isinstance(default, tuple):
        default, kw["nargs"] = list(default), "+"
    suffix = "" if kw.get("action") or default is None else " (default %(default)s)"
    g.add_argument(flag, default=default, help=help + suffix, **kw)


def _data_args(p: argparse.ArgumentParser) -> None:
    g, d, a = p.add_argument_group("data"), DataConfig(), AugmentConfig()
    _opt(g, "--dataset", d.dataset, "data set", choices=DATASETS)
    _opt(
        g,
        "--data-root",
        None,
        "data directory (fashion-mnist default: the Debian package's "
        "/usr/share/datasets/fashion-mnist; cifar: the python-pickle folder; folder: ROOT/train/ "
        "with ROOT/val/ or ROOT/test/ or both, one sub-folder per class; a missing val/ is carved "
        "from train/, a missing test/ makes val/ the test split)",
        type=Path,
    )
    _opt(g, "--imbalance-ratio", d.imbalance_ratio, "rho = n_max / n_min of the long tail")
    _opt(g, "--n-max", d.n_max, "training images of the largest class")
    _opt(
        g,
        "--val-per-class",
        d.val_per_class,
        "balanced validation images per class (carved from a folder's train/: at most a fifth "
        "of its smallest class)",
    )
    _opt(g, "--data-seed", d.seed, "seed of the long-tailed subset and the validation split")
    _opt(
        g,
        "--class-order",
        None,
        "long-tailed data: the classes from head to tail (a permutation of 0..C-1; default: the "
        "data set's order, class 0 the head)",
        type=int,
        nargs="+",
    )
    _opt(g, "--image-size", None, "folder/list data: resize to this square size", type=int)
    _opt(g, "--channels", None, "folder/list data: 1 (grey) or 3 (RGB, default)", type=int)
    _opt(g, "--train-list", None, "list data: training list (`path label` lines)", type=Path)
    _opt(g, "--val-list", None, "list data: validation list", type=Path)
    _opt(g, "--test-list", None, "list data: test list", type=Path)
    _opt(g, "--class-names-file", None, "list data: one class name per line", type=Path)
    _opt(g, "--padding", a.padding, "random-crop padding in pixels")
    _opt(g, "--no-flip", False, "no random horizontal flips", action="store_true")


def _model_args(p: argparse.ArgumentParser) -> None:
    g, m = p.add_argument_group("model"), ModelConfig()
    _opt(g, "--arch", m.arch, "network", choices=sorted(VARIANTS))
    _opt(g, "--head", m.head, "auxiliary exit head", choices=("pool_linear", "conv_pool_linear"))
    _opt(
        g,
        "--classifier",
        "auto",
        "classifier of every exit; auto: cosine (LDAM's normalised "
        "one) for --loss ldam, else linear",
        choices=("auto", "linear", "cosine"),
    )
    _opt(g, "--cosine-scale", m.cosine_scale, "logit scale of the cosine classifier")
    _opt(g, "--width-mult", m.width_mult, "channel width multiplier")


def _loss_args(p: argparse.ArgumentParser) -> None:
    g, c = p.add_argument_group("method and loss"), LossConfig()
    _opt(
        g,
        "--method",
        c.method,
        "standard: final exit only; multi-exit: every exit on every "
        "example; elf: the ELF exit mask",
        choices=METHODS,
    )
    _opt(g, "--loss", c.base, "base loss (ldam = LDAM with DRW)", choices=BASE_LOSSES)
    _opt(
        g,
        "--tau-train",
        c.tau_train,
        "ELF: training confidence, one value or one per auxiliary exit",
    )
    _opt(
        g,
        "--exit-weights",
        None,
        "per-exit loss weights, one per exit (default all 1)",
        type=float,
        nargs="+",
    )
    _opt(
        g,
        "--exited-weight",
        c.exited_weight,
        "ELF: weight of the deeper exits for examples that already exited",
    )
    _opt(g, "--elf-warmup-epochs", c.elf_warmup_epochs, "ELF: epochs of all-exit training first")
    _opt(g, "--ldam-max-margin", c.ldam_max_margin, "LDAM: largest class margin")
    _opt(g, "--ldam-scale", c.ldam_scale, "LDAM: logit scale s of the margin")
    _opt(g, "--drw-start", c.drw_start, "LDAM: re-weighting from this fraction of the epochs")
    _opt(g, "--drw-beta", c.drw_beta, "LDAM: beta of the class-balanced weights")


def _optim_args(p: argparse.ArgumentParser) -> None:
    g, o, t = p.add_argument_group("optimisation"), OptimConfig(), TrainConfig()
    _opt(g, "--epochs", t.epochs, "training epochs")
    _opt(g, "--batch-size", t.batch_size, "batch size per process")
    _opt(g, "--eval-batch-size", t.eval_batch_size, "evaluation batch size")
    _opt(g, "--lr", o.lr, "peak learning rate (SGD)")
    _opt(g, "--momentum", o.momentum, "SGD momentum")
    _opt(g, "--nesterov", False, "Nesterov momentum", action="store_true")
    _opt(g, "--weight-decay", o.weight_decay, "weight decay")
    _opt(g, "--warmup-epochs", o.warmup_epochs, "linear learning-rate warm-up epochs")
    _opt(g, "--schedule", o.schedule, "schedule after warm-up", choices=("cosine", "step"))
    _opt(
        g,
        "--milestones",
        None,
        "step schedule: epochs where lr *= gamma (default 60%% and 80%% of the epochs)",
        type=int,
        nargs="+",
    )
    _opt(g, "--gamma", o.gamma, "step schedule factor")


def _run_args(p: argparse.ArgumentParser) -> None:
    g, t = p.add_argument_group("run"), TrainConfig()
    g.add_argument("--out", type=Path, required=True, help="output directory")
    _opt(g, "--seed", t.seed, "training seed: initialisation, batch order, augmentation")
    _opt(g, "--resume", False, "continue from OUT/checkpoint.pt if present", action="store_true")
    _opt(g, "--device", t.device, "auto: cuda when present", choices=("auto", "cpu", "cuda"))
    _opt(g, "--workers", t.workers, "DataLoader workers (lazily decoded folder/list data)")
    _opt(g, "--threads", t.threads, "torch CPU threads; 0 = cores / processes")
    _opt(g, "--eval-every", t.eval_every, "validation (metrics.jsonl) every N epochs and the last")
    _opt(g, "--no-progress", False, "no tqdm progress bars", action="store_true")
    _opt(g, "--eval-thresholds", t.eval_thresholds, "fixed exit thresholds reported on test")
    _opt(
        g,
        "--tolerance",
        t.calibration_tolerance,
        "calibrated point: the cheapest within this balanced accuracy of the best point "
        "(validation split), as elf-export's --tolerance",
        type=fraction,
        dest="calibration_tolerance",
        metavar="TOLERANCE",
    )
    renamed(g, "--calibration-tolerance", "--tolerance")
    add_log_level(g)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="elf-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for add in (_data_args, _model_args, _loss_args, _optim_args, _run_args):
        add(p)
    return p


def invocation(argv: Sequence[str] | None = None) -> str:
    """The command line that started this process, shell-quoted: `argv` as elf-train's
    arguments, or sys.argv (`python -m training.cli ...` when run as a module or under torchrun)."""
    if argv is not None:
        return shlex.join(["elf-train", *argv])
    prog = Path(sys.argv[0]).name
    head = ["python", "-m", "training.cli"] if prog in ("cli.py", "__main__.py") else [prog]
    return shlex.join([*head, *sys.argv[1:]])


def config_from_args(a: argparse.Namespace, command: str | None = None) -> TrainConfig:
    """The TrainConfig of parsed arguments; invalid combinations raise ValueError."""
    classifier = a.classifier
    if classifier == "auto":
        classifier = "cosine" if a.loss == "ldam" else "linear"
    data = DataConfig(
        dataset=a.dataset, root=a.data_root, imbalance_ratio=a.imbalance_ratio, n_max=a.n_max,
        val_per_class=a.val_per_class, seed=a.data_seed,
        class_order=tuple(a.class_order) if a.class_order else None, image_size=a.image_size,
        channels=a.channels, train_list=a.train_list, val_list=a.val_list,
        test_list=a.test_list, class_names_file=a.class_names_file,
    )  # fmt: skip
    model = ModelConfig(
        arch=a.arch, head=a.head, classifier=classifier, cosine_scale=a.cosine_scale,
        width_mult=a.width_mult,
    )  # fmt: skip
    loss = LossConfig(
        method=a.method, base=a.loss, tau_train=tuple(a.tau_train),
        exit_weights=tuple(a.exit_weights or ()), exited_weight=a.exited_weight,
        elf_warmup_epochs=a.elf_warmup_epochs, ldam_max_margin=a.ldam_max_margin,
        ldam_scale=a.ldam_scale, drw_start=a.drw_start, drw_beta=a.drw_beta,
    )  # fmt: skip
    optim = OptimConfig(
        lr=a.lr, momentum=a.momentum, nesterov=a.nesterov, weight_decay=a.weight_decay,
        warmup_epochs=a.warmup_epochs, schedule=a.schedule,
        milestones=tuple(a.milestones or ()), gamma=a.gamma,
    )  # fmt: skip
    return TrainConfig(
        out=a.out, epochs=a.epochs, batch_size=a.batch_size, eval_batch_size=a.eval_batch_size,
        seed=a.seed, device=a.device, workers=a.workers, threads=a.threads,
        progress=not a.no_progress, eval_every=a.eval_every, resume=a.resume,
        eval_thresholds=tuple(a.eval_thresholds),
        calibration_tolerance=a.calibration_tolerance, data=data, model=model, loss=loss,
        optim=optim, augment=AugmentConfig(padding=a.padding, flip=not a.no_flip),
        command=command,
    )  # fmt: skip


# Mistakes a user can fix: reported as one line naming the file or option.
USER_ERRORS = (DatasetError, DatasetStatsError, CheckpointError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    level = args.log_level.upper() if rank == 0 else "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args, invocation(argv))
    except ValueError as e:
        parser.error(str(e))

    def work() -> int:
        train_main(cfg)
        return 0

    return run_reporting_errors(parser.prog, work, USER_ERRORS, args.log_level == "debug")


if __name__ == "__main__":
    sys.exit(main())
