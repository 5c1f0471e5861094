"""Folder scanning, bad files, splits, image modes and the Fashion-MNIST export."""

import pytest
from PIL import Image

from conftest import COLOUR_CLASSES, make_image_folder, needs_fashion_mnist
from hierdemo.data import DataError, ImageLoadError, load_image, scan_image_folder, stratified_split, targets_for


def test_scan_reports_skipped_files(colour_folder):
    (colour_folder / "warm" / "red" / "notes.txt").write_text("not an image")
    (colour_folder / "warm" / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (colour_folder / "warm" / "red" / ".DS_Store").write_bytes(b"\0")
    (colour_folder / "cool" / "stray.png").write_bytes((colour_folder / "warm/red/img0.png").read_bytes())
    (colour_folder / "cool" / "empty").mkdir()
    data = scan_image_folder(colour_folder)
    assert data.taxonomy.leaves == ["cool/blue", "cool/green", "warm/orange", "warm/red"]
    assert len(data.samples) == 24 and data.report.images == 24
    assert data.report.skipped["warm/red/notes.txt"] == "not an image file"
    assert data.report.skipped["warm/red/broken.png"] == "unreadable or corrupt image"
    assert data.report.skipped["cool/stray.png"] == "image in a folder that has sub-folders"
    assert data.report.empty_folders == ["cool/empty"]
    assert ".DS_Store" not in str(data.report.skipped)
    assert "skipped" in data.report.summary()


def test_single_class_and_empty_are_refused(tmp_path):
    make_image_folder(tmp_path / "one", {"cats": (1, 2, 3)})
    with pytest.raises(DataError, match="only one class"):
        scan_image_folder(tmp_path / "one")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no readable images"):
        scan_image_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="not a folder"):
        scan_image_folder(tmp_path / "missing")


def test_min_per_class_leaves_small_classes_out(tmp_path):
    make_image_folder(tmp_path / "d", {"a": (1, 2, 3), "b": (4, 5, 6)}, per_class=3)
    make_image_folder(tmp_path / "d", {"c": (7, 8, 9)}, per_class=1)
    data = scan_image_folder(tmp_path / "d", min_per_class=2)
    assert data.taxonomy.leaves == ["a", "b"] and "c/" in data.report.skipped


def test_train_val_subfolders(tmp_path):
    make_image_folder(tmp_path / "d" / "train", COLOUR_CLASSES, per_class=3)
    make_image_folder(tmp_path / "d" / "val", COLOUR_CLASSES, per_class=2)
    data = scan_image_folder(tmp_path / "d")
    assert len(data.samples) == 12 and len(data.val_samples) == 8
    assert data.taxonomy.num_levels == 2


def test_stratified_split_is_seeded_and_keeps_each_class(colour_folder):
    data = scan_image_folder(colour_folder)
    train, val = stratified_split(data.samples, 0.34, seed=1)
    assert len(val) == 8 and len(train) == 16  # round(6 * .34) = 2 per class
    assert {leaf for _, leaf in val} == set(data.taxonomy.leaves)
    assert stratified_split(data.samples, 0.34, seed=1) == (train, val)
    assert stratified_split(data.samples, 0.34, seed=2) != (train, val)
    targets = targets_for(data.taxonomy, [leaf for _, leaf in val])
    assert targets.shape == (8, 2)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA"])
def test_load_image_modes_become_rgb(tmp_path, mode):
    img = Image.new("RGB", (10, 8), (200, 100, 50)).convert(mode) if mode != "I;16" else Image.new("I;16", (10, 8), 3000)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (10, 8)


def test_load_image_applies_exif_rotation(tmp_path):
    img = Image.new("RGB", (20, 10), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (10, 20)


def test_load_image_errors(tmp_path):
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(tmp_path / "t.png")
    big = tmp_path / "big.png"
    Image.new("L", (9000, 8000)).save(big)  # 72 Mpx > the 64 Mpx limit
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(big)
    truncated = tmp_path / "trunc.jpg"
    Image.new("RGB", (64, 64), "blue").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ImageLoadError):
        load_image(truncated)


@needs_fashion_mnist
def test_fashion_mnist_export(tmp_path):
    from hierdemo.fashion_mnist import export_folder

    assert export_folder(tmp_path, per_class=3) == 30
    data = scan_image_folder(tmp_path)
    assert data.taxonomy.num_levels == 3 and len(data.taxonomy.leaves) == 10
    assert data.taxonomy.levels[0] == ["accessories", "clothing", "footwear"]
    assert data.report.per_class["footwear/boots/ankle boot"] == 3
