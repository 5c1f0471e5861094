"""Training, saving, loading and switching LoRA adapters on a tiny randomly initialised open_clip model."""

import json
import shutil
import threading

import pytest
import torch

from hierdemo.adapters import AdapterError, clean_stale_temp_dirs, find_adapters, read_adapter
from hierdemo.backbones import BackboneError, load_backbone
from hierdemo.predict import Predictor
from hierdemo.training import TrainConfig, TrainingCancelled, suggested_epochs, train

FAST = {"backbone": "tiny-random", "epochs": 3, "batch_size": 8, "lr": 5e-3, "patience": 5}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_backbone):
    from conftest import COLOUR_CLASSES, make_image_folder

    root = tmp_path_factory.mktemp("tiny")
    data = make_image_folder(root / "data", COLOUR_CLASSES, per_class=8)
    events = []
    text = train(data, root / "adapters" / "text", TrainConfig(**FAST), tiny_backbone, progress=events.append)
    vision = train(data, root / "adapters" / "both", TrainConfig(**FAST, towers=("text", "vision"), loss="levels"), tiny_backbone)
    return data, text, vision, events


def test_training_reports_progress_and_learns(trained):
    _, result, _, events = trained
    kinds = [e["event"] for e in events]
    assert kinds[0] == "stage" and kinds[-1] == "done" and "zero_shot" in kinds
    steps = [e for e in events if e["event"] == "step"]
    assert steps[-1]["step"] == steps[-1]["total_steps"] == 3 * 3  # 24 training images / batch 8, 3 epochs
    assert {"ce", "tpkl", "hisce"} <= set(steps[0])
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert 0 < result.trainable_params < result.total_params


def test_adapter_folder_contents(trained):
    _, result, vision, _ = trained
    files = {p.name for p in result.adapter_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "hierdemo.json", "taxonomy.json"} <= files
    meta = json.loads((result.adapter_dir / "hierdemo.json").read_text())
    assert meta["backbone"] == "tiny-random" and meta["towers"] == ["text"]
    assert meta["metrics"]["fpa"] == result.metrics["fpa"] and "zero_shot" in meta
    assert read_adapter(vision.adapter_dir).meta["towers"] == ["text", "vision"]
    assert [a.name for a in find_adapters(result.adapter_dir.parent)] == ["both", "text"]


def test_bank_switches_adapters_and_zero_shot_is_the_base(trained, tiny_backbone):
    data, text, vision, _ = trained
    image = next((data / "warm" / "red").iterdir())
    tree = read_adapter(text.adapter_dir).taxonomy
    backbone = load_backbone("tiny-random")  # a fresh copy: the bank injects LoRA layers into its model
    predictor = Predictor(backbone)
    _, (before,) = predictor.predict([image], tree)
    a = predictor.load_adapter(text.adapter_dir)
    b = predictor.load_adapter(vision.adapter_dir)
    assert predictor.load_adapter(text.adapter_dir) is a  # idempotent
    _, (zs,) = predictor.predict([image], tree)
    _, (pa,) = predictor.predict([image], adapter=a.key)
    _, (pb,) = predictor.predict([image], adapter=b.key)
    probs = lambda p: [lv.prob for lv in p.levels]
    assert probs(zs) == pytest.approx(probs(before), abs=1e-6)
    assert probs(pa) != pytest.approx(probs(zs), abs=1e-4)
    assert probs(pb) != pytest.approx(probs(pa), abs=1e-4)
    # the text embeddings of a text adapter are cached under its own key
    assert predictor.cache.misses == 3


def test_eval_of_adapter_matches_training_metrics(trained, tiny_backbone):
    data, text, _, _ = trained
    from hierdemo.data import scan_image_folder

    predictor = Predictor(load_backbone("tiny-random"))
    key = predictor.load_adapter(text.adapter_dir).key
    scan = scan_image_folder(data)
    report = predictor.evaluate([p for p, _ in scan.samples], [leaf for _, leaf in scan.samples], scan.taxonomy, key)
    assert report["n_images"] == 32 and 0 <= report["fpa"] <= 1 and len(report["level_acc"]) == 2


