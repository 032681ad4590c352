"""Which Fashion-MNIST classes are hard: a standard resnet32 trained on balanced data, its
per-class recall on the balanced validation split (the choice) and on test (for reference).

    python -m bench accuracy difficulty --runs-dir runs/bench-accuracy

trains the run if it has not finished, then writes bench/results/class-difficulty.json. The
order easiest -> hardest is the hard class order of the accuracy benchmark's `-hard` rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import machine, pages

RESULT = pages.RESULTS / "class-difficulty.json"
TRAIN_ARGS = ["--imbalance-ratio", "1", "--n-max", "2000", "--arch", "resnet32",
              "--method", "standard", "--loss", "ce", "--epochs", "15", "--seed", "0",
              "--eval-every", "5", "--threads", "1", "--no-progress"]  # fmt: skip


def measure(runs_dir: Path, result_path: Path = RESULT) -> dict[str, Any]:
    """Train (unless finished) and write the per-class recall and the order it implies."""
    run = runs_dir / "balanced-standard-ce-e15-s0"
    if not (run / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "training.cli", *TRAIN_ARGS, "--out", str(run), "--resume"]
        subprocess.run(cmd, check=True)
    m = json.loads((run / "metrics.json").read_text())
    val, test = (m[s]["exits"][-1]["per_class"] for s in ("val", "test"))
    result = {
        **machine.stamp("accuracy difficulty"),
        "train_args": " ".join(TRAIN_ARGS),
        "class_names": m["class_names"],
        "val_recall": val,
        "test_recall": test,
        "easiest_to_hardest": sorted(range(len(val)), key=lambda c: (-val[c], c)),
    }
    pages.save(result, result_path)
    return result


def section(result_path: Path = RESULT) -> list[str]:
    """The accuracy page's paragraph and table on class difficulty."""
    if not result_path.is_file():
        return []
    r = pages.load(result_path)
    order = r["easiest_to_hardest"]
    rows = [[str(c), r["class_names"][c], f"{100 * r['val_recall'][c]:.1f}",
             f"{100 * r['test_recall'][c]:.1f}"] for c in order]  # fmt: skip
    return [
        "## Class difficulty (the hard class order)", "",
        "A standard resnet32 trained on balanced Fashion-MNIST (2,000 images per class, 15 "
        f"epochs: `{r['command']}`), per-class recall of its final exit. Sorted by validation "
        "recall, easiest first; the `-hard` rows give the largest classes to the easiest and make "
        f"the three hardest the rarest (`--class-order {' '.join(map(str, order))}`).", "",
        *pages.table(["class", "name", "val recall %", "test recall %"], rows, "llrr"), "",
    ]  # fmt: skip
