"""Batched image feature extraction and hierarchical evaluation of features against node text embeddings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .data import ImageDataset, collate_skip_none
from .metrics import full_path_accuracy, hierarchical_report
from .scoring import decode, level_logits
from .taxonomy import Taxonomy

ProgressFn = Callable[[int, int], None]


def extract_features(
    backbone,
    paths: Sequence[Path],
    transform: Callable | None = None,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
    grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image embeddings of ``paths`` in order, and a boolean mask of the ones that loaded (others are zeros)."""
    loader = torch.utils.data.DataLoader(
        ImageDataset(paths, transform or backbone.preprocess), batch_size=batch_size, collate_fn=collate_skip_none
    )
    feats: torch.Tensor | None = None
    ok = torch.zeros(len(paths), dtype=torch.bool)
    done = 0
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx:
        for batch in loader:
            done = min(done + batch_size, len(paths))
            if batch is not None:
                pixels, idx = batch
                f = backbone.encode_images(pixels).float()
                if feats is None:
                    feats = f.new_zeros(len(paths), f.shape[1])
                feats[idx.to(f.device)] = f
                ok[idx] = True
            if progress:
                progress(done, len(paths))
    if feats is None:
        feats = torch.zeros(len(paths), 1)
    return feats.clone() if feats.is_inference() else feats, ok  # usable in autograd (trainable heads)


class FeatureStore:
    """Frozen image features by file, for one backbone and transform: jobs that share images (benchmarks, repeated
    runs) extract each image once. Unreadable files are remembered too."""

    def __init__(self) -> None:
        self.features: dict[str, torch.Tensor] = {}
        self.failed: set[str] = set()

    def get(self, backbone, paths: Sequence[Path], progress: ProgressFn | None = None, batch_size: int = 64):
        """Like :func:`extract_features`, computing only the paths not seen before."""
        keys = [str(p) for p in paths]
        todo = [p for p, k in zip(paths, keys) if k not in self.features and k not in self.failed]
        if todo:
            feats, ok = extract_features(backbone, todo, progress=progress, batch_size=batch_size)
            for p, f, good in zip(todo, feats, ok.tolist()):
                if good:
                    self.features[str(p)] = f
                else:
                    self.failed.add(str(p))
        ok = torch.tensor([k in self.features for k in keys], dtype=torch.bool)
        dim = next(iter(self.features.values())).shape[0] if self.features else 1
        out = torch.stack([self.features.get(k, torch.zeros(dim)) for k in keys]) if keys else torch.zeros(0, dim)
        return out, ok


def evaluate_features(
    image_features: torch.Tensor,
    node_features: torch.Tensor,
    targets: torch.Tensor,
    taxonomy: Taxonomy,
    logit_scale: torch.Tensor | float,
) -> dict:
    """Metrics of the independent per-level predictions (FPA, TICE, wAP, level accuracy, hP/hR/hF1), plus FPA
    of the two consistent decodings (``fpa_consistent``, ``fpa_leaf_marginal``)."""
    with torch.inference_mode():
        logits = level_logits(image_features, node_features, taxonomy.structure, logit_scale)
    return evaluate_logits(logits, targets, taxonomy)


def evaluate_logits(logits: list[torch.Tensor], targets: torch.Tensor, taxonomy: Taxonomy) -> dict:
    """The metrics of :func:`evaluate_features` from per-level logits (any scoring head)."""
    s = taxonomy.structure
    with torch.inference_mode():
        pred, _ = decode(logits, s, "independent")
        report = hierarchical_report(pred.cpu(), targets, s.parents, s.node_index, s.num_nodes)
        for mode, key in (("consistent", "fpa_consistent"), ("leaf-marginal", "fpa_leaf_marginal")):
            report[key] = full_path_accuracy(decode(logits, s, mode)[0].cpu(), targets).item()
    return report