def test_wrong_backbone_and_tampered_adapters(trained, tmp_path):
    _, text, _, _ = trained
    other = tmp_path / "other"
    shutil.copytree(text.adapter_dir, other)
    meta = json.loads((other / "hierdemo.json").read_text())
    meta["backbone"] = "ViT-B-32:laion2b_s34b_b79k"
    (other / "hierdemo.json").write_text(json.dumps(meta))
    predictor = Predictor(load_backbone("tiny-random"))
    with pytest.raises(AdapterError, match="trained for backbone 'ViT-B-32"):
        predictor.load_adapter(other)

    tampered = tmp_path / "tampered"
    shutil.copytree(text.adapter_dir, tampered)
    cfg = json.loads((tampered / "adapter_config.json").read_text())
    cfg["r"] = 4
    (tampered / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="does not fit"):
        predictor.load_adapter(tampered)

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterError, match="missing"):
        read_adapter(tmp_path / "junk")
    broken = tmp_path / "broken"
    shutil.copytree(text.adapter_dir, broken)
    (broken / "taxonomy.json").write_text('{"a": {}, "b": {}}')
    with pytest.raises(AdapterError, match="does not match"):
        read_adapter(broken)


def test_cancel_and_failure_leave_no_adapter(tmp_path, tiny_backbone, colour_folder):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TrainingCancelled):
        train(colour_folder, tmp_path / "ad" / "x", TrainConfig(**FAST), tiny_backbone, cancel=cancel)

    def explode(event):
        if event["event"] == "stage" and event["stage"] == "saving adapter":
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        train(colour_folder, tmp_path / "ad" / "y", TrainConfig(**FAST), tiny_backbone, progress=explode)
    assert not (tmp_path / "ad" / "x").exists() and not (tmp_path / "ad" / "y").exists()


