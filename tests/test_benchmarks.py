"""The GPU training-throughput script runs end to end (here on CPU with the tiny model), so it is ready the day a
GPU is at hand; image-decoding workers included."""

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import needs_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steps_throughput_counts_full_batches_after_the_warm_up():
    throughput = load_script("train_throughput").steps_throughput
    # steps end at t = 0 (warm-up), 1, 2, 3 (last, maybe partial): two full batches of 8 in 2 s
    assert throughput([0.0, 1.0, 2.0, 3.0], batch_size=8) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="at least 3"):
        throughput([0.0, 1.0], batch_size=8)


@pytest.mark.slow
@needs_fashion_mnist
def test_train_throughput_quick_run_with_workers(tmp_path):
    out = tmp_path / "throughput.json"
    assert load_script("train_throughput").main(["--quick", "--workers", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["workers"] == 2 and result["backbone"] == "tiny-random"
    for run in ("both_towers_from_pixels", "text_tower_cached_features"):
        assert result[run]["train_images"] > 0 and result[run]["steps"] >= 3
        assert result[run]["train_images_per_s"] > 0 and result[run]["peak_memory_mb"] > 0
    assert result["both_towers_from_pixels"]["trainable_share"] > result["text_tower_cached_features"]["trainable_share"]
