"""Reliability cases not covered elsewhere: unicode and spaces in class names, case-duplicate folders, classes below
the minimum, and what the app shows for them. (Zip attacks: test_uploads.py; image modes and corrupt files:
test_data.py; adapters: test_adapters_tiny.py and test_webapp.py; jobs: test_jobs.py and test_webapp.py.)"""

import shutil

import pytest
from PIL import Image

from conftest import make_image_folder
from hierdemo.data import DataError, scan_image_folder
from hierdemo.training import TrainConfig, train
from hierdemo.uploads import Limits
from hierdemo.webapp import AppContext, inspect_upload

UNICODE_CLASSES = {"vögel/große möwe": (200, 200, 200), "vögel/見る 鳥": (20, 20, 20), "fische/hai & co": (30, 60, 200)}


def test_unicode_and_spaces_in_names_train_and_predict(tmp_path, tiny_backbone):
    data = make_image_folder(tmp_path / "d", UNICODE_CLASSES, per_class=4)
    scan = scan_image_folder(data)
    assert set(scan.taxonomy.leaves) == {"vögel/große möwe", "vögel/見る 鳥", "fische/hai & co"}
    assert scan.taxonomy.name("vögel/große möwe") == "große möwe"
    result = train(data, tmp_path / "ad", TrainConfig(backbone="tiny-random", epochs=1, batch_size=4), tiny_backbone)
    from hierdemo.backbones import load_backbone
    from hierdemo.predict import Predictor

    predictor = Predictor(load_backbone("tiny-random"))
    key = predictor.load_adapter(result.adapter_dir).key
    _, (pred,) = predictor.predict([next((data / "fische" / "hai & co").iterdir())], adapter=key)
    assert pred.path[-1] in scan.taxonomy.leaves


def test_case_duplicate_folders_are_refused(tmp_path):
    make_image_folder(tmp_path / "d", {"animals/Cat": (1, 2, 3), "animals/cat": (4, 5, 6), "animals/dog": (7, 8, 9)}, per_class=2)
    if len({p.name for p in (tmp_path / "d" / "animals").iterdir()}) < 3:
        pytest.skip("case-insensitive file system")
    with pytest.raises(DataError, match="duplicate class names under 'animals': 'Cat' and 'cat'"):
        scan_image_folder(tmp_path / "d")


def test_app_leaves_out_small_classes_and_says_so(tmp_path, tiny_backbone):
    data = make_image_folder(tmp_path / "z" / "d", {"a": (1, 2, 3), "b": (4, 5, 6)}, per_class=3)
    make_image_folder(tmp_path / "z" / "d", {"c": (7, 8, 9)}, per_class=1)
    Image.new("RGB", (5, 5)).save(data / "a" / "x.webp")
    (data / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    archive = shutil.make_archive(str(tmp_path / "up"), "zip", data.parent, data.name)
    ctx = AppContext("tiny-random", tmp_path / "adapters", Limits(min_images_per_class=2))
    _fig, table, report, state = inspect_upload(ctx, archive, None)
    assert state is not None and [row[1] for row in table] == ["a", "b"]
    assert "class with fewer than 2 images" in report and "unreadable or corrupt image" in report
    make_image_folder(tmp_path / "y" / "d", {"a": (1, 2, 3), "b": (4, 5, 6)}, per_class=1)
    archive = shutil.make_archive(str(tmp_path / "up2"), "zip", tmp_path / "y", "d")
    _, _, report, state = inspect_upload(ctx, archive, None)
    assert state is None and "fewer than two classes have at least 2 images" in report
