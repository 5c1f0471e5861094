"""Speed benchmark: prediction latency vs a bare forward, text-embedding cache, adapter switching, batch throughput,
fine-tune throughput and memory, all with the embedded backbone on CPU (numbers depend on the machine: name it).

    python benchmarks/speed.py            # full: includes a 1,000-image, 3-epoch fine-tune
    python benchmarks/speed.py --quick    # smaller fine-tune, fewer repeats
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from hierdemo.data import load_image
from hierdemo.fashion_mnist import export_folder
from hierdemo.scoring import DEFAULT_TEMPLATES, TextEmbeddingCache
from hierdemo.taxonomy import Taxonomy
from hierdemo.training import TrainConfig, train
from hierdemo.webapp import ZERO_SHOT, AppContext, predict_one

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(first, second, repeats: int) -> tuple[float, float, float]:
    """Median seconds of ``first`` and ``second`` called alternately (so drift in a shared machine's speed hits both
    alike) and the median of the per-pair ratios ``second / first``."""
    first(), second()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((first, a), (second, b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b), statistics.median(y / x for x, y in zip(a, b))


def rss_of(code: str) -> float:
    """Peak RSS (MB) of a fresh Python process running ``code``: its own ``VmHWM`` (``ru_maxrss`` would include the
    parent's peak, which Linux carries across exec)."""
    probe = code + ("\nprint(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(os.environ, HIERDEMO_OFFLINE="1"))
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the idle-app memory figures")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/speed.json"))
    args = ap.parse_args(argv)
    repeats = 5 if args.quick else 20
    work = Path(tempfile.mkdtemp(prefix="hierdemo-speed-"))
    out: dict[str, float | str] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
                                   "threads": torch.get_num_threads()}
    try:
        if args.memory_only:
            measure_memory(out)
            return report(out, args.json.with_name("memory.json"))
        t0 = time.perf_counter()
        ctx = AppContext("embedded", work / "adapters")  # what the app holds: backbone, predictor, job manager
        out["app_context_start_s"] = time.perf_counter() - t0
        predictor, backbone = ctx.predictor, ctx.predictor.backbone
        taxonomy = Taxonomy.from_file(ROOT / "assets" / "example_taxonomy.txt")
        image = load_image(ROOT / "assets" / "examples" / "sneaker.png")

        # 1. one photo end to end through the app's handler (parse the taxonomy, preprocess, forward, cached text
        #    scores, decode, both Plotly figures serialised for the browser) vs a bare image forward
        def bare():
            with torch.inference_mode():
                backbone.encode_images(backbone.preprocess(image).unsqueeze(0))

        def end_to_end():
            predict_one(ctx, image, ZERO_SHOT, ctx.example_taxonomy, "consistent", 0.0, "tree", False)

        bare_s, e2e_s, ratio = interleaved(bare, end_to_end, 2 * repeats)
        out["bare_forward_ms"], out["predict_end_to_end_ms"], out["predict_overhead_ratio"] = 1000 * bare_s, 1000 * e2e_s, ratio

        # 2. text embeddings of a 100-node taxonomy: cold, warm in memory, warm from disk
        big = Taxonomy.from_nested({f"group {i}": [f"kind {i}-{j}" for j in range(9)] for i in range(10)})
        cache = TextEmbeddingCache(directory=work / "cache100")
        t0 = time.perf_counter()
        cache.get(backbone, big, DEFAULT_TEMPLATES)
        out["text_cache_cold_100_nodes_ms"] = 1000 * (time.perf_counter() - t0)
        out["text_cache_warm_memory_ms"] = 1000 * timed(lambda: cache.get(backbone, big, DEFAULT_TEMPLATES), repeats)
        out["text_cache_warm_disk_ms"] = 1000 * timed(
            lambda: TextEmbeddingCache(directory=work / "cache100").get(backbone, big, DEFAULT_TEMPLATES), repeats)

        # 3. batch throughput, 64 images in one call
        export_folder(work / "fm", per_class=100 if not args.quick else 30, split="train", seed=0)
        paths = sorted((work / "fm").rglob("*.png"))
        batch = [Image.open(p) for p in paths[:64]]
        secs = timed(lambda: predictor.predict(batch, taxonomy, None, "consistent"), 3 if not args.quick else 1)
        out["batch64_images_per_s"] = 64 / secs

        # 4. fine-tune throughput: text-tower LoRA on cached features vs LoRA on both towers (no cache)
        t0 = time.perf_counter()
        result = train(work / "fm", work / "ad_text", TrainConfig(backbone="embedded", epochs=3, patience=3), backbone)
        secs = time.perf_counter() - t0
        out["finetune_text_cached_images"] = len(paths)
        out["finetune_text_cached_3_epochs_s"] = secs
        out["finetune_text_cached_images_per_s"] = 3 * result.train_images / secs
        small = work / "small"
        export_folder(small, per_class=8, split="train", seed=1)
        t0 = time.perf_counter()
        result_v = train(small, work / "ad_both", TrainConfig(backbone="embedded", epochs=1, towers=("text", "vision")), backbone)
        out["finetune_both_towers_images_per_s"] = result_v.train_images / (time.perf_counter() - t0)

        # 5. adapter switching (text adapter vs a vision adapter vs zero-shot), embeddings cached after first use
        keys = [None, predictor.load_adapter(result.adapter_dir).key, predictor.load_adapter(result_v.adapter_dir).key]
        own_taxonomy = lambda k: taxonomy if k is None else None
        for k in keys:
            predictor.predict([image], own_taxonomy(k), k)
        same = timed(lambda: predictor.predict([image], None, keys[1]), repeats)
        order = itertools.cycle(keys)

        def switch():
            k = next(order)
            predictor.predict([image], own_taxonomy(k), k)

        switching = timed(switch, repeats)
        out["predict_same_adapter_ms"] = 1000 * same
        out["predict_switching_adapters_ms"] = 1000 * switching

        out["peak_rss_this_run_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        measure_memory(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(out, args.json)


def measure_memory(out: dict) -> None:
    """Peak RSS of an idle app process (predictor + job manager, no request yet), per backbone."""
    out["rss_app_idle_embedded_mb"] = rss_of(
        "import tempfile; from hierdemo.webapp import AppContext; AppContext('embedded', tempfile.mkdtemp())")
    out["rss_app_idle_vit_b_32_random_init_mb"] = rss_of(
        "from hierdemo.backbones import load_backbone; from hierdemo.predict import Predictor;"
        "Predictor(load_backbone('ViT-B-32:random', device='cpu'))")


def report(out: dict, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    width = max(len(k) for k in out)
    for k, v in out.items():
        print(f"{k:<{width}}  {v:.2f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