def test_stale_temp_dirs_are_cleaned(tmp_path):
    (tmp_path / ".run.tmp-abc").mkdir()
    (tmp_path / "keep").mkdir()
    assert [p.name for p in clean_stale_temp_dirs(tmp_path)] == [".run.tmp-abc"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


def test_backbone_specs(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    import hierdemo.embedded
    from hierdemo.backbones import load_tiny_random

    with pytest.raises(BackboneError, match="unknown backbone"):
        load_backbone("NoSuchNet:x")
    with pytest.raises(BackboneError, match="neither a local file nor a pretrained tag"):
        load_backbone("ViT-B-32:nope")
    with pytest.raises(BackboneError, match="cannot be reached"):
        load_backbone("ViT-B-32:laion2b_s34b_b79k", fallback=False)
    monkeypatch.setattr(hierdemo.embedded, "load_embedded", lambda device=None: load_tiny_random())
    fallback = load_backbone("ViT-B-32:laion2b_s34b_b79k")
    assert "using the offline embedded backbone" in fallback.note
    # a local checkpoint goes through open_clip's own loading path
    source = load_tiny_random(seed=3)
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(ckpt))
    loaded = load_backbone(f"hierdemo-tiny-random:{ckpt}")
    assert torch.equal(loaded.model.visual.conv1.weight, source.model.visual.conv1.weight)
    # MODEL:random: the architecture with seeded random weights, no download and no fallback
    first, second = load_backbone("hierdemo-tiny-random:random"), load_backbone("hierdemo-tiny-random:random")
    assert first.name == "hierdemo-tiny-random:random" and not first.note
    assert torch.equal(first.model.visual.conv1.weight, second.model.visual.conv1.weight)


def test_lora_targets_cover_every_vit_b_32_block():
    """On ViT-B-32's architecture (random weights), LoRA on attn, c_fc and c_proj adds 16 * r * width per block:
    attn in_proj r(d + 3d), out_proj 2rd, c_fc r(d + 4d), c_proj r(4d + d)."""
    from hierdemo.adapters import LoraSettings, attach_lora, parameter_counts

    backbone = load_backbone("ViT-B-32:random", device="cpu")
    attach_lora(backbone.model, backbone, LoraSettings(rank=8, towers=("text", "vision")))
    trainable, total = parameter_counts(backbone.model)
    assert trainable == 16 * 8 * (768 * 12 + 512 * 12)
    assert 0.012 < trainable / total < 0.013


def test_feature_store_extracts_each_image_once(tiny_backbone, colour_folder, tmp_path):
    from hierdemo.data import scan_image_folder
    from hierdemo.evaluation import FeatureStore, extract_features

    paths = [p for p, _ in scan_image_folder(colour_folder).samples]
    (tmp_path / "bad.png").write_text("x")
    store = FeatureStore()
    calls = []
    _feats, ok = store.get(tiny_backbone, paths[:10] + [tmp_path / "bad.png"], progress=lambda d, t: calls.append(t))
    again, ok2 = store.get(tiny_backbone, paths[5:15], progress=lambda d, t: calls.append(t))
    assert calls[-1] == 5 and ok.tolist() == [True] * 10 + [False] and ok2.all()
    direct, _ = extract_features(tiny_backbone, paths[5:15])
    assert torch.allclose(again, direct, atol=1e-5)
    r1 = train(colour_folder, tmp_path / "a", TrainConfig(**FAST), tiny_backbone, feature_store=store)
    r2 = train(colour_folder, tmp_path / "b", TrainConfig(**FAST), tiny_backbone)
    assert r1.history[-1]["train_loss"] == pytest.approx(r2.history[-1]["train_loss"], abs=1e-4)  # same run
    assert r1.metrics["level_acc"] == pytest.approx(r2.metrics["level_acc"], abs=1e-4)


def test_training_refuses_a_backbone_that_serves_adapters(trained, colour_folder, tmp_path):
    _, text, _, _ = trained
    serving = load_backbone("tiny-random")
    Predictor(serving).load_adapter(text.adapter_dir)  # injects LoRA layers into serving.model
    with pytest.raises(ValueError, match="carries adapter layers"):
        train(colour_folder, tmp_path / "x", TrainConfig(**FAST), serving)


def test_results_do_not_depend_on_cached_features(tiny_backbone, colour_folder, tmp_path):
    """Extracting features draws from the global generator (DataLoader base seeds); reusing them does not. Training
    must start from the same random state either way, or dropout makes a run depend on the runs before it."""
    from hierdemo.evaluation import FeatureStore

    store = FeatureStore()

    def run(name):
        states = []
        progress = lambda e: states.append(torch.get_rng_state()) if e.get("event") == "step" and not states else None
        return train(colour_folder, tmp_path / name, TrainConfig(**FAST), tiny_backbone, progress=progress, feature_store=store), states[0]

    first, rng_first = run("a")  # extracts the features
    cached, rng_cached = run("b")  # reuses them
    assert torch.equal(rng_first, rng_cached)  # the tiny model has no dropout: the losses alone would not show it
    assert cached.history[-1]["train_loss"] == pytest.approx(first.history[-1]["train_loss"], abs=1e-5)


@pytest.mark.parametrize("adapter_type", ["lora", "lathadapter"])
def test_cancel_mid_training_frees_the_model_copy(tiny_backbone, colour_folder, tmp_path, adapter_type):
    import gc

    from hierdemo.training import LatHLearner, LoraLearner

    cancel = threading.Event()
    steps = []

    def on_event(event):
        if event["event"] == "step":
            steps.append(event)
            cancel.set()

    with pytest.raises(TrainingCancelled):
        train(colour_folder, tmp_path / "x", TrainConfig(**FAST, adapter_type=adapter_type), tiny_backbone,
              progress=on_event, cancel=cancel)
    gc.collect()
    assert len(steps) == 1 and not (tmp_path / "x").exists()
    assert not [o for o in gc.get_objects() if isinstance(o, (LoraLearner, LatHLearner))]


def test_suggested_epochs_give_about_100_steps_within_bounds():
    assert suggested_epochs(640, 32) == 5  # 20 steps an epoch: the 5-epoch minimum is already 100 steps
    assert suggested_epochs(5000, 32) == 5
    assert suggested_epochs(128, 32) == 25  # 16 images per class x 10 classes x 0.8: 4 steps an epoch
    assert suggested_epochs(300, 32) == 10  # 10 steps an epoch
    assert suggested_epochs(8, 32) == 30  # one step an epoch: capped
    assert suggested_epochs(128, 32, "lathadapter") == 30


def test_default_budget_is_chosen_from_the_training_set(tiny_backbone, colour_folder, tmp_path):
    events = []
    config = TrainConfig(backbone="tiny-random", batch_size=4, lr=5e-3)  # epochs and patience left to the defaults
    result = train(colour_folder, tmp_path / "auto", config, tiny_backbone, progress=events.append)
    expected = suggested_epochs(result.train_images, 4)  # a few steps an epoch: well over the 5-epoch minimum
    assert expected > 5 and len(result.history) == expected and not result.stopped_early
    assert read_adapter(result.adapter_dir).meta["epochs"] == expected
    assert any(e.get("stage", "").startswith(f"training {expected} epochs") for e in events)
