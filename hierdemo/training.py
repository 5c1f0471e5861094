"""Fine-tune adapters with hierarchy-aware losses on a nested image folder.

``train`` runs the whole job: scan and split the data, measure zero-shot, build a learner (:class:`LoraLearner`:
LoRA on a copy of the backbone; :class:`LatHLearner`: a LatHAdapter head on frozen features), optimise (AdamW,
warm-up + cosine schedule), evaluate each epoch, keep the best epoch by validation FPA (early stop), and save the
adapter folder atomically. It reports through a progress callback and stops cleanly when a
cancel event is set (nothing is written then). With only the text tower adapted, image features are computed
once and reused (``cache_features``), which makes CPU training fast.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from .adapters import LoraSettings, attach_lora, parameter_counts, save_adapter, write_adapter_folder
from .backbones import DEFAULT_BACKBONE, Backbone, load_backbone
from .data import DataError, ImageDataset, collate_skip_none, scan_image_folder, stratified_split, targets_for
from .evaluation import FeatureStore, evaluate_features, evaluate_logits, extract_features
from .losses import LossConfig, hierarchical_loss
from .scoring import TEMPLATE_SETS, encode_nodes, level_logits
from .taxonomy import Taxonomy

ProgressCallback = Callable[[dict], None]
ADAPTER_TYPES = ("lora", "lathadapter")
MIN_STEPS, MIN_AUTO_EPOCHS, MAX_AUTO_EPOCHS, LATH_EPOCHS = 100, 5, 30, 30
LATH_LR = 1e-2  # a small head on frozen features takes a larger rate (BENCHMARKS.md section 3)


class TrainingCancelled(RuntimeError):
    """The job was cancelled; no adapter was written."""


@dataclass
class TrainConfig:
    backbone: str = DEFAULT_BACKBONE
    loss: str = "tpkl+hisce"
    lambda_tpkl: float = 1.0
    lambda_hisce: float = 1.0
    hisce_eps: float = 0.1
    epochs: int | None = None  # None: suggested_epochs() for the training-set size
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    rank: int = 8
    alpha: int = 16
    towers: tuple[str, ...] = ("text",)
    templates: str = "plain"
    seed: int = 0
    val_fraction: float = 0.2
    patience: int | None = None  # epochs without validation FPA gain before stopping; None: never stop early
    cache_features: bool = True
    adapter_type: str = "lora"  # or "lathadapter"
    attributes: int = 16  # LatHAdapter: number of attribute prompts
    entail_weight: float = 0.1  # LatHAdapter: weight of the entailment-cone regulariser
    max_seconds: float | None = None
    loader_workers: int = 0  # image-decoding processes when features are not cached (GPU: e.g. 8)
    min_images_per_class: int = 1

    @property
    def trains_on_pixels(self) -> bool:
        """Whether every step runs the image tower (LoRA on it), so its features cannot be cached."""
        return self.adapter_type == "lora" and "vision" in self.towers

    def loss_config(self) -> LossConfig:
        return LossConfig(self.loss, self.lambda_tpkl, self.lambda_hisce, self.hisce_eps)

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(rank=self.rank, alpha=self.alpha, towers=tuple(self.towers))

    def validate(self) -> None:
        self.loss_config()
        self.lora_settings()
        if self.adapter_type not in ADAPTER_TYPES:
            raise ValueError(f"adapter type must be one of {', '.join(ADAPTER_TYPES)}")
        if self.templates not in TEMPLATE_SETS:
            raise ValueError(f"templates must be one of {', '.join(TEMPLATE_SETS)}")
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch size must be at least 1 and the learning rate positive")
        if self.loader_workers < 0:
            raise ValueError("loader workers must be 0 or more")
        if self.patience is not None and self.patience < 1:
            raise ValueError("patience must be at least 1 epoch")


def suggested_lr(adapter_type: str = "lora") -> float:
    """The default learning rate of an adapter type: ``TrainConfig.lr`` for LoRA, ``LATH_LR`` for LatHAdapter."""
    return LATH_LR if adapter_type == "lathadapter" else TrainConfig.lr


def suggested_epochs(train_images: int, batch_size: int = 32, adapter_type: str = "lora") -> int:
    """The default budget: LoRA gets enough epochs for about ``MIN_STEPS`` optimiser steps, at least 5 and at most 30
    (BENCHMARKS.md section 2: at 16 images per class 5 epochs are 20 steps, FPA 0.41; 20 epochs, FPA 0.70; full data
    at 5 epochs is 100 steps). LatHAdapter, a small head on frozen features, takes 30 (section 3)."""
    if adapter_type == "lathadapter":
        return LATH_EPOCHS
    steps_per_epoch = max(1, math.ceil(train_images / batch_size))
    return min(MAX_AUTO_EPOCHS, max(MIN_AUTO_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch)))


@dataclass
class TrainResult:
    adapter_dir: Path
    zero_shot: dict
    metrics: dict
    history: list[dict] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    seconds: float = 0.0
    train_images: int = 0
    stopped_early: str = ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _Learner:
    """What both learners share: validation metrics from their own level logits."""

    taxonomy: Taxonomy

    def level_logits(self, image_feats: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, image_feats: torch.Tensor, targets: torch.Tensor) -> dict:
        with torch.inference_mode():
            logits = self.level_logits(image_feats)
        return evaluate_logits(logits, targets, self.taxonomy)


class LoraLearner(_Learner):
    """LoRA (peft) on the chosen towers of a copy of the backbone."""

    def __init__(self, base: Backbone, taxonomy, templates, config: TrainConfig):
        self.model = copy.deepcopy(base.model)
        self.peft = attach_lora(self.model, base, config.lora_settings())
        self.work = dataclasses.replace(base, model=self.model)
        self.taxonomy, self.templates, self.scale = taxonomy, templates, base.logit_scale
        self.towers = tuple(config.towers)
        self.fixed_nodes = None
        if "text" not in config.towers:
            with torch.inference_mode():
                self.fixed_nodes = encode_nodes(base, taxonomy, templates)

    def counts(self) -> tuple[int, int]:
        return parameter_counts(self.model)

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train(self, on: bool) -> None:
        self.model.train(on)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.work.encode_images(pixels)

    def nodes(self) -> torch.Tensor:
        return self.fixed_nodes if self.fixed_nodes is not None else encode_nodes(self.work, self.taxonomy, self.templates)

    def level_logits(self, image_feats: torch.Tensor) -> list[torch.Tensor]:
        return level_logits(image_feats, self.nodes(), self.taxonomy.structure, self.scale)

    def regulariser(self, image_feats: torch.Tensor, leaf_nodes: torch.Tensor) -> torch.Tensor | None:
        return None

    def state(self) -> dict:
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.peft).items()}

    def restore(self, state: dict) -> None:
        set_peft_model_state_dict(self.peft, state)

    def save(self, out_dir, meta: dict, taxonomy) -> Path:
        return save_adapter(self.peft, out_dir, meta, taxonomy)


class LatHLearner(_Learner):
    """A :class:`hierdemo.lathadapter.LatHAdapter` on frozen image and class-text features."""

    towers: tuple[str, ...] = ()

    def __init__(self, base: Backbone, taxonomy, templates, config: TrainConfig):
        from .lathadapter import LatHAdapter, LatHConfig, taxonomy_edges

        with torch.inference_mode():
            nodes = encode_nodes(base, taxonomy, templates)
        self.node_feats = nodes.clone()  # a normal tensor: the head's layers save it for backward
        gen = torch.Generator().manual_seed(config.seed)
        # attributes start as noisy mixtures of class embeddings, so they begin in the text region
        mix = torch.rand(config.attributes, len(self.node_feats), generator=gen).softmax(dim=1)
        init = mix.to(self.node_feats.device) @ self.node_feats + 0.05 * torch.randn(
            config.attributes, self.node_feats.shape[1], generator=gen).to(self.node_feats.device)
        self.head = LatHAdapter(self.node_feats.shape[1], LatHConfig(attributes=config.attributes,
                                entail_weight=config.entail_weight), init_attributes=init).to(base.device)
        self.edges = taxonomy_edges(taxonomy).to(base.device)
        self.structure, self.taxonomy = taxonomy.structure, taxonomy
        self.base_params = sum(p.numel() for p in base.model.parameters())
        self.entail_weight = config.entail_weight
        self.base = base

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frozen image features of an (augmented) batch, when features are not cached."""
        with torch.no_grad():
            return self.base.encode_images(pixels)

    def counts(self) -> tuple[int, int]:
        n = sum(p.numel() for p in self.head.parameters() if p.requires_grad)
        return n, n + self.base_params

    def parameters(self) -> list[torch.Tensor]:
        return [p for p in self.head.parameters() if p.requires_grad]

    def train(self, on: bool) -> None:
        self.head.train(on)

    def level_logits(self, image_feats: torch.Tensor) -> list[torch.Tensor]:
        return self.head.level_logits(image_feats, self.node_feats, self.structure)

    def regulariser(self, image_feats: torch.Tensor, leaf_nodes: torch.Tensor) -> torch.Tensor | None:
        if self.entail_weight <= 0:
            return None
        return self.entail_weight * self.head.hierarchy_loss(image_feats, self.node_feats, leaf_nodes, self.edges)

    def state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.head.state_dict().items()}

    def restore(self, state: dict) -> None:
        self.head.load_state_dict(state)

    def save(self, out_dir, meta: dict, taxonomy) -> Path:
        return write_adapter_folder(out_dir, meta, taxonomy, self.head.save)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float):
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to zero."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _emit(progress: ProgressCallback | None, **event) -> None:
    if progress is not None:
        progress(event)


