"""Retrofit benchmark: early exits added to existing ONNX classifiers with `elf-export retrofit`.

heavy: the resnet50-style network at 224 px (random backbone, as in bench.heavy_model) exported
  by torch's ONNX exporter with its final classifier as the only output; retrofitted on a small
  Fashion-MNIST image folder (RGB, 224 px); then served by a real elf-serve: exit mix and measured
  speed-up of the calibrated thresholds against no early exit (same server, same images, the
  thresholds switched through the admin API). Time it on an otherwise idle machine.

    python -m bench retrofit heavy --work runs/retrofit-heavy \\
        --out bench/results/retrofit-heavy.json

fmnist: the standard-bs network (resnet32, Fashion-MNIST-LT, balanced softmax, final exit only)
  exported with elf-export; its full.onnx reduced to the final output; retrofitted; compared on
  test (thresholds from validation) with rows of bench/results/accuracy (bench.retrofit_compare).

  Its result is a seed's record of the accuracy row retrofit-bs (--row), a retrofit of the
  standard-bs row (--of): bench/results/accuracy/retrofit-bs.json.

    python -m bench retrofit fmnist --checkpoint CKPT --work runs/retrofit-fmnist \\
        --compare elf-bs:1=runs/bench-accuracy/elf-bs-e30-s1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
from PIL import Image

from bench import accuracy, machine, pages, retrofit_page
from bench.images import fashion_mnist
from bench.retrofit_compare import (
    accuracy_row,
    calibration_point,
    save_row,
    table,
    training_seconds,
)
from bench.servers import ServerSpec, running
from elf_core.calibration import DEFAULT_TOLERANCE
from elf_core.manifest import Manifest, load_manifest

log = logging.getLogger("bench.retrofit")
TOKEN = "bench-retrofit"


def _elf_export(*args: str) -> float:
    """Run elf-export in a subprocess (as a user would); its wall time in seconds."""
    cmd = [sys.executable, "-m", "model_export.cli", *args, "--no-progress"]
    log.info("%s", " ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def write_folder(root: Path, per_split: dict[str, int]) -> Path:
    """Fashion-MNIST training images as root/{train,val,test}/<class>/*.png (28 px grey)."""
    images, labels = fashion_mnist("train")
    start = 0
    for split, per_class in per_split.items():
        for c in range(10):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(labels == c)[start : start + per_class]
            for i in idx:
                Image.fromarray(images[i]).save(d / f"{i}.png")
        start += per_class
    return root


def export_resnet50(path: Path) -> Path:
    """training.models' resnet50 (random weights), final classifier only, dynamic batch."""
    import torch  # noqa: PLC0415
    from training.models import ModelConfig, build_model  # noqa: PLC0415

    torch.manual_seed(0)
    net = build_model(ModelConfig(arch="resnet50", num_classes=10, in_channels=3)).eval()

    class Final(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)[-1]

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Final().eval(), (torch.randn(2, 3, 224, 224),), str(path), dynamo=True,
            external_data=False, input_names=["image"], output_names=["logits"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}},
        )  # fmt: skip
    return path


# Warm-up floor: the server runs every stage at the warm-up batch sizes before it is ready; on a
# loaded 2-core machine ONNX Runtime reaches a few GFLOP/s, so the wait is derived from the work.
WARMUP_GFLOPS_FLOOR = 2.0
WARMUP_SLACK_S = 60.0


def ready_timeout_s(manifest: Manifest, warmup_batch_sizes: Sequence[int]) -> float:
    """Seconds to wait for readiness: the warm-up's FLOPs at WARMUP_GFLOPS_FLOOR, plus slack."""
    flops = manifest.exits[-1].cumulative_flops * sum(warmup_batch_sizes)  # every stage and head
    return WARMUP_SLACK_S + flops / (WARMUP_GFLOPS_FLOOR * 1e9)


def serve_and_time(
    model_dir: Path, images: list[bytes], rounds: int, log_dir: Path
) -> dict[str, Any]:
    """Calibrated thresholds vs none (every image to the final exit), alternating rounds.

    Requests go one at a time, so the server only ever batches one image: it warms batch sizes
    1 and ELF_MAX_BATCH_SIZE only (warming all 1..32 of a 224 px resnet50 took longer than the
    earlier fixed 120 s wait on the loaded machine: the reason the first timed run failed)."""
    manifest = load_manifest(model_dir)
    max_batch = 8
    env = {
        "ELF_MODEL_DIR": str(model_dir), "ELF_PROVIDERS": "cpu", "ELF_ADMIN_TOKEN": TOKEN,
        "ELF_MAX_BATCH_SIZE": str(max_batch), "ELF_WARMUP_ALL_BATCH_SIZES": "false",
        "ELF_LOG_LEVEL": "info",
    }  # fmt: skip
    serve = Path(sys.executable).parent / "elf-serve"
    spec = ServerSpec("elf", [str(serve), "--host", "127.0.0.1"], "/v2/health/ready", env)
    points = {
        "calibrated": manifest.thresholds[:-1],
        "no early exit": [1.0] * len(manifest.thresholds[:-1]),
    }
    times: dict[str, list[float]] = {k: [] for k in points}
    exits: dict[str, list[int]] = {}
    timeout = ready_timeout_s(manifest, (1, max_batch))
    t_start = time.monotonic()
    with (
        running(spec, log_dir, timeout) as server,
        httpx.Client(base_url=server.url, timeout=120) as client,
    ):
        ready_s = time.monotonic() - t_start
        client.post("/v1/classify", content=images[0], headers={"Content-Type": "image/png"})
        for _ in range(rounds):
            for key, thresholds in points.items():
                r = client.put(
                    f"/v1/models/{manifest.name}/thresholds",
                    json={"thresholds": thresholds},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                )
                r.raise_for_status()
                t0 = time.perf_counter()
                exits[key] = [_classify(client, b) for b in images]
                times[key].append((time.perf_counter() - t0) / len(images))
    k = manifest.num_exits
    med = {key: statistics.median(v) for key, v in times.items()}
    return {
        "images": len(images),
        "rounds": rounds,
        "server": {k: v for k, v in env.items() if k != "ELF_ADMIN_TOKEN"},
        "ready_seconds": round(ready_s, 1),
        "ready_timeout_seconds": round(timeout, 1),
        "seconds_per_image": times,
        "seconds_per_image_median": med,
        "exit_mix_calibrated": np.bincount(exits["calibrated"], minlength=k).tolist(),
        "exit_mix_no_early_exit": np.bincount(exits["no early exit"], minlength=k).tolist(),
        "speed_up": med["no early exit"] / med["calibrated"],
    }


def _classify(client: httpx.Client, image: bytes) -> int:
    r = client.post("/v1/classify", content=image, headers={"Content-Type": "image/png"})
    r.raise_for_status()
    return int(r.json()["results"][0]["exit"]["index"])


def heavy(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    onnx_path = work / "resnet50-224.onnx"
    if not onnx_path.is_file():
        export_resnet50(onnx_path)
    data = work / "data"
    if not data.is_dir():
        write_folder(data, {"train": args.train_per_class, "val": 10, "test": 10})
    model_dir = work / "resnet50-224-retrofit"
    if (model_dir / "manifest.json").is_file():  # built by an earlier (untimed) run
        record = json.loads((model_dir / "retrofit.json").read_text())
        seconds = sum(record["seconds"].values())
    else:
        seconds = _elf_export(
        "retrofit", "--onnx", str(onnx_path), "--dataset", "folder", "--data-root", str(data),
            "--out", str(model_dir), "--epochs", str(args.epochs), "--batch-size", "32",
            "--threads", "1", "--mean", "0.286", "0.286", "0.286",
            "--std", "0.353", "0.353", "0.353",
        )  # fmt: skip
    m = load_manifest(model_dir)
    pngs = [p.read_bytes() for p in sorted((data / "test").glob("*/*.png"))][: args.serve_images]
    result = {
        "model": m.name,
        "retrofit_seconds": round(seconds, 1),
        "cumulative_flops_ratio": [e.cumulative_flops / m.flops_full for e in m.exits],
        "calibration": m.calibration.model_dump() if m.calibration else None,
        "retrofit_record": json.loads((model_dir / "retrofit.json").read_text()),
        "serving": None
        if args.no_serve
        else serve_and_time(model_dir, pngs, args.rounds, work / "logs"),
    }
    return result


