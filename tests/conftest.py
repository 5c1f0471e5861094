"""Shared fixtures: small taxonomies, generated image folders, and session-scoped backbones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HIERDEMO_OFFLINE", "1")  # tests never reach for the hub


def _private_cache() -> None:
    """Each test session gets its own cache folder, so cache hits never depend on earlier runs; only the embedded
    backbone's fitted text map (deterministic, ~30 s to fit) is shared with the user's cache."""
    import tempfile

    shared = Path(os.environ.get("HIERDEMO_CACHE", Path.home() / ".cache" / "hierdemo")).expanduser() / "embedded"
    shared.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix="hierdemo-test-cache-"))
    (private / "embedded").symlink_to(shared, target_is_directory=True)
    os.environ["HIERDEMO_CACHE"] = str(private)


_private_cache()

from hierdemo.taxonomy import Taxonomy  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture
def small_tree() -> Taxonomy:
    """A/{a1, a2}, B/{b1}: levels [A, B] and [a1, a2, b1]."""
    return Taxonomy.from_nested({"A": {"a1": {}, "a2": {}}, "B": {"b1": {}}})


def make_image_folder(root: Path, classes: dict[str, tuple[int, int, int]], per_class: int = 6, size: int = 40, seed: int = 0) -> Path:
    """Write noisy solid-colour PNGs: ``classes`` maps a relative class path to its base RGB colour."""
    rng = np.random.default_rng(seed)
    for rel, colour in classes.items():
        folder = root / rel
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"img{i}.png")
    return root


COLOUR_CLASSES = {
    "warm/red": (220, 30, 30),
    "warm/orange": (240, 140, 20),
    "cool/blue": (30, 40, 220),
    "cool/green": (30, 200, 60),
}


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "colours", COLOUR_CLASSES)


@pytest.fixture(scope="session")
def tiny_backbone():
    from hierdemo.backbones import load_tiny_random

    return load_tiny_random()


@pytest.fixture(scope="session")
def embedded_backbone():
    from hierdemo.backbones import load_backbone

    torch.set_num_threads(os.cpu_count() or 1)
    return load_backbone("embedded", device="cpu")


needs_fashion_mnist = pytest.mark.skipif(not FASHION_MNIST.exists(), reason="apt-get install dataset-fashion-mnist")
