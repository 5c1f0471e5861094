"""Text embeddings of taxonomy nodes, per-level logits and hierarchical decoding.

Per-level logits are ``logit_scale * cos(image, text(node))`` for the classes of each level. Decoding modes:

- ``independent``: argmax at each level on its own (what TICE measures; may not be a valid path);
- ``leaf-marginal``: softmax over the leaves, summed up the tree; then top-down, the most probable child of the
  node chosen above (a valid path by construction);
- ``consistent``: the valid root-to-leaf path maximising the sum of per-level log-probabilities.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from threading import Lock

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .cache import cache_dir, digest
from .metrics import inconsistent_paths
from .taxonomy import LevelStructure, Taxonomy

Tensor = torch.Tensor
DECODE_MODES = ("independent", "leaf-marginal", "consistent")
DEFAULT_TEMPLATES = ("a photo of a {name}.",)
HIERARCHICAL_TEMPLATES = ("a photo of a {name}, a type of {parent}.",)
TEMPLATE_SETS = {"plain": DEFAULT_TEMPLATES, "hierarchical": HIERARCHICAL_TEMPLATES}


# ---------------------------------------------------------------------- prompts and text embeddings
def node_prompts(taxonomy: Taxonomy, templates: Sequence[str]) -> list[list[str]]:
    """Prompts of every node (global node order). ``{parent}`` templates fall back to the plain prompt at the
    top level, where there is no parent."""
    out = []
    for node in taxonomy.nodes:
        name, parent = taxonomy.name(node), taxonomy.prompt_parent(node)
        out.append(
            [t.format(name=name, parent=parent) if parent or "{parent}" not in t else DEFAULT_TEMPLATES[0].format(name=name)
             for t in templates]
        )
    return out


def encode_nodes(backbone, taxonomy: Taxonomy, templates: Sequence[str], batch_size: int = 128) -> Tensor:
    """``(num_nodes, D)`` L2-normalised, template-averaged text embeddings. Differentiable unless called under
    ``torch.no_grad``/``inference_mode`` (training adapts the text tower through it)."""
    prompts = node_prompts(taxonomy, templates)
    flat = [p for ps in prompts for p in ps]
    feats = torch.cat([backbone.encode_texts(flat[i : i + batch_size]) for i in range(0, len(flat), batch_size)])
    feats = feats.view(len(prompts), len(templates), -1).mean(dim=1)
    return F.normalize(feats, dim=-1)


class TextEmbeddingCache:
    """Node text embeddings keyed by (backbone, adapter, taxonomy, templates), in memory (LRU) and on disk."""

    def __init__(self, max_items: int = 32, disk: bool = True, directory: Path | None = None):
        self.max_items = max_items
        self.disk = disk
        self.directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self._mem: OrderedDict[str, Tensor] = OrderedDict()
        self._lock = Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(backbone_name: str, adapter_key: str, taxonomy: Taxonomy, templates: Sequence[str]) -> str:
        return digest(backbone_name, adapter_key, taxonomy.fingerprint, tuple(templates))

    def _path(self, key: str) -> Path:
        return (self.directory or cache_dir("text_embeddings")) / f"{key}.safetensors"

    def get(self, backbone, taxonomy: Taxonomy, templates: Sequence[str], adapter_key: str = "zero-shot") -> Tensor:
        """Cached embeddings, computing them (under ``inference_mode``) on a miss."""
        key = self.key(backbone.name, adapter_key, taxonomy, templates)
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                self.hits += 1
                return self._mem[key]
        path = self._path(key)
        feats = None
        if self.disk and path.exists():
            try:
                feats = load_file(str(path))["embeddings"].to(backbone.device)
            except Exception:  # a damaged cache file is recomputed
                feats = None
        if feats is None:
            self.misses += 1
            with torch.inference_mode():
                feats = encode_nodes(backbone, taxonomy, templates)
            if self.disk:
                tmp = path.with_suffix(f".tmp{id(feats)}")
                save_file({"embeddings": feats.detach().cpu().contiguous()}, str(tmp))
                tmp.replace(path)
        else:
            self.hits += 1
        with self._lock:
            self._mem[key] = feats
            while len(self._mem) > self.max_items:
                self._mem.popitem(last=False)
        return feats

    def clear_memory(self) -> None:
        with self._lock:
            self._mem.clear()


# ---------------------------------------------------------------------- logits and decoding
def level_logits(image_features: Tensor, node_features: Tensor, structure: LevelStructure, logit_scale: Tensor | float) -> list[Tensor]:
    """Per-level logits ``scale * <image, node>`` (both L2-normalised), coarse to fine."""
    sims = logit_scale * image_features @ node_features.T
    return [sims[:, idx.to(sims.device)] for idx in structure.node_index]


def leaf_marginals(level_logits_: Sequence[Tensor], structure: LevelStructure) -> list[Tensor]:
    """Probability of every class at every level as the sum of its leaves' probabilities (finest softmax)."""
    p_leaf = F.softmax(level_logits_[-1], dim=1)
    paths = structure.leaf_paths.to(p_leaf.device)
    return [
        p_leaf.new_zeros(p_leaf.shape[0], len(parents)).index_add_(1, paths[:, lvl], p_leaf)
        for lvl, parents in enumerate(structure.parents)
    ]


