"""Quality benchmark: zero-shot vs LoRA with each loss vs a full fine-tune, on Fashion-MNIST's 3-level taxonomy.

Every method gets the same images, epochs and seeds. LoRA and the full fine-tune adapt the text tower (the image
tower stays frozen, so its features are extracted once and shared); metrics are on held-out Fashion-MNIST test
images. Prints a markdown table (mean ± standard deviation over seeds) and writes JSON with every run.

    python benchmarks/quality.py                 # 100 images per class, few-shot 4 and 16, 3 seeds
    python benchmarks/quality.py --quick         # a smaller run for a smoke test
    python benchmarks/quality.py --skip-full-setting --shots 1 4 16 --base-to-novel 16 \
        --methods lora:tpkl+hisce lath:tpkl+hisce --json benchmarks/results/fewshot.json   # LatHAdapter vs LoRA
    python benchmarks/quality.py --skip-full-setting --shots 16 --methods lora:levels lora:tpkl+hisce \
        lora:tpkl+hisce:lambda_tpkl=2 lora:tpkl+hisce:hisce_eps=0.3 lora:tpkl+hisce:templates=hierarchical \
        --json benchmarks/results/grid.json    # loss weights, smoothing, prompts
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hierdemo.backbones import load_backbone
from hierdemo.data import scan_image_folder, stratified_split, targets_for
from hierdemo.evaluation import FeatureStore, evaluate_features, evaluate_logits
from hierdemo.fashion_mnist import export_folder
from hierdemo.losses import hierarchical_loss
from hierdemo.predict import Predictor
from hierdemo.scoring import TEMPLATE_SETS, encode_nodes, level_logits
from hierdemo.taxonomy import Taxonomy
from hierdemo.training import TrainConfig, seed_everything, suggested_epochs, train, warmup_cosine

LORA_LOSSES = ("flat", "levels", "tpkl", "hisce", "tpkl+hisce")
METRICS = ("fpa", "tice", "wap", "hf1")


def few_shot_folder(source: Path, dest: Path, shots: int, seed: int, only: list[str] | None = None) -> Path:
    """Copy ``shots`` images per leaf (seeded) from a class folder, of the ``only`` leaves when given."""
    import random

    rng = random.Random(seed)
    data = scan_image_folder(source, verify=False)
    by_leaf: dict[str, list[Path]] = {}
    for path, leaf in data.samples:
        by_leaf.setdefault(leaf, []).append(path)
    for leaf, paths in sorted(by_leaf.items()):
        if only is not None and leaf not in only:
            continue
        for p in rng.sample(sorted(paths), min(shots, len(paths))):
            target = dest / p.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
    return dest


def full_finetune(backbone, data_root: Path, config: TrainConfig, store: FeatureStore, lr: float):
    """The reference: every text-tower weight trained (no LoRA), same loss, epochs, split and best-epoch rule."""
    seed_everything(config.seed)
    data = scan_image_folder(data_root, verify=False)
    taxonomy, templates = data.taxonomy, TEMPLATE_SETS[config.templates]
    train_s, val_s = stratified_split(data.samples, config.val_fraction, config.seed)
    train_f, _ = store.get(backbone, [p for p, _ in train_s])
    val_f, _ = store.get(backbone, [p for p, _ in val_s])
    train_t = targets_for(taxonomy, [leaf for _, leaf in train_s])
    val_t = targets_for(taxonomy, [leaf for _, leaf in val_s])
    model = copy.deepcopy(backbone.model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.text.parameters():
        p.requires_grad_(True)
    work = dataclasses.replace(backbone, model=model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    epochs = config.epochs or suggested_epochs(len(train_s), config.batch_size)
    steps = epochs * math.ceil(len(train_s) / config.batch_size)
    sched = warmup_cosine(opt, steps, config.warmup_fraction)
    loss_cfg = config.loss_config()
    gen = torch.Generator().manual_seed(config.seed)
    best, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(train_s), generator=gen).split(config.batch_size):
            nodes = encode_nodes(work, taxonomy, templates)
            logits = level_logits(train_f[idx], nodes, taxonomy.structure, backbone.logit_scale)
            loss = hierarchical_loss(logits, train_t[idx], taxonomy.structure.parents, loss_cfg)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.inference_mode():
            nodes = encode_nodes(work, taxonomy, templates)
        fpa = evaluate_features(val_f, nodes, val_t, taxonomy, backbone.logit_scale)["fpa"]
        if fpa > best:
            best, best_state = fpa, {k: v.detach().clone() for k, v in model.text.state_dict().items()}
    model.text.load_state_dict(best_state)
    with torch.inference_mode():
        nodes = encode_nodes(work, taxonomy, templates)
    return nodes, sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())


def parse_value(key: str, value: str):
    """``towers=text+vision`` -> a tuple, ``epochs=auto`` -> None (the default budget), numbers -> numbers."""
    if key == "towers":
        return tuple(value.split("+"))
    if value == "auto":
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def describe(overrides: dict) -> str:
    """``epochs=auto, lr=0.01`` for a row label (the patience that goes with ``epochs=auto`` is implied)."""
    shown = {k: v for k, v in overrides.items() if not (k == "patience" and v is None)}
    return ", ".join(f"{k}={'auto' if v is None else v}" for k, v in shown.items())


def parse_method(method: str) -> tuple[str, str, dict]:
    """``kind:loss[:key=value,...]`` -> kind, loss and TrainConfig overrides."""
    kind, loss, extra = (method.split(":", 2) + [""])[:3]
    if kind not in ("lora", "lath", "full"):
        raise SystemExit(f"unknown method kind {kind!r} in {method!r}")
    overrides: dict = {}
    for item in filter(None, extra.split(",")):
        key, _, value = item.partition("=")
        if key not in TrainConfig.__dataclass_fields__:
            raise SystemExit(f"unknown training option {key!r} in {method!r}")
        overrides[key] = parse_value(key, value)
    if "epochs" in overrides and overrides["epochs"] is None:
        overrides.setdefault("patience", None)  # the default budget runs every epoch and keeps the best
    return kind, loss, overrides


def summarise(runs: list[dict], keys: tuple[str, ...] = (*METRICS, "seconds")) -> dict:
    """Mean and sample standard deviation over seeds of ``keys``, the mean per-level accuracy, the trainable share."""
    out = {}
    for key in keys:
        vals = [r[key] for r in runs]
        out[key] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    levels = list(zip(*[r["level_acc"] for r in runs]))
    out["level_acc"] = [statistics.mean(v) for v in levels]
    out["trainable_share"] = runs[0].get("trainable_share", 0.0)
    return out


def print_tables(results: dict) -> None:
    """The Markdown tables of BENCHMARKS.md from the per-run results (also from a saved JSON: ``--report``)."""
    for setting, rows in results.items():
        print(f"### {setting}\n")
        if setting == "base-to-novel":
            print("| method | base fine acc | novel fine acc | HM | base FPA | novel FPA | HM FPA |")
            print("|---|---|---|---|---|---|---|")
            for method, runs in rows.items():
                keys = ("base_fine_acc", "novel_fine_acc", "hm_fine_acc", "base_fpa", "fpa", "hm_fpa")
                mean = {k: statistics.mean(r[k] for r in runs) for k in keys}
                print(f"| {method} | " + " | ".join(f"{mean[k]:.3f}" for k in mean) + " |")
            print()
            continue
        print("| method | FPA | TICE | wAP | hF1 | acc coarse/mid/fine | trainable | s/run |")
        print("|---|---|---|---|---|---|---|---|")
        for method, runs in rows.items():
            s = summarise(runs)
            cells = " | ".join(f"{s[k][0]:.3f} ± {s[k][1]:.3f}" for k in METRICS)
            accs = " / ".join(f"{a:.3f}" for a in s["level_acc"])
            print(f"| {method} | {cells} | {accs} | {100 * s['trainable_share']:.2f}% | {s['seconds'][0]:.0f} |")
        print()
    consistent = [(setting, method, runs) for setting, rows in results.items() if setting != "base-to-novel"
                  for method, runs in rows.items() if "fpa_consistent" in runs[0] and method != "zero-shot"]
    if consistent:
        print("### FPA of the consistent decodings (same runs)\n")
        print("| setting | method | FPA, best consistent path | FPA, leaf-marginal |")
        print("|---|---|---|---|")
        keys = ("fpa_consistent", "fpa_leaf_marginal")
        for setting, method, runs in consistent:
            s = summarise(runs, keys)
            print(f"| {setting} | {method} | " + " | ".join(f"{s[k][0]:.3f} ± {s[k][1]:.3f}" for k in keys) + " |")
        print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=100, help="training images per class (full setting)")
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--shots", type=int, nargs="*", default=[4, 16], help="few-shot settings (images per leaf)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--full-lr", type=float, default=5e-5, help="learning rate of the full fine-tune")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/quality.json"))
    ap.add_argument("--methods", nargs="+", default=[f"lora:{loss}" for loss in LORA_LOSSES] + ["full:tpkl+hisce"],
                    help="lora:LOSS, lath:LOSS (LatHAdapter) or full:LOSS (full text-tower fine-tune)")
    ap.add_argument("--base-to-novel", type=int, default=0, metavar="SHOTS",
                    help="also train on half the leaves with SHOTS images each and test on the other half")
    ap.add_argument("--skip-full-setting", action="store_true", help="only the few-shot and base-to-novel settings")
    ap.add_argument("--quick", action="store_true", help="20 per class, 10 test per class, 1 seed, 2 epochs")
    ap.add_argument("--report", type=Path, metavar="JSON", help="print the tables of a saved run and exit")
    args = ap.parse_args(argv)
    if args.report:
        print_tables(json.loads(args.report.read_text())["results"])
        return 0
    if args.quick:
        args.per_class, args.test_per_class, args.seeds, args.epochs, args.shots = 20, 10, [0], 2, [4]
    torch.set_num_threads(torch.get_num_threads())
    work = Path(tempfile.mkdtemp(prefix="hierdemo-quality-"))
    started = time.perf_counter()
    try:
        export_folder(work / "train", per_class=args.per_class, split="train", seed=0)
        export_folder(work / "test", per_class=args.test_per_class, split="test", seed=0)
        backbone = load_backbone("embedded", device="cpu")
        store = FeatureStore()
        test = scan_image_folder(work / "test", verify=False)
        test_f, _ = store.get(backbone, [p for p, _ in test.samples])
        predictor = Predictor(load_backbone("embedded", device="cpu"))  # its own copy: the bank injects adapter layers
        leaves = sorted(test.taxonomy.leaves)
        split = {"base": leaves[0::2], "novel": leaves[1::2]}  # base-to-novel: every other leaf

        def test_part(part: str | None):
            """Test features, targets and taxonomy: all leaves, or the base or novel half."""
            keep = [i for i, (_, leaf) in enumerate(test.samples) if part is None or leaf in split[part]]
            tax = test.taxonomy if part is None else Taxonomy.from_paths(split[part])
            targets = targets_for(tax, [test.samples[i][1] for i in keep])
            return test_f[keep], targets, tax

        parts = {None: test_part(None), "base": test_part("base"), "novel": test_part("novel")}

        def score(key: str | None = None, part: str | None = None, nodes=None) -> dict:
            feats, targets, tax = parts[part]
            if nodes is not None:  # the full fine-tune's own text embeddings
                return evaluate_features(feats, nodes, targets, tax, backbone.logit_scale)
            logits = predictor.level_logits(key, feats, predictor.node_features(tax, key), tax)
            return evaluate_logits(logits, targets, tax)

        def score_setting(setting: str, key: str | None = None, nodes=None) -> dict:
            if setting != "base-to-novel":
                return score(key, None, nodes)
            base, novel = score(key, "base", nodes), score(key, "novel", nodes)
            hm = lambda a, b: 2 * a * b / (a + b) if a + b else 0.0
            fine = (base["level_acc"][-1], novel["level_acc"][-1])
            return novel | {"base_fine_acc": fine[0], "novel_fine_acc": fine[1], "hm_fine_acc": hm(*fine),
                            "base_fpa": base["fpa"], "hm_fpa": hm(base["fpa"], novel["fpa"])}

        results: dict[str, dict[str, list[dict]]] = {}
        settings = ([("full", None)] if not args.skip_full_setting else []) + [(f"{k}-shot", k) for k in args.shots]
        settings += [("base-to-novel", args.base_to_novel)] if args.base_to_novel else []
        for setting, shots in settings:
            rows = results.setdefault(setting, {"zero-shot": [score_setting(setting) | {"seconds": 0.0, "trainable_share": 0.0}]})
            for seed in args.seeds:
                root = work / "train"
                if setting == "base-to-novel":
                    root = few_shot_folder(work / "train", work / f"b2n-{seed}", shots, seed, only=split["base"])
                elif shots is not None:
                    root = few_shot_folder(work / "train", work / f"fs{shots}-{seed}", shots, seed)
                for method in args.methods:
                    kind, loss, overrides = parse_method(method)
                    t0 = time.perf_counter()
                    if kind == "full":
                        cfg = TrainConfig(**{"backbone": "embedded", "loss": loss, "epochs": args.epochs, "seed": seed, **overrides})
                        nodes, trainable, total = full_finetune(backbone, root, cfg, store, args.full_lr)
                        m = score_setting(setting, nodes=nodes)
                        label = f"full text-tower FT + {loss}"
                    else:
                        cfg = TrainConfig(**{"backbone": "embedded", "loss": loss, "epochs": args.epochs, "seed": seed,
                                             "patience": args.epochs, "adapter_type": "lathadapter" if kind == "lath" else "lora",
                                             **overrides})
                        res = train(root, work / "adapters" / f"{setting}-{method}-{seed}", cfg, backbone, feature_store=store)
                        trainable, total = res.trainable_params, res.total_params
                        m = score_setting(setting, predictor.load_adapter(res.adapter_dir).key)
                        label = f"{'LatHAdapter' if kind == 'lath' else 'LoRA'} + {loss}" + (
                            f" ({describe(overrides)})" if overrides else "")
                    secs = time.perf_counter() - t0
                    rows.setdefault(label, []).append(m | {"seconds": secs, "trainable_share": trainable / total})
                    print(f"[{setting} seed {seed}] {label:<32} FPA {m['fpa']:.3f} TICE {m['tice']:.3f} ({secs:.0f} s)",
                          file=sys.stderr)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "peak_rss_mb": peak_mb, "seconds": time.perf_counter() - started}, indent=1))
        print(f"Fashion-MNIST, embedded backbone, {args.per_class}/class train pool, {args.test_per_class}/class test, "
              f"{args.epochs} epochs, seeds {args.seeds}; mean ± std over seeds. Peak RSS {peak_mb:.0f} MB, "
              f"total {time.perf_counter() - started:.0f} s.\n")
        print_tables(results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
