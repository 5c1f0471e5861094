"""Prediction along a taxonomy with a backbone and any of its loaded adapters (shared by the CLI and the app)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .adapters import AdapterBank, AdapterError, AdapterInfo
from .data import load_image
from .evaluation import evaluate_logits, extract_features
from .scoring import DEFAULT_TEMPLATES, PathPrediction, TextEmbeddingCache, decode, explain, level_logits
from .taxonomy import Taxonomy


class Predictor:
    """A backbone, its adapters and a text-embedding cache. Thread-safe: forwards run under the bank's lock."""

    def __init__(self, backbone, cache: TextEmbeddingCache | None = None):
        self.backbone = backbone
        self.bank = AdapterBank(backbone)
        self.cache = cache or TextEmbeddingCache()

    def load_adapter(self, path: str | Path) -> AdapterInfo:
        return self.bank.load(path)

    def _resolve(self, adapter: str | None, taxonomy: Taxonomy | None, templates: Sequence[str] | None):
        info = self.bank.adapters.get(adapter) if adapter else None
        if adapter and info is None:
            raise AdapterError(f"adapter {adapter!r} is not loaded")
        taxonomy = taxonomy or (info.taxonomy if info else None)
        if taxonomy is None:
            raise ValueError("zero-shot prediction needs a taxonomy")
        templates = tuple(templates or (info.templates if info else DEFAULT_TEMPLATES))
        text_key = info.key if info and info.adapts_text else "zero-shot"
        return info, taxonomy, templates, text_key

    def level_logits(
        self, adapter: str | None, image_feats: torch.Tensor, node_feats: torch.Tensor, taxonomy: Taxonomy
    ) -> list[torch.Tensor]:
        """Per-level logits: the adapter's own scoring head (LatHAdapter) or scaled cosine similarity."""
        head = self.bank.heads.get(adapter) if adapter else None
        with torch.inference_mode():
            if head is not None:
                return head.level_logits(image_feats, node_feats, taxonomy.structure)
            return level_logits(image_feats, node_feats, taxonomy.structure, self.backbone.logit_scale)

    def node_features(self, taxonomy: Taxonomy, adapter: str | None = None, templates: Sequence[str] | None = None) -> torch.Tensor:
        _info, taxonomy, templates, text_key = self._resolve(adapter, taxonomy, templates)
        with self.bank.use(adapter):
            return self.cache.get(self.backbone, taxonomy, templates, text_key)

    def predict_detailed(
        self,
        images: Sequence[Image.Image | str | Path],
        taxonomy: Taxonomy | None = None,
        adapter: str | None = None,
        mode: str = "consistent",
        threshold: float = 0.0,
        templates: Sequence[str] | None = None,
    ) -> tuple[Taxonomy, list[PathPrediction], list[torch.Tensor], list[torch.Tensor]]:
        """Decode each image along the taxonomy (the adapter's own when none is given); also returns the per-level
        probabilities of the mode and the logits, ``(N, C_l)`` each. Raises
        :class:`hierdemo.data.ImageLoadError` for an unreadable image."""
        _info, taxonomy, templates, text_key = self._resolve(adapter, taxonomy, templates)
        pixels = torch.stack([self.backbone.preprocess(load_image(img)) for img in images])
        with self.bank.use(adapter), torch.inference_mode():
            feats = self.backbone.encode_images(pixels)
            nodes = self.cache.get(self.backbone, taxonomy, templates, text_key)
        s = taxonomy.structure
        logits = self.level_logits(adapter, feats, nodes, taxonomy)
        pred, probs = decode(logits, s, mode)
        preds = [explain(taxonomy, pred[i], [p[i] for p in probs], mode, threshold) for i in range(len(images))]
        return taxonomy, preds, probs, logits

    def predict(self, images, taxonomy=None, adapter=None, mode="consistent", threshold=0.0, templates=None):
        """:meth:`predict_detailed` without the tensors: ``(taxonomy, predictions)``."""
        taxonomy, preds, _, _ = self.predict_detailed(images, taxonomy, adapter, mode, threshold, templates)
        return taxonomy, preds

    def evaluate(self, paths: Sequence[Path], leaves: Sequence[str], taxonomy: Taxonomy, adapter: str | None = None,
                 templates: Sequence[str] | None = None, progress=None) -> dict:
        """Hierarchical metrics on labelled images (unreadable images are left out and not counted)."""
        from .data import targets_for

        _info, taxonomy, templates, text_key = self._resolve(adapter, taxonomy, templates)
        with self.bank.use(adapter):
            feats, ok = extract_features(self.backbone, paths, progress=progress)
            nodes = self.cache.get(self.backbone, taxonomy, templates, text_key)
        if not ok.any():
            raise ValueError("none of the images could be read")
        targets = targets_for(taxonomy, leaves)
        report = evaluate_logits(self.level_logits(adapter, feats[ok], nodes, taxonomy), targets[ok], taxonomy)
        report["skipped_images"] = int((~ok).sum())
        return report