def decode(level_logits_: Sequence[Tensor], structure: LevelStructure, mode: str = "independent") -> tuple[Tensor, list[Tensor]]:
    """Predicted ``(N, L)`` level-class indices and the per-level probabilities the mode uses."""
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown decoding mode {mode!r}; choose one of {', '.join(DECODE_MODES)}")
    if mode == "leaf-marginal":
        probs = leaf_marginals(level_logits_, structure)
        picks = [probs[0].argmax(dim=1)]
        for lvl in range(1, len(probs)):
            allowed = structure.parents[lvl].to(probs[lvl].device).unsqueeze(0) == picks[-1].unsqueeze(1)
            picks.append(probs[lvl].masked_fill(~allowed, -1.0).argmax(dim=1))
        return torch.stack(picks, dim=1), probs
    probs = [F.softmax(z, dim=1) for z in level_logits_]
    if mode == "independent":
        return torch.stack([p.argmax(dim=1) for p in probs], dim=1), probs
    paths = structure.leaf_paths.to(probs[0].device)
    scores = sum(F.log_softmax(z, dim=1)[:, paths[:, lvl]] for lvl, z in enumerate(level_logits_))
    return paths[scores.argmax(dim=1)], probs


def sibling_probabilities(level_probs: Tensor, parents: Tensor, index: int) -> tuple[list[int], Tensor]:
    """Classes sharing ``index``'s parent and their probabilities renormalised within that group
    (conditional on the parent). ``level_probs`` is one sample's ``(C_l,)`` vector."""
    group = (parents == parents[index]).nonzero().flatten()
    p = level_probs[group]
    return group.tolist(), p / p.sum().clamp_min(1e-12)


@dataclass
class LevelPrediction:
    level: int
    node: str
    name: str
    prob: float  # the class's probability at its level under the decoding mode
    siblings: list[tuple[str, str, float]] = field(default_factory=list)  # (id, name, conditional prob), sorted


@dataclass
class PathPrediction:
    levels: list[LevelPrediction]
    mode: str
    confident_depth: int  # number of leading levels whose probability passes the threshold
    consistent: bool

    @property
    def path(self) -> list[str]:
        return [lv.node for lv in self.levels]

    @property
    def confident_path(self) -> list[str]:
        return self.path[: self.confident_depth]

    def to_dict(self) -> dict:
        return asdict(self) | {"path": self.path, "confident_path": self.confident_path}


def explain(
    taxonomy: Taxonomy, pred_row: Tensor, probs: Sequence[Tensor], mode: str, threshold: float = 0.0
) -> PathPrediction:
    """Turn one sample's decoded indices and per-level probabilities into names, siblings and confident depth."""
    structure = taxonomy.structure
    levels, depth, stopped = [], 0, False
    for lvl, idx in enumerate(pred_row.tolist()):
        group, cond = sibling_probabilities(probs[lvl], structure.parents[lvl].to(probs[lvl].device), idx)
        sibs = sorted(
            ((taxonomy.levels[lvl][j], taxonomy.name(taxonomy.levels[lvl][j]), float(c)) for j, c in zip(group, cond)),
            key=lambda s: -s[2],
        )
        node = taxonomy.levels[lvl][idx]
        prob = float(probs[lvl][idx])
        levels.append(LevelPrediction(lvl, node, taxonomy.name(node), prob, sibs))
        stopped = stopped or prob < threshold
        depth += not stopped
    ok = not bool(inconsistent_paths(pred_row.unsqueeze(0).cpu(), structure.parents)[0])
    return PathPrediction(levels, mode, depth, ok)
