"""The offline embedded backbone: shipped weights, zero-shot above chance, LoRA on both towers beats zero-shot."""

import pytest
import torch

from conftest import needs_fashion_mnist
from hierdemo.data import scan_image_folder, targets_for
from hierdemo.embedded import efficientnet_file, load_trunk_weights
from hierdemo.evaluation import evaluate_features, extract_features
from hierdemo.scoring import DEFAULT_TEMPLATES, encode_nodes
from hierdemo.training import TrainConfig, train

pytestmark = pytest.mark.slow


def test_trunk_weights_pair_by_position(embedded_backbone):
    state = torch.load(efficientnet_file(), map_location="cpu", weights_only=True)
    trunk = embedded_backbone.model.visual.trunk
    assert torch.equal(trunk.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(trunk.conv_head.weight, state["_conv_head.weight"])
    with pytest.raises(RuntimeError, match="tensors"):
        load_trunk_weights(trunk, {"_conv_stem.weight": state["_conv_stem.weight"]})


def test_text_map_lands_text_in_image_space(embedded_backbone):
    # prompts of ImageNet classes should retrieve their own classifier rows far above chance (1/1000)
    from hierdemo.embedded import imagenet_class_names

    names = imagenet_class_names()[::20]  # 50 classes
    rows = torch.load(efficientnet_file(), map_location="cpu", weights_only=True)["_fc.weight"][::20]
    with torch.inference_mode():
        text = embedded_backbone.encode_texts([f"a photo of a {n}." for n in names])
    hits = (text @ torch.nn.functional.normalize(rows, dim=1).T).argmax(1) == torch.arange(50)
    assert hits.float().mean() > 0.5  # these classes were in the ridge fit


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    from hierdemo.fashion_mnist import export_folder

    root = tmp_path_factory.mktemp("fm")
    export_folder(root / "train", per_class=12, split="train", seed=0)
    export_folder(root / "test", per_class=10, split="test", seed=0)
    return root


@needs_fashion_mnist
def test_zero_shot_beats_chance_on_fashion_mnist(embedded_backbone, fashion):
    data = scan_image_folder(fashion / "test")
    feats, ok = extract_features(embedded_backbone, [p for p, _ in data.samples])
    with torch.inference_mode():
        nodes = encode_nodes(embedded_backbone, data.taxonomy, DEFAULT_TEMPLATES)
    report = evaluate_features(feats, nodes, targets_for(data.taxonomy, [leaf for _, leaf in data.samples]), data.taxonomy,
                               embedded_backbone.logit_scale)
    assert ok.all() and report["n_images"] == 100
    assert report["level_acc"][-1] > 0.15  # 10 leaves: chance is 0.10


@needs_fashion_mnist
def test_lora_training_beats_zero_shot(embedded_backbone, fashion, tmp_path):
    result = train(fashion / "train", tmp_path / "ad", TrainConfig(epochs=4, seed=0), embedded_backbone)
    assert result.metrics["fpa"] > result.zero_shot["fpa"]
    assert result.trainable_params / result.total_params < 0.01


def test_vision_tower_lora_trains_on_conv_layers(embedded_backbone, colour_folder, tmp_path):
    result = train(colour_folder, tmp_path / "v", TrainConfig(epochs=1, batch_size=8, towers=("text", "vision")), embedded_backbone)
    from hierdemo.adapters import read_adapter

    cfg = read_adapter(result.adapter_dir)
    assert cfg.meta["towers"] == ["text", "vision"]
    from safetensors.torch import load_file

    keys = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert any("conv_head.lora_A" in k for k in keys) and any("query.lora_A" in k for k in keys)


def test_trimming_padding_changes_nothing(embedded_backbone):
    texts = ["a photo of a sneaker.", "a photo of a very long and oddly specific kind of ankle boot, a type of footwear."]
    with torch.inference_mode():
        trimmed = embedded_backbone.encode_texts(texts)
        pad, embedded_backbone.pad_token_id = embedded_backbone.pad_token_id, None
        try:
            full = embedded_backbone.encode_texts(texts)
        finally:
            embedded_backbone.pad_token_id = pad
    assert pad == 0 and torch.allclose(trimmed, full, atol=1e-5)
