"""`elf-export quantize`: a float32 model directory -> a new sibling directory with int8 graphs.

SRC is never written. DST is built in a hidden temporary sibling and renamed into place only
after every check passed, so a failed run leaves nothing behind:

1. copy SRC; replace each stage graph and full.onnx (the backbone alone, which the server runs
   for exit=final) with its static-QDQ int8 variant (model_export.quantize.stages), activation
   ranges calibrated on images of the TRAINING split (the validation split stays unseen for the
   thresholds);
2. ONNX checker, same float32 interface as SRC's graphs, batches of 1, 3 and 64;
3. new exit thresholds on validation with `elf-export calibrate`'s path (recalibrate), which
   also rewrites calibration.json/.png and agreement.json;
4. agreement with SRC on validation: the final exit's class, and the served answer (each at its
   own thresholds); below `min_agreement` at the final exit the run fails (int8 that changes
   more than that many answers is a broken calibration, not a cheaper model); so it does when
   the int8 full.onnx and the int8 stages' final exit agree on fewer validation images (they
   answer exit=final and the final exit of the same model);
5. the manifest's provenance records the precision, the calibration and the command.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from elf_core.calibration import DEFAULT_TOLERANCE
from elf_core.exits import early_exit
from elf_core.manifest import (
    MODEL_NAME_PATTERN,
    Manifest,
    Quantization,
    TensorSpec,
    load_manifest,
    sha256_file,
    write_manifest,
)
from model_export.calibrate_run import SplitProbs, iter_batches, validation_probs
from model_export.quantize.stages import PRECISIONS, quantize_stages
from model_export.recalibrate import recalibrate
from model_export.report import CalibrationOutcome
from model_export.runtime import StageChain, collect_logits, normalize, providers_for, session
from model_export.splits import model_splits
from model_export.verify import BATCH_SIZES, VerificationError, check_graph
from training.data import DataSplits

log = logging.getLogger(__name__)

# Default floor on final-exit agreement with the float32 source (fraction of validation images).
# How far the bundled model's int8-u8 stages agree: bench/results/stage_precision.md.
MIN_AGREEMENT = 0.95


class QuantizeError(ValueError):
    """A quantize request that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class QuantizeConfig:
    out: Path
    precision: str = "int8-u8"
    calibration_images: int = 256
    min_agreement: float = MIN_AGREEMENT
    name: str | None = None  # default: the out directory's name
    tolerance: float | None = None  # default: the source's calibration tolerance
    device: str = "cpu"
    batch_size: int = 256
    progress: bool = True
    command: str | None = None
    seed: int = 0  # which training images calibrate the activation ranges


@dataclass(frozen=True)
class QuantizeResult:
    model_dir: Path
    source: Manifest
    manifest: Manifest
    outcome: CalibrationOutcome


def calibration_images(splits: DataSplits, n: int, seed: int) -> np.ndarray:
    """n training images drawn without replacement (seeded), normalized: float32 [n, C, H, W]."""
    train = splits.train
    if not 0 < n <= len(train):
        raise QuantizeError(
            f"--calibration-images must be in 1..{len(train)} (training split size)"
        )
    idx = np.sort(np.random.default_rng(seed).choice(len(train), size=n, replace=False))
    images = train.batch(torch.from_numpy(idx)).numpy()
    return normalize(images, splits.mean, splits.std)


def _key(spec: TensorSpec | None) -> tuple[str, str, list[int | str]] | None:
    return None if spec is None else (spec.name, spec.dtype, spec.shape[1:])


