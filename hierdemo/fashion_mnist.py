"""Fashion-MNIST (Debian package ``dataset-fashion-mnist``) written as a nested, 3-level class folder."""

from __future__ import annotations

import gzip
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
# label index -> folder path (coarse/mid/fine); every leaf is at depth 3
TAXONOMY_PATHS = {
    0: "clothing/tops/t-shirt",
    1: "clothing/bottoms/trouser",
    2: "clothing/tops/pullover",
    3: "clothing/dresses/dress",
    4: "clothing/tops/coat",
    5: "footwear/shoes/sandal",
    6: "clothing/tops/shirt",
    7: "footwear/shoes/sneaker",
    8: "accessories/bags/bag",
    9: "footwear/boots/ankle boot",
}


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (images: 16-byte header, labels: 8-byte header)."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(split: str = "train", source: Path = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    images, labels = source / f"{prefix}-images-idx3-ubyte.gz", source / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists():
        raise FileNotFoundError(
            f"{images} not found: install the Debian package with `apt-get install -y dataset-fashion-mnist`"
        )
    return read_idx(images), read_idx(labels)


def export_folder(out: str | Path, per_class: int = 100, split: str = "train", seed: int = 0, source: Path = DEFAULT_DIR) -> int:
    """Write ``per_class`` PNGs of each label into ``out/<coarse>/<mid>/<fine>/``; returns the number written."""
    images, labels = load_split(split, source)
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, y in enumerate(labels.tolist()):
        by_label[y].append(i)
    rng = random.Random(seed)
    out = Path(out)
    written = 0
    for label, indices in sorted(by_label.items()):
        folder = out / TAXONOMY_PATHS[label]
        folder.mkdir(parents=True, exist_ok=True)
        for i in rng.sample(indices, min(per_class, len(indices))):
            Image.fromarray(images[i], mode="L").save(folder / f"{split}-{i:05d}.png")
            written += 1
    return written
