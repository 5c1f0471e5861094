"""Training throughput and memory of the project's own training loop on any device, e.g. a GPU with ViT-B-32:

    python benchmarks/train_throughput.py --backbone ViT-B-32:random --device cuda --images-per-class 300 \
        --batch-size 128 --workers 8
    python benchmarks/train_throughput.py --quick    # tiny-random on CPU, seconds: checks that the script runs

Two one-epoch runs of :func:`hierdemo.training.train` on Fashion-MNIST images exported from the Debian package:
LoRA on both towers from pixels (every step runs the image tower forward and backward), and text-tower LoRA on
cached frozen image features (the default). Images/s counts training steps only: the full batches between the
first and the last step (the first step is a warm-up), so feature extraction, evaluation and saving are left out
and reported in the wall time. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU, else the process's
peak RSS. ``MODEL:random`` weights (no download) are for speed and memory only; their accuracy means nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from hierdemo.backbones import load_backbone
from hierdemo.fashion_mnist import export_folder
from hierdemo.training import TrainConfig, train


def steps_throughput(step_times: list[float], batch_size: int) -> float:
    """Images/s over full batches: the steps after the first (warm-up) and before the last (maybe partial)."""
    if len(step_times) < 3:
        raise ValueError("need at least 3 training steps: use more images or a smaller batch")
    return batch_size * (len(step_times) - 2) / (step_times[-2] - step_times[0])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(data: Path, out: Path, backbone, config: TrainConfig) -> dict:
    step_times: list[float] = []

    def progress(event: dict) -> None:
        if event.get("event") == "step":
            step_times.append(time.perf_counter())

    if backbone.device.type == "cuda":
        torch.cuda.synchronize(backbone.device)
        torch.cuda.reset_peak_memory_stats(backbone.device)
    t0 = time.perf_counter()
    result = train(data, out, config, backbone, progress=progress)
    return {
        "train_images": result.train_images,
        "steps": len(step_times),
        "train_images_per_s": steps_throughput(step_times, config.batch_size),
        "wall_s": time.perf_counter() - t0,
        "trainable_share": result.trainable_params / result.total_params,
        "peak_memory_mb": peak_memory_mb(backbone.device),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-B-32:random", help="any backbone spec; MODEL:random needs no download")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images-per-class", type=int, default=300, help="Fashion-MNIST images per class (10 classes)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: up to 8; --quick: 0)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="tiny-random on CPU with 12 images per class")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.backbone, args.device, args.images_per_class, args.batch_size = "tiny-random", "cpu", 12, 16
    if args.workers is None:
        args.workers = 0 if args.quick else min(8, os.cpu_count() or 1)
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="hierdemo-throughput-"))
    out: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backbone": args.backbone, "batch_size": args.batch_size, "workers": args.workers, "rank": args.rank,
    }
    try:
        export_folder(work / "data", per_class=args.images_per_class, split="train", seed=0)
        backbone = load_backbone(args.backbone, device=device, fallback=False)
        common = {"backbone": args.backbone, "epochs": 1, "patience": 1, "batch_size": args.batch_size, "rank": args.rank,
                  "alpha": 2 * args.rank, "loader_workers": args.workers}
        out["both_towers_from_pixels"] = run(work / "data", work / "both", backbone,
                                             TrainConfig(towers=("text", "vision"), **common))
        out["text_tower_cached_features"] = run(work / "data", work / "text", backbone, TrainConfig(towers=("text",), **common))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
