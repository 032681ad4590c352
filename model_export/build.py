"""Parts of an exported model directory's manifest; move a finished directory into place."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from elf_core.manifest import (
    MANIFEST_FILE,
    Preprocessing,
    Provenance,
    StageSpec,
    TensorSpec,
    sha256_file,
)
from training.data import DataSplits
from training.provenance import git_commit


def preprocessing(splits: DataSplits) -> Preprocessing:
    return Preprocessing(
        channels=splits.channels,  # type: ignore[arg-type]
        height=splits.height,
        width=splits.width,
        mean=list(splits.mean),
        std=list(splits.std),
        resize="resize",
    )


def stage_specs(
    model_dir: Path,
    files: Sequence[str],
    specs: Sequence[tuple[TensorSpec, list[TensorSpec]]],
    per_stage: Sequence[tuple[int, int]],
) -> list[StageSpec]:
    """specs[k] = (input, outputs) as read from graph k; per_stage[k] = (body, head) FLOPs."""
    last = len(files) - 1
    return [
        StageSpec(
            file=f,
            sha256=sha256_file(model_dir / f),
            index=k,
            input=inp,
            features=outs[0] if k < last else None,
            logits=outs[-1],
            flops_body=body,
            flops_exit=head,
        )
        for k, (f, (inp, outs), (body, head)) in enumerate(
            zip(files, specs, per_stage, strict=True)
        )
    ]


def provenance(
    splits: DataSplits,
    *,
    method: str,
    loss: str,
    architecture: str,
    epochs: int,
    command: str | None,
    commit: str | None = None,
) -> Provenance:
    """The manifest's provenance of a model built now (a trained export or a retrofit)."""
    return Provenance(
        dataset=splits.name,
        method=method,
        loss=loss,
        epochs=epochs,
        architecture=architecture,
        class_order=None if splits.class_order is None else list(splits.class_order),
        commit=commit or git_commit(),
        command=command,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def check_destination(out: Path) -> None:
    """Refuse to replace anything but an (empty or) existing model directory."""
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file())
    ):
        raise FileExistsError(f"{out}: exists and is not a model directory; not replacing it")


def staging_dir(out: Path) -> Path:
    """A fresh directory next to `out` (same file system, so the final move is a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    staged.chmod(0o755)  # mkdtemp makes it private; a model directory is read by the server
    return staged


def move_into_place(staged: Path, out: Path) -> None:
    check_destination(out)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
        staged.rename(out)
        shutil.rmtree(old)
    else:
        staged.rename(out)