def train(
    data_root: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    backbone: Backbone | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    feature_store: FeatureStore | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``data_root`` and save it to ``out_dir``. ``backbone`` is copied, not changed.
    A ``feature_store`` (for this backbone) lets runs that share images extract frozen image features once."""
    config = config or TrainConfig()
    config.validate()
    cancel = cancel or threading.Event()
    started = time.perf_counter()
    seed_everything(config.seed)

    _emit(progress, event="stage", stage="scanning images")
    data = scan_image_folder(data_root, min_per_class=config.min_images_per_class)
    taxonomy = data.taxonomy
    if data.val_samples is not None:
        train_samples, val_samples = data.samples, data.val_samples
    else:
        train_samples, val_samples = stratified_split(data.samples, config.val_fraction, config.seed)
    if not train_samples:
        raise DataError("no training images left after the split")
    if not val_samples:
        val_samples = train_samples  # tiny folders: report training-set metrics rather than none
    _emit(progress, event="stage", stage="loading backbone", report=data.report.summary())
    base = backbone or load_backbone(config.backbone)
    if any(isinstance(m, BaseTunerLayer) for m in base.model.modules()):
        raise ValueError("this backbone carries adapter layers (it serves an AdapterBank); train on a clean backbone")
    if base.note:
        _emit(progress, event="stage", stage=base.note)
    config = dataclasses.replace(config, backbone=base.name)  # what was actually trained on
    templates = TEMPLATE_SETS[config.templates]
    structure = taxonomy.structure
    train_targets = targets_for(taxonomy, [leaf for _, leaf in train_samples])
    val_targets = targets_for(taxonomy, [leaf for _, leaf in val_samples])
    scale = base.logit_scale

    def feature_progress(stage: str):
        return lambda done, total: _emit(progress, event="features", stage=stage, done=done, total=total)

    # zero-shot reference on the base model, before any LoRA layer exists
    _emit(progress, event="stage", stage="zero-shot evaluation")
    frozen = feature_store.get if feature_store is not None else extract_features
    val_feats, val_ok = frozen(base, [p for p, _ in val_samples], progress=feature_progress("validation features"))
    with torch.inference_mode():
        zs_nodes = encode_nodes(base, taxonomy, templates)
    zero_shot = evaluate_features(val_feats[val_ok], zs_nodes, val_targets[val_ok.cpu()], taxonomy, scale)
    _emit(progress, event="zero_shot", metrics=zero_shot)

    use_cache = config.cache_features and not config.trains_on_pixels
    if use_cache:
        train_feats, train_ok = frozen(base, [p for p, _ in train_samples], progress=feature_progress("training features"))
        keep = train_ok.nonzero().flatten()
    else:
        keep = torch.arange(len(train_samples))

    # Adapter initialisation and training must not depend on what came before: extracting features draws from the
    # global generator (each DataLoader iterator takes a base seed), cached features do not.
    seed_everything(config.seed)
    learner = (LatHLearner if config.adapter_type == "lathadapter" else LoraLearner)(base, taxonomy, templates, config)
    trainable, total = learner.counts()
    _emit(progress, event="stage", stage="training", trainable=trainable, total=total)
    train_leaf_nodes = torch.tensor([taxonomy.node_index[leaf] for _, leaf in train_samples], dtype=torch.long)
    n_train = len(keep)
    steps_per_epoch = max(1, math.ceil(n_train / config.batch_size))
    epochs = config.epochs or suggested_epochs(n_train, config.batch_size, config.adapter_type)
    total_steps = steps_per_epoch * epochs
    if config.epochs is None:
        _emit(progress, event="stage", stage=f"training {epochs} epochs ({total_steps} steps, chosen for {n_train} images)")
    optimizer = torch.optim.AdamW(learner.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_cosine(optimizer, total_steps, config.warmup_fraction)
    loss_cfg = config.loss_config()
    parents = [p.to(base.device) for p in structure.parents]

    history: list[dict] = []
    best_fpa, best_state, best_metrics, bad_epochs, step = -1.0, None, zero_shot, 0, 0
    stopped_early = ""
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(1, epochs + 1):
        learner.train(True)
        epoch_loss, seen = 0.0, 0
        if use_cache:
            batches = (keep[idx] for idx in torch.randperm(n_train, generator=generator).split(config.batch_size))
        else:
            loader = torch.utils.data.DataLoader(
                ImageDataset([p for p, _ in train_samples], base.train_preprocess),
                batch_size=config.batch_size, shuffle=True, generator=generator, collate_fn=collate_skip_none,
                num_workers=config.loader_workers, pin_memory=base.device.type == "cuda",
            )
            batches = iter(loader)
        for batch in batches:
            if cancel.is_set():
                raise TrainingCancelled("training was cancelled")
            if use_cache:
                idx = batch
                img = train_feats[idx]
            else:
                if batch is None:
                    continue
                pixels, idx = batch
                img = learner.encode_pixels(pixels)
            logits = learner.level_logits(img)
            terms = hierarchical_loss(logits, train_targets[idx].to(base.device), parents, loss_cfg)
            reg = learner.regulariser(img, train_leaf_nodes[idx].to(base.device))
            if reg is not None:
                terms["hierarchy"] = reg
                terms["loss"] = terms["loss"] + reg
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            scheduler.step()
            step += 1
            epoch_loss += terms["loss"].item() * len(idx)
            seen += len(idx)
            _emit(progress, event="step", epoch=epoch, step=step, total_steps=total_steps,
                  loss=terms["loss"].item(), **{k: v.item() for k, v in terms.items() if k != "loss"})
            if config.max_seconds and time.perf_counter() - started > config.max_seconds:
                stopped_early = f"time limit of {config.max_seconds:.0f} s reached in epoch {epoch}"
                break
        learner.train(False)
        if config.trains_on_pixels:
            val_feats, val_ok = extract_features(learner.work, [p for p, _ in val_samples])
        metrics = learner.evaluate(val_feats[val_ok], val_targets[val_ok.cpu()])
        record = {"epoch": epoch, "train_loss": epoch_loss / max(1, seen), **metrics}
        history.append(record)
        _emit(progress, event="epoch", **record)
        if metrics["fpa"] > best_fpa:
            best_fpa, best_metrics, bad_epochs = metrics["fpa"], metrics, 0
            best_state = learner.state()
        else:
            bad_epochs += 1
        if stopped_early:
            break
        if config.patience is not None and bad_epochs >= config.patience:
            stopped_early = f"no validation FPA gain for {config.patience} epochs (best {best_fpa:.3f})"
            break

    learner.restore(best_state)
    _emit(progress, event="stage", stage="saving adapter")
    meta = {
        "backbone": base.name,
        "adapter_type": config.adapter_type,
        "towers": learner.towers,
        "templates": list(templates),
        "taxonomy_fingerprint": taxonomy.fingerprint,
        "train_config": asdict(config),
        "epochs": epochs,
        "metrics": best_metrics,
        "zero_shot": zero_shot,
        "history": history,
        "trainable_params": trainable,
        "total_params": total,
        "train_images": n_train,
        "val_images": int(val_ok.sum()),
        "data_report": data.report.summary(),
        "stopped_early": stopped_early,
        "name": Path(out_dir).name,
    }
    adapter_dir = learner.save(out_dir, meta, taxonomy)
    result = TrainResult(
        adapter_dir, zero_shot, best_metrics, history, trainable, total, time.perf_counter() - started, n_train, stopped_early
    )
    _emit(progress, event="done", adapter_dir=str(adapter_dir), metrics=best_metrics, zero_shot=zero_shot)
    return result
