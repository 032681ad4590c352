"""Write the sample images under examples/images/: 16 PNGs from the Fashion-MNIST test set.

Every class appears at least once (the tail classes 7-9 of the long-tailed training split too);
the first six classes twice. `labels.txt` lists `file label class_name` per line.

    .venv/bin/python examples/make_images.py [--data-root /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from PIL import Image

from training.data.idx import load_fashion_mnist

LOG = logging.getLogger("examples")
PER_CLASS = [2, 2, 2, 2, 2, 2, 1, 1, 1, 1]  # 16 images, classes in training-frequency order


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "images")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raw = load_fashion_mnist(args.data_root)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    for c, n in enumerate(PER_CLASS):
        # The first test images of each class, in file order: deterministic, nothing hand-picked.
        idx = [i for i, y in enumerate(raw.test_labels.tolist()) if y == c][:n]
        for j, i in enumerate(idx):
            name = f"{c}_{raw.class_names[c].split('/')[0].lower().replace(' ', '-')}_{j}.png"
            Image.fromarray(raw.test_images[i, 0], mode="L").save(args.out / name)
            lines.append(f"{name} {c} {raw.class_names[c]}")
    (args.out / "labels.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    LOG.info("wrote %d images and labels.txt to %s", len(lines), args.out)


if __name__ == "__main__":
    main()