def _check_full(src: Manifest, src_dir: Path, dst_dir: Path) -> None:
    """DST's full.onnx: check_graph, SRC's full.onnx's float32 interface, batches of several
    sizes."""
    if src.full_model is None:
        return
    path = dst_dir / src.full_model.file
    inp, outs = check_graph(path)
    if (inp, outs) != check_graph(src_dir / src.full_model.file):
        raise VerificationError(f"{path}: quantisation changed the interface: {inp}, {outs}")
    pre, sess = src.preprocessing, session(path, ["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for b in BATCH_SIZES:
        x = rng.standard_normal((b, pre.channels, pre.height, pre.width)).astype(np.float32)
        shapes = [tuple(z.shape) for z in sess.run(None, {inp.name: x})]
        if any(s != (b, len(src.class_names)) for s in shapes):
            raise VerificationError(f"{path}: a batch of {b} gave logits of shapes {shapes}")


def _check_stages(src: Manifest, dst_dir: Path) -> None:
    """ONNX checker and symbolic batch axis (check_graph), SRC's float32 interface, and batches
    of several sizes through the chained stages."""
    paths = [dst_dir / s.file for s in src.stages]
    for stage, path in zip(src.stages, paths, strict=True):
        inp, outs = check_graph(path)
        want = sorted(_key(w) for w in (stage.features, stage.logits) if w is not None)  # type: ignore[type-var]
        got = sorted(_key(o) for o in outs)  # type: ignore[type-var]
        if _key(inp) != _key(stage.input) or got != want:
            raise VerificationError(
                f"{path}: quantisation changed the interface: {inp}, {outs} (was {want})"
            )
    pre = src.preprocessing
    chain = StageChain(paths)
    rng = np.random.default_rng(0)
    for b in BATCH_SIZES:
        x = rng.standard_normal((b, pre.channels, pre.height, pre.width)).astype(np.float32)
        shapes = [tuple(z.shape) for z in chain(x)]
        if any(s != (b, len(src.class_names)) for s in shapes):
            raise VerificationError(f"{dst_dir}: a batch of {b} gave logits of shapes {shapes}")


@dataclass(frozen=True)
class _Job:
    src_dir: Path
    src: Manifest
    tmp: Path  # DST while it is built
    splits: DataSplits
    cfg: QuantizeConfig


def _val_probs(job: _Job, model_dir: Path) -> SplitProbs:
    """The directory's (SRC's or DST's, same stage files) exit probabilities on validation."""
    stage_paths = [model_dir / s.file for s in job.src.stages]
    return validation_probs(stage_paths, job.splits, providers_for(job.cfg.device),
                            batch_size=job.cfg.batch_size, progress=job.cfg.progress)  # fmt: skip


def _agreement(job: _Job, dst: Manifest, dst_probs: list[np.ndarray]) -> tuple[float, float]:
    """(final-exit, served) agreement of dst with src on the validation split."""
    src_probs, _ = _val_probs(job, job.src_dir)
    final = float(np.mean(src_probs[-1].argmax(1) == dst_probs[-1].argmax(1)))
    served_src, _ = early_exit(src_probs, job.src.thresholds)
    served_dst, _ = early_exit(dst_probs, dst.thresholds)
    return final, float(np.mean(served_src == served_dst))


def _full_agreement(job: _Job, dst_final: np.ndarray) -> float | None:
    """Validation images where DST's full.onnx (its last output) gives the class of DST's final
    exit (probabilities dst_final [N, C]); None without full.onnx."""
    if job.src.full_model is None:
        return None
    sess = session(job.tmp / job.src.full_model.file, providers_for(job.cfg.device))
    inp, out = sess.get_inputs()[0].name, sess.get_outputs()[-1].name
    batches = iter_batches(job.splits.val, job.cfg.batch_size, "full.onnx", job.cfg.progress)
    (logits,), _ = collect_logits(lambda x: sess.run([out], {inp: x}), batches,
                                  job.splits.mean, job.splits.std)  # fmt: skip
    return float(np.mean(logits.argmax(1) == dst_final.argmax(1)))


def _with_stages(src: Manifest, dst_dir: Path, name: str) -> Manifest:
    """SRC's manifest naming dst's stage graphs and full.onnx (new sha256), under the new name."""
    stages = [{**s.model_dump(), "sha256": sha256_file(dst_dir / s.file)} for s in src.stages]
    full = src.full_model and {"file": src.full_model.file,
                               "sha256": sha256_file(dst_dir / src.full_model.file)}  # fmt: skip
    return Manifest.model_validate(
        {**src.model_dump(), "name": name, "stages": stages, "full_model": full}
    )


def _rule(src: Manifest, cfg: QuantizeConfig) -> tuple[float, float | None, tuple[int, ...] | None]:
    """SRC's calibration rule (tolerance, tail protection); --tolerance overrides the first."""
    cal = src.calibration
    if cal is None:
        return (DEFAULT_TOLERANCE if cfg.tolerance is None else cfg.tolerance), None, None
    tol = cal.tolerance if cfg.tolerance is None else cfg.tolerance
    protect = cal.protected_classes if cal.tail_tolerance is not None else None
    return tol, cal.tail_tolerance, tuple(protect) if protect else None


def quantize_model(src_dir: Path, cfg: QuantizeConfig) -> QuantizeResult:
    if cfg.precision not in PRECISIONS:
        raise QuantizeError(f"precision {cfg.precision!r}: one of {sorted(PRECISIONS)}")
    out = cfg.out
    if out.exists():
        raise FileExistsError(f"{out}: exists; elf-export quantize writes a new directory")
    if out.resolve() == src_dir.resolve() or src_dir.resolve() in out.resolve().parents:
        raise QuantizeError(f"{out}: must not be inside the source directory {src_dir}")
    if not re.fullmatch(MODEL_NAME_PATTERN, cfg.name or out.name):
        raise QuantizeError(f"model name {cfg.name or out.name!r}: letters, digits, '.', '_', '-'"
                            " only (pass --name)")  # fmt: skip
    src = load_manifest(src_dir)  # verifies every file's sha256
    if src.provenance.quantization is not None:
        raise QuantizeError(
            f"{src_dir}: already quantized ({src.provenance.quantization.precision})"
        )
    splits = model_splits(src_dir, src)
    calib = calibration_images(splits, cfg.calibration_images, cfg.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.copytree(src_dir, tmp)
    try:
        result = _build(_Job(src_dir, src, tmp, splits, cfg), calib)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s", out)
    return QuantizeResult(out, src, result[0], result[1])


def _build(job: _Job, calib: np.ndarray) -> tuple[Manifest, CalibrationOutcome]:
    src_dir, src, tmp, cfg = job.src_dir, job.src, job.tmp, job.cfg
    stages = [s.file for s in src.stages]
    log.info("quantizing %d stages to %s on %d training images", len(stages), cfg.precision,
             len(calib))  # fmt: skip
    quantize_stages(cfg.precision, [src_dir / f for f in stages], [tmp / f for f in stages], calib)
    if src.full_model is not None:  # one graph from the images: the backbone alone
        full = src.full_model.file
        quantize_stages(cfg.precision, [src_dir / full], [tmp / full], calib)
    _check_stages(src, tmp)
    _check_full(src, src_dir, tmp)
    write_manifest(_with_stages(src, tmp, cfg.name or cfg.out.name), tmp)
    tol, tail, protect = _rule(src, cfg)
    # One validation pass of the new stages serves the threshold search, agreement.json and the
    # agreement with SRC below.
    val = _val_probs(job, tmp)
    manifest, outcome = recalibrate(tmp, tol, cfg.device, cfg.batch_size, cfg.progress,
                                    tail_tolerance=tail, protect_classes=protect,
                                    val=val)  # fmt: skip
    final, served = _agreement(job, manifest, val[0])
    log.info("agreement with %s on validation: final exit %.4f, served %.4f", src.name, final,
             served)  # fmt: skip
    if final < cfg.min_agreement:
        raise VerificationError(
            f"{cfg.out}: the {cfg.precision} stages give the float32 model's final-exit class on "
            f"only {final:.2%} of validation images (< --min-agreement {cfg.min_agreement:.2%})"
        )
    full_agree = _full_agreement(job, val[0][-1])
    if full_agree is not None:
        log.info("%s full.onnx and final exit agree on %.4f of validation", cfg.precision,
                 full_agree)  # fmt: skip
        if full_agree < cfg.min_agreement:
            raise VerificationError(
                f"{cfg.out}: the {cfg.precision} full.onnx gives the {cfg.precision} stages' "
                f"final-exit class on only {full_agree:.2%} of validation images "
                f"(< --min-agreement {cfg.min_agreement:.2%})"
            )
    record = Quantization(
        precision=cfg.precision,
        method=PRECISIONS[cfg.precision],
        calibration_images=len(calib),
        source=f"{src.name} v{src.version}",
        source_stage_sha256=[s.sha256 for s in src.stages],
        final_agreement=round(final, 6),
        served_agreement=round(served, 6),
        command=cfg.command,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    prov = src.provenance.model_copy(update={"quantization": record})
    manifest = Manifest.model_validate({**manifest.model_dump(), "provenance": prov.model_dump()})
    write_manifest(manifest, tmp)
    return manifest, outcome
