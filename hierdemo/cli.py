"""``hierdemo train|eval|predict|data`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .backbones import DEFAULT_BACKBONE
from .losses import LOSS_NAMES
from .scoring import DECODE_MODES, TEMPLATE_SETS


def _user_errors() -> tuple[type[BaseException], ...]:
    from .adapters import AdapterError
    from .backbones import BackboneError
    from .data import DataError, ImageLoadError
    from .taxonomy import TaxonomyError
    from .training import TrainingCancelled

    return (AdapterError, BackboneError, DataError, ImageLoadError, TaxonomyError, TrainingCancelled, FileNotFoundError, ValueError)


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def _fmt(metrics: dict) -> str:
    levels = " / ".join(f"{a:.3f}" for a in metrics["level_acc"])
    return (f"FPA {metrics['fpa']:.3f}  TICE {metrics['tice']:.3f}  wAP {metrics['wap']:.3f}  hF1 {metrics['hf1']:.3f}  "
            f"level acc (coarse->fine) {levels}  [{metrics['n_images']} images]")


def cmd_data(args: argparse.Namespace) -> int:
    from .fashion_mnist import export_folder

    n = export_folder(args.out, per_class=args.per_class, split=args.split, seed=args.seed)
    print(f"wrote {n} images under {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .training import TrainConfig, suggested_lr, train

    config = TrainConfig(
        backbone=args.backbone or DEFAULT_BACKBONE, loss=args.loss, epochs=args.epochs, rank=args.rank, alpha=args.alpha or 2 * args.rank,
        seed=args.seed, lr=args.lr or suggested_lr(args.adapter_type), batch_size=args.batch_size, towers=tuple(args.towers.split(",")),
        templates=args.templates, lambda_tpkl=args.lambda_tpkl, lambda_hisce=args.lambda_hisce, hisce_eps=args.eps,
        val_fraction=args.val_fraction, patience=args.patience, max_seconds=args.max_seconds,
        adapter_type=args.adapter_type, attributes=args.attributes, entail_weight=args.entail_weight,
        loader_workers=args.workers,
    )
    bars: dict[str, tqdm] = {}

    def progress(event: dict) -> None:
        kind = event["event"]
        if kind == "stage" and not args.json:
            tqdm.write(f"[{event['stage']}]" + (f" {event['report']}" if "report" in event else ""))
            if "trainable" in event:
                tqdm.write(f"trainable parameters: {event['trainable']:,} of {event['total']:,} "
                           f"({100 * event['trainable'] / event['total']:.2f}%)")
        elif kind == "features":
            bar = bars.setdefault(event["stage"], tqdm(total=event["total"], desc=event["stage"], unit="img", disable=args.json))
            bar.n = event["done"]
            bar.refresh()
        elif kind == "step":
            bar = bars.setdefault("train", tqdm(total=event["total_steps"], desc="training", unit="step", disable=args.json))
            bar.n = event["step"]
            bar.set_postfix(loss=f"{event['loss']:.3f}", epoch=event["epoch"])
        elif kind == "zero_shot" and not args.json:
            tqdm.write("zero-shot  " + _fmt(event["metrics"]))
        elif kind == "epoch" and not args.json:
            tqdm.write(f"epoch {event['epoch']}  loss {event['train_loss']:.3f}  " + _fmt(event))

    result = train(args.data, args.out, config, progress=progress)
    for bar in bars.values():
        bar.close()
    if args.json:
        print(json.dumps({"adapter": str(result.adapter_dir), "zero_shot": result.zero_shot, "metrics": result.metrics,
                          "trainable_params": result.trainable_params, "total_params": result.total_params,
                          "seconds": result.seconds}, indent=1))
    else:
        print(f"adapter saved to {result.adapter_dir} in {result.seconds:.0f} s"
              + (f" ({result.stopped_early})" if result.stopped_early else ""))
        print("zero-shot  " + _fmt(result.zero_shot))
        print("adapter    " + _fmt(result.metrics))
    return 0


def _predictor_for(backbone_spec: str | None, adapter: str | None):
    from .adapters import read_adapter
    from .backbones import DEFAULT_BACKBONE, load_backbone
    from .predict import Predictor

    info = read_adapter(adapter) if adapter else None
    spec = backbone_spec or (info.backbone if info else DEFAULT_BACKBONE)
    backbone = load_backbone(spec, fallback=info is None)
    if backbone.note:
        print(f"note: {backbone.note}", file=sys.stderr)
    predictor = Predictor(backbone)
    key = predictor.load_adapter(adapter).key if adapter else None
    return predictor, key


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data import scan_image_folder

    data = scan_image_folder(args.data)
    samples = data.samples + (data.val_samples or [])
    predictor, key = _predictor_for(args.backbone, None if args.zero_shot else args.adapter)
    templates = TEMPLATE_SETS[args.templates] if args.templates else None
    with tqdm(total=len(samples), desc="evaluating", unit="img", disable=args.json) as bar:
        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        report = predictor.evaluate([p for p, _ in samples], [leaf for _, leaf in samples], data.taxonomy, key,
                                    templates, progress)
    report["backbone"] = predictor.backbone.name
    report["adapter"] = str(args.adapter) if key else None
    report["data_report"] = data.report.summary()
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{data.report.summary()}")
        print(("adapter    " if key else "zero-shot  ") + _fmt(report))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .data import ImageLoadError
    from .taxonomy import Taxonomy

    if not args.adapter and not args.taxonomy:
        raise ValueError("give --adapter DIR or --taxonomy FILE (zero-shot needs a taxonomy)")
    predictor, key = _predictor_for(args.backbone, args.adapter)
    taxonomy = Taxonomy.from_file(args.taxonomy) if args.taxonomy else None
    results, failed = [], 0
    for image in args.images:
        try:
            _, (pred,) = predictor.predict([image], taxonomy, key, args.mode, args.threshold)
        except (ImageLoadError, FileNotFoundError) as exc:
            failed += 1
            print(f"error: {image}: {exc}", file=sys.stderr)
            continue
        results.append({"image": str(image), **pred.to_dict()})
        if not args.json:
            print(f"{image}")
            for lv in pred.levels[: pred.confident_depth or len(pred.levels)]:
                sibs = ", ".join(f"{n} {p:.2f}" for _, n, p in lv.siblings[:5])
                print(f"  L{lv.level + 1} {lv.name:<20} p={lv.prob:.3f}   siblings: {sibs}")
            if pred.confident_depth < len(pred.levels):
                print(f"  (stopped at depth {pred.confident_depth}: deeper levels below threshold {args.threshold})")
    if args.json:
        print(json.dumps(results, indent=1))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hierdemo", description="Hierarchy-aware image classification with CLIP + LoRA.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a LoRA adapter on a nested image folder")
    p.add_argument("data", type=Path, help="folder of class folders (nested = taxonomy), or with train/ and val/")
    p.add_argument("--out", type=Path, required=True, help="adapter folder to write")
    p.add_argument("--backbone", default=None,
                   help=f"embedded | tiny-random | MODEL:PRETRAINED | MODEL:/path/ckpt (default: {DEFAULT_BACKBONE}, "
                        "falling back to embedded offline)")
    p.add_argument("--adapter-type", choices=["lora", "lathadapter"], default="lora",
                   help="LoRA on the towers, or LatHAdapter (hyperbolic attribute adapter on frozen features)")
    p.add_argument("--attributes", type=int, default=16, help="LatHAdapter: number of attribute prompts")
    p.add_argument("--entail-weight", type=float, default=0.1, help="LatHAdapter: entailment-cone regulariser weight")
    p.add_argument("--loss", choices=LOSS_NAMES, default="tpkl+hisce")
    p.add_argument("--epochs", type=int, default=None, help="default: LoRA about 100 optimiser steps (5-30 epochs), LatHAdapter 30")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=int, default=None, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--lr", type=float, default=None, help="default 1e-3 (LoRA) or 1e-2 (LatHAdapter)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--towers", default="text", help="text, vision or text,vision")
    p.add_argument("--templates", choices=list(TEMPLATE_SETS), default="plain")
    p.add_argument("--lambda-tpkl", type=float, default=1.0)
    p.add_argument("--lambda-hisce", type=float, default=1.0)
    p.add_argument("--eps", type=float, default=0.1, help="HiSCE sibling smoothing")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--patience", type=int, default=None,
                   help="epochs without validation FPA gain before stopping (default: no early stop; the best epoch is kept)")
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--workers", type=int, default=0, help="image-decoding processes when training on pixels (e.g. 8 on a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="hierarchical metrics of an adapter (or zero-shot) on a labelled folder")
    p.add_argument("data", type=Path)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--adapter", type=Path)
    group.add_argument("--zero-shot", action="store_true")
    p.add_argument("--backbone", default=None, help="default: the adapter's backbone, else the hub default")
    p.add_argument("--templates", choices=list(TEMPLATE_SETS), default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict taxonomy paths for images")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--adapter", type=Path)
    p.add_argument("--taxonomy", type=Path, help="JSON/YAML/CSV/outline taxonomy (default: the adapter's)")
    p.add_argument("--backbone", default=None)
    p.add_argument("--mode", choices=DECODE_MODES, default="consistent")
    p.add_argument("--threshold", type=float, default=0.0, help="stop at the deepest level with probability >= this")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("data", help="write example datasets")
    p.add_argument("dataset", choices=["fashion-mnist"])
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_libraries()
    torch_threads = os.cpu_count() or 1
    import torch

    torch.set_num_threads(torch_threads)
    try:
        return args.func(args)
    except _user_errors() as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