def final_output_only(full: Path, out: Path) -> Path:
    """A project full.onnx reduced to its last output (the final exit's): a plain classifier."""
    model = onnx.load(str(full))
    last = model.graph.output[-1].name
    onnx.utils.extract_model(str(full), str(out), ["input"], [last])
    return out


def fmnist(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    exported = work / "standard-bs"
    t_export = _elf_export("--checkpoint", str(args.checkpoint), "--out", str(exported))
    plain = final_output_only(exported / "full.onnx", work / "standard-bs-final.onnx")
    model_dir = work / "standard-bs-retrofit"
    order = json.loads((exported / "config.json").read_text())["data"].get("class_order")
    t_retrofit = _elf_export(
        "retrofit", "--onnx", str(plain), "--out", str(model_dir), "--epochs", str(args.epochs),
        "--distill", str(args.distill), "--threads", "1", "--exits", str(args.exits),
        "--tolerance", str(args.tolerance),
        *(["--head-width", str(args.head_width)] if args.head_width else []),
        *(["--class-order", *map(str, order)] if order else []),
    )  # fmt: skip
    record = json.loads((model_dir / "calibration.json").read_text())
    standard = json.loads((exported / "calibration.json").read_text())
    retrofitted = {
        "row": "standard-bs + retrofit",
        "seed": json.loads((exported / "config.json").read_text())["seed"],
        "source": str(model_dir / "calibration.json"),
        "test_best": calibration_point(record["test"]["best"]),
        "test_chosen": calibration_point(record["test"]["chosen"]),
        "seconds": round(t_export + t_retrofit, 1),
        "seconds_measured": "export + retrofit",
    }
    rows = [retrofitted, *(accuracy_row(spec, args.results_dir) for spec in args.compare)]
    return {
        "checkpoint": str(args.checkpoint),
        "standard_training_seconds": training_seconds(args.checkpoint.parent),
        "export_seconds": round(t_export, 1),
        "retrofit_seconds": round(t_retrofit, 1),
        "retrofit_record": json.loads((model_dir / "retrofit.json").read_text()),
        "standard_test_final": calibration_point(standard["test"]["final_exit_only"]),
        "test_final_exit_only": record["test"]["final_exit_only"],
        "cumulative_flops_ratio": record["cumulative_flops_ratio"],
        "rows": rows,
        "table": table(rows),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        return retrofit_page.main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench retrofit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="what", required=True)
    h = sub.add_parser("heavy")
    h.add_argument("--train-per-class", type=int, default=30)
    h.add_argument("--epochs", type=int, default=5)
    h.add_argument("--serve-images", type=int, default=40)
    h.add_argument("--rounds", type=int, default=3)
    h.add_argument("--no-serve", action="store_true", help="build only (the untimed part)")
    f = sub.add_parser("fmnist")
    f.add_argument("--checkpoint", type=Path, required=True)
    f.add_argument("--epochs", type=int, default=15)
    f.add_argument("--distill", type=float, default=0.0)
    f.add_argument("--exits", type=int, default=2, help="elf-export retrofit --exits")
    f.add_argument("--head-width", type=int, default=None, help="as elf-export retrofit's")
    f.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="as elf-export retrofit's"
    )
    f.add_argument(
        "--compare", nargs="*", default=[], metavar="ROW:SEED[=RUN_DIR]",
        help="accuracy rows' seeds to compare with (=RUN_DIR: its training time)",
    )  # fmt: skip
    f.add_argument("--results-dir", type=Path, default=Path("bench/results/accuracy"))
    f.add_argument("--row", default="retrofit-bs", help="its accuracy row")
    f.add_argument("--of", default="standard-bs", help="the accuracy row it retrofits")
    h.add_argument("--out", type=Path, required=True)
    for q in (h, f):
        q.add_argument("--work", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    result = machine.stamp("retrofit")
    if args.what == "heavy":
        pages.save(result | heavy(args), args.out)
        root = args.out.parent
    else:
        save_row(args.results_dir, result | fmnist(args), args.row, args.of, args.tolerance)
        root = args.results_dir.parent
        accuracy.report(args.results_dir, pages.PAGES if root == pages.RESULTS else root)
    retrofit_page.write_page(
        retrofit_page.sources(root), pages.PAGES if root == pages.RESULTS else root
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
