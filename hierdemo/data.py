"""Labelled image folders: scanning with a report of what was skipped, safe image loading, splits."""

from __future__ import annotations

import random
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .taxonomy import IMAGE_SUFFIXES, Taxonomy, TaxonomyError, is_ignored_name

# Pillow's decompression-bomb guard: images above this many pixels are refused (Pillow's default is ~89 Mpx).
MAX_IMAGE_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class DataError(ValueError):
    """A data folder that cannot be trained or evaluated on, with a message meant for the user."""


class ImageLoadError(ValueError):
    """One image that cannot be read."""


def load_image(source: str | Path | Image.Image) -> Image.Image:
    """Open an image as 8-bit RGB, EXIF orientation applied; CMYK, 16-bit, palette, alpha and grey handled.
    Raises :class:`ImageLoadError` with a short reason for anything unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = source if isinstance(source, Image.Image) else Image.open(source)
            img.load()
            img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float32)
            img = Image.fromarray((arr / (float(arr.max()) or 1.0) * 255).clip(0, 255).astype(np.uint8), mode="L")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageLoadError(f"image too large (over {MAX_IMAGE_PIXELS:,} pixels)") from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        raise ImageLoadError(f"not a readable image ({type(exc).__name__})") from None


@dataclass
class ScanReport:
    """What a folder scan kept and skipped, for display to the user."""

    images: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # relative path -> reason
    empty_folders: list[str] = field(default_factory=list)
    per_class: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{self.images} images in {len(self.per_class)} classes"]
        if self.skipped:
            reasons = Counter(self.skipped.values())
            parts.append("skipped " + ", ".join(f"{n} ({r})" for r, n in reasons.most_common()))
        if self.empty_folders:
            parts.append(f"{len(self.empty_folders)} empty folders left out: {', '.join(self.empty_folders[:5])}")
        return "; ".join(parts)


@dataclass
class LabelledImages:
    taxonomy: Taxonomy
    samples: list[tuple[Path, str]]  # (image file, leaf id)
    report: ScanReport
    val_samples: list[tuple[Path, str]] | None = None  # set when the folder has train/ and val/ parts


def _split_dirs(root: Path) -> tuple[Path, Path] | None:
    subs = {p.name.lower(): p for p in root.iterdir() if p.is_dir() and not is_ignored_name(p.name)}
    if set(subs) == {"train", "val"} or set(subs) == {"train", "validation"}:
        return subs["train"], subs.get("val") or subs["validation"]
    return None


def _scan(root: Path, report: ScanReport, verify: bool) -> list[tuple[Path, str]]:
    """Images in leaf folders under ``root`` as ``(file, leaf path)``; everything else goes into the report."""
    samples: list[tuple[Path, str]] = []
    has_subfolders: dict[Path, bool] = {}  # each folder is listed once, not once per file in it
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(is_ignored_name(part) for part in rel.parts) or path.is_symlink():
            continue
        if path.is_dir():
            continue
        label_dir = path.parent
        leaf_rel = label_dir.relative_to(root).as_posix()
        if label_dir == root:
            report.skipped[rel.as_posix()] = "file outside any class folder"
            continue
        if label_dir not in has_subfolders:
            has_subfolders[label_dir] = any(p.is_dir() and not is_ignored_name(p.name) for p in label_dir.iterdir())
        if has_subfolders[label_dir]:
            report.skipped[rel.as_posix()] = "image in a folder that has sub-folders"
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            report.skipped[rel.as_posix()] = "not an image file"
            continue
        if verify:
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception:
                report.skipped[rel.as_posix()] = "unreadable or corrupt image"
                continue
        samples.append((path, leaf_rel))
    return samples


def scan_image_folder(root: str | Path, verify: bool = True, min_per_class: int = 1) -> LabelledImages:
    """Scan a nested class folder (or one with ``train/`` and ``val/`` parts of the same classes).

    Leaf folders are classes; non-images, corrupt images, hidden/system files and empty folders are skipped and
    reported; classes with fewer than ``min_per_class`` images are left out and reported. Raises
    :class:`DataError` when fewer than two classes remain.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    report = ScanReport()
    parts = _split_dirs(root)
    if parts:
        train, val = (_scan(p, report, verify) for p in parts)
    else:
        train, val = _scan(root, report, verify), None
    counts = Counter(leaf for _, leaf in train + (val or []))
    for folder in sorted(root.rglob("*")):
        if folder.is_dir() and not any(is_ignored_name(x) for x in folder.relative_to(root).parts):
            children = [c for c in folder.iterdir() if not is_ignored_name(c.name)]
            if not children:
                report.empty_folders.append(folder.relative_to(root).as_posix())
    if not counts:
        raise DataError(f"no readable images in class folders under {root.name} ({report.summary()})")
    small = {leaf for leaf, n in counts.items() if n < min_per_class}
    for leaf in sorted(small):
        report.skipped[leaf + "/"] = f"class with fewer than {min_per_class} images"
    keep = lambda s: [(p, leaf) for p, leaf in s if leaf not in small]
    train = keep(train)
    val = keep(val) if val is not None else None
    leaves = sorted({leaf for _, leaf in train + (val or [])})
    if len(leaves) < 2 and small:
        raise DataError(f"fewer than two classes have at least {min_per_class} images ({report.summary()})")
    if len(leaves) < 2:
        raise DataError(f"only one class ({leaves[0]!r}) has images; at least two are needed ({report.summary()})")
    try:
        taxonomy = Taxonomy.from_paths(leaves)
    except TaxonomyError as exc:
        raise DataError(str(exc)) from None
    ids = {leaf: "/".join(part.strip() for part in leaf.split("/")) for leaf in leaves}  # node ids of the folders
    train = [(p, ids[leaf]) for p, leaf in train]
    val = [(p, ids[leaf]) for p, leaf in val] if val is not None else None
    report.images = len(train) + len(val or [])
    report.per_class = dict(Counter(leaf for _, leaf in train + (val or [])))
    return LabelledImages(taxonomy, train, report, val)


def stratified_split(
    samples: Sequence[tuple[Path, str]], val_fraction: float, seed: int
) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Per-class random split: ``round(n * val_fraction)`` to validation, at least one on each side when n >= 2."""
    by_class: dict[str, list] = defaultdict(list)
    for s in samples:
        by_class[s[1]].append(s)
    rng = random.Random(seed)
    train, val = [], []
    for leaf in sorted(by_class):
        items = sorted(by_class[leaf])
        rng.shuffle(items)
        n_val = 0 if len(items) < 2 else min(len(items) - 1, max(1, round(len(items) * val_fraction)))
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def targets_for(taxonomy: Taxonomy, leaves: Sequence[str]) -> torch.Tensor:
    """``(N, L)`` level-class index paths of leaf ids."""
    cache: dict[str, list[int]] = {}
    return torch.tensor([cache.setdefault(leaf, taxonomy.path_indices(leaf)) for leaf in leaves], dtype=torch.long)


class ImageDataset(torch.utils.data.Dataset):
    """``(pixels, index)`` pairs; an image that fails to load yields ``None`` and is dropped by the collate."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return self.transform(load_image(self.paths[i])), i
        except ImageLoadError:
            return None


def collate_skip_none(batch):
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    pixels, idx = zip(*batch)
    return torch.stack(pixels), torch.tensor(idx)
