"""LatHAdapter: the head, training through the shared loop, saving, loading beside LoRA, novel classes, CLI."""

import json

import pytest
import torch

from conftest import COLOUR_CLASSES, make_image_folder
from hierdemo.adapters import read_adapter
from hierdemo.backbones import load_backbone
from hierdemo.lathadapter import LatHAdapter, LatHConfig, leaf_node_index, taxonomy_edges
from hierdemo.predict import Predictor
from hierdemo.taxonomy import Taxonomy
from hierdemo.training import TrainConfig, train

FAST = {"backbone": "tiny-random", "adapter_type": "lathadapter", "epochs": 4, "batch_size": 8, "lr": 5e-3, "attributes": 4, "patience": 5}


def test_head_starts_ordered_and_scores_any_taxonomy(small_tree):
    torch.manual_seed(0)
    head = LatHAdapter(16, LatHConfig(attributes=3))
    text, img = torch.randn(5, 16), torch.randn(7, 16)
    # categories near the origin, attributes further out, images near the boundary
    norms = [head.class_points(text).norm(dim=-1).mean(), head.attribute_points().norm(dim=-1).mean(),
             head.image_points(img).norm(dim=-1).mean()]
    assert norms[0] < norms[1] < norms[2] < 1
    logits = head.level_logits(img, text, small_tree.structure)
    assert [z.shape for z in logits] == [(7, 2), (7, 3)] and all((z <= 0).all() for z in logits)
    edges = taxonomy_edges(small_tree)
    assert edges.tolist() == [[0, 1], [0, 2], [3, 4]]
    assert leaf_node_index(small_tree, ["B/b1"]).tolist() == [4]


def test_hierarchy_loss_can_be_satisfied(small_tree):
    torch.manual_seed(0)
    head = LatHAdapter(8, LatHConfig(attributes=2))
    text, img = torch.randn(5, 8), torch.randn(6, 8)
    leaves = torch.tensor([1, 1, 2, 2, 4, 4])
    edges = taxonomy_edges(small_tree)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = head.hierarchy_loss(img, text, leaves, edges).item()
    for _ in range(150):
        loss = head.hierarchy_loss(img, text, leaves, edges)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 0 and loss.item() < 0.3 * first


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("lath")
    data = make_image_folder(root / "data", COLOUR_CLASSES, per_class=8)
    events = []
    result = train(data, root / "ad" / "lath", TrainConfig(**FAST), tiny_backbone, progress=events.append)
    lora = train(data, root / "ad" / "lora", TrainConfig(backbone="tiny-random", epochs=1, batch_size=8), tiny_backbone)
    return data, result, lora, events


def test_training_saves_a_lathadapter_folder(trained):
    _, result, _, events = trained
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {"lathadapter.safetensors", "lathadapter_config.json", "hierdemo.json", "taxonomy.json"} <= files
    meta = json.loads((result.adapter_dir / "hierdemo.json").read_text())
    assert meta["adapter_type"] == "lathadapter" and meta["towers"] == []
    steps = [e for e in events if e["event"] == "step"]
    assert "hierarchy" in steps[0] and steps[-1]["loss"] < steps[0]["loss"]
    assert result.trainable_params < 0.2 * result.total_params


def test_lathadapter_beside_lora_in_one_predictor(trained):
    data, result, lora, _ = trained
    predictor = Predictor(load_backbone("tiny-random"))
    image = next((data / "cool" / "green").iterdir())
    tree = read_adapter(result.adapter_dir).taxonomy
    _, (zs_before,) = predictor.predict([image], tree)
    lath_key = predictor.load_adapter(result.adapter_dir).key
    lora_key = predictor.load_adapter(lora.adapter_dir).key
    _, (p_lath,) = predictor.predict([image], adapter=lath_key)
    _, (_p_lora,) = predictor.predict([image], adapter=lora_key)
    _, (zs_after,) = predictor.predict([image], tree)
    probs = lambda p: [lv.prob for lv in p.levels]
    assert probs(zs_after) == pytest.approx(probs(zs_before), abs=1e-6)
    assert probs(p_lath) != pytest.approx(probs(zs_after), abs=1e-3)
    from hierdemo.data import scan_image_folder

    scan = scan_image_folder(data)
    report = predictor.evaluate([p for p, _ in scan.samples], [leaf for _, leaf in scan.samples], scan.taxonomy, lath_key)
    assert report["n_images"] == 32 and 0 <= report["fpa"] <= 1
    # novel classes: the head scores a taxonomy it was never trained on
    novel = Taxonomy.parse("sky\n  day\n  night\nsea\n")
    _, (p_novel,) = predictor.predict([image], novel, lath_key)
    assert p_novel.path[0] in ("sky", "sea")


def test_cli_trains_lathadapter(tmp_path, capsys):
    from hierdemo.cli import main

    data = make_image_folder(tmp_path / "d", COLOUR_CLASSES, per_class=4)
    assert main(["train", str(data), "--out", str(tmp_path / "ad"), "--backbone", "tiny-random", "--adapter-type",
                 "lathadapter", "--attributes", "3", "--epochs", "1", "--json"]) == 0
    assert read_adapter(tmp_path / "ad").adapter_type == "lathadapter"
    capsys.readouterr()
    assert main(["eval", str(data), "--adapter", str(tmp_path / "ad"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 16


def test_lathadapter_trains_without_cached_features(tmp_path, tiny_backbone):
    data = make_image_folder(tmp_path / "d", COLOUR_CLASSES, per_class=4)
    cfg = TrainConfig(**{**FAST, "epochs": 1}, cache_features=False)
    result = train(data, tmp_path / "ad", cfg, tiny_backbone)
    assert result.history and (tmp_path / "ad" / "lathadapter.safetensors").exists()
