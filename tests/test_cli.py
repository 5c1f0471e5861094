"""The command line, in process, on generated images with the tiny backbone."""

import json

import pytest

from conftest import make_image_folder, needs_fashion_mnist
from hierdemo.cli import main


@pytest.fixture(scope="module")
def trained_cli(tmp_path_factory):
    from conftest import COLOUR_CLASSES

    root = tmp_path_factory.mktemp("cli")
    data = make_image_folder(root / "data", COLOUR_CLASSES, per_class=6)
    rc = main(["train", str(data), "--out", str(root / "ad"), "--backbone", "tiny-random", "--epochs", "2",
               "--batch-size", "8", "--json"])
    assert rc == 0
    return root, data


def test_train_writes_adapter(trained_cli):
    root, _ = trained_cli
    assert (root / "ad" / "adapter_model.safetensors").exists()


def test_eval_json_keys(trained_cli, capsys):
    root, data = trained_cli
    capsys.readouterr()
    assert main(["eval", str(data), "--adapter", str(root / "ad"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"fpa", "tice", "wap", "level_acc", "hf1", "n_images"} <= set(report)
    assert report["n_images"] == 24 and len(report["level_acc"]) == 2
    assert main(["eval", str(data), "--zero-shot", "--backbone", "tiny-random", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["adapter"] is None


def test_predict_json_and_text(trained_cli, capsys, tmp_path):
    root, data = trained_cli
    image = next((data / "cool" / "blue").iterdir())
    capsys.readouterr()
    assert main(["predict", str(image), "--adapter", str(root / "ad"), "--json"]) == 0
    (out,) = json.loads(capsys.readouterr().out)
    assert len(out["path"]) == 2 and out["path"][1].startswith(out["path"][0] + "/")
    assert abs(sum(p for _, _, p in out["levels"][1]["siblings"]) - 1) < 1e-5
    tax = tmp_path / "t.txt"
    tax.write_text("animal\n  cat\n  dog\nplant\n")
    assert main(["predict", str(image), "--taxonomy", str(tax), "--backbone", "tiny-random", "--threshold", "0.99"]) == 0
    assert "stopped at depth" in capsys.readouterr().out


def test_clear_errors_and_exit_codes(trained_cli, tmp_path, capsys):
    root, data = trained_cli
    make_image_folder(tmp_path / "one", {"cats": (1, 2, 3)})
    assert main(["train", str(tmp_path / "one"), "--out", str(tmp_path / "x"), "--backbone", "tiny-random"]) == 2
    assert "only one class" in capsys.readouterr().err
    assert main(["eval", str(data), "--adapter", str(tmp_path)]) == 2
    assert "not a hierdemo adapter" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "none.png"), "--backbone", "tiny-random"]) == 2
    assert "needs a taxonomy" in capsys.readouterr().err or "give --adapter" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("no")
    assert main(["predict", str(bad), "--adapter", str(root / "ad")]) == 1
    assert "not a readable image" in capsys.readouterr().err
    assert main(["train", str(data), "--out", str(tmp_path / "y"), "--backbone", "tiny-random", "--loss", "tpkl",
                 "--towers", "wings"]) == 2
    assert "towers" in capsys.readouterr().err


@needs_fashion_mnist
def test_data_command(tmp_path, capsys):
    assert main(["data", "fashion-mnist", str(tmp_path / "fm"), "--per-class", "2"]) == 0
    assert "wrote 20 images" in capsys.readouterr().out
    assert len(list((tmp_path / "fm").rglob("*.png"))) == 20
