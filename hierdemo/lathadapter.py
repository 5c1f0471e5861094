"""LatHAdapter: a latent hierarchical adapter in hyperbolic space (after arXiv 2508.11176, designed from its
abstract; the details below are this project's).

On top of a frozen VLM (image features ``v`` and class text features ``t``, both L2-normalised):

- residual bottleneck adapters ``v' = v + U_v σ(D_v v)`` and ``t' = t + U_t σ(D_t t)`` (``U`` zero-initialised, so
  training starts at zero-shot);
- ``K`` learnable attribute embeddings ``a_k`` bridge categories and images: each class composes attributes,
  ``t'' = norm(t' + σ(m) Σ_k softmax_k(<t', a_k> / 0.1) a_k``);
- classes, attributes and images are mapped onto a Poincaré ball of learnable curvature ``-c`` by
  ``exp0(s · x)``, with a learnable tangent scale ``s`` per kind initialised so that categories start near the
  origin (general), attributes further out and images near the boundary (specific);
- level logits are ``-τ · d_c(image, class)`` for the classes of each level, so the hierarchical losses of
  :mod:`hierdemo.losses` apply unchanged;
- the hierarchy regulariser puts each child inside its parent's entailment cone along
  coarse class -> fine class -> its dominant attribute -> each training image of that class.

The adapter needs no gradient through the VLM, so image and text features are computed once (fast on CPU), and
it scores classes it never saw in training through the shared text adapter and attributes (base-to-novel).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .hyperbolic import entailment_loss, expmap0, pairwise_distance
from .taxonomy import ROOT, LevelStructure, Taxonomy

WEIGHTS_FILE = "lathadapter.safetensors"


@dataclass(frozen=True)
class LatHConfig:
    attributes: int = 16
    hidden: int = 64
    curvature: float = 1.0
    learn_curvature: bool = True
    entail_weight: float = 0.1
    cone_k: float = 0.1
    init_temperature: float = 10.0


class Residual(nn.Module):
    """``x + up(gelu(down(x)))`` with ``up`` zero-initialised (identity at start)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class LatHAdapter(nn.Module):
    def __init__(self, dim: int, config: LatHConfig = LatHConfig(), init_attributes: torch.Tensor | None = None):
        super().__init__()
        self.dim, self.config = dim, config
        self.image_adapter = Residual(dim, config.hidden)
        self.text_adapter = Residual(dim, config.hidden)
        attrs = init_attributes if init_attributes is not None else torch.randn(config.attributes, dim)
        self.attributes = nn.Parameter(F.normalize(attrs.float(), dim=-1).clone())
        self.log_c = nn.Parameter(torch.tensor(math.log(config.curvature)), requires_grad=config.learn_curvature)
        # tangent norms: categories ~0.5, attributes ~1.0, images ~2.0 (tanh -> radii 0.46, 0.76, 0.96)
        self.log_scales = nn.Parameter(torch.log(torch.tensor([0.5, 1.0, 2.0])))
        self.log_tau = nn.Parameter(torch.tensor(math.log(config.init_temperature)))
        self.mix_logit = nn.Parameter(torch.tensor(-2.0))

    @property
    def curvature(self) -> torch.Tensor:
        return self.log_c.exp()

    def attribute_weights(self, text_feats: torch.Tensor) -> torch.Tensor:
        """``(num_classes, K)`` how much each class is made of each attribute."""
        t = F.normalize(self.text_adapter(text_feats), dim=-1)
        return F.softmax(t @ F.normalize(self.attributes, dim=-1).T / 0.1, dim=-1)

    def class_points(self, text_feats: torch.Tensor) -> torch.Tensor:
        t = F.normalize(self.text_adapter(text_feats), dim=-1)
        bridge = self.attribute_weights(text_feats) @ F.normalize(self.attributes, dim=-1)
        t = F.normalize(t + torch.sigmoid(self.mix_logit) * bridge, dim=-1)
        return expmap0(self.log_scales[0].exp() * t, self.curvature)

    def attribute_points(self) -> torch.Tensor:
        return expmap0(self.log_scales[1].exp() * F.normalize(self.attributes, dim=-1), self.curvature)

    def image_points(self, image_feats: torch.Tensor) -> torch.Tensor:
        return expmap0(self.log_scales[2].exp() * F.normalize(self.image_adapter(image_feats), dim=-1), self.curvature)

    def node_logits(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """``(N, num_nodes)``: ``-τ · d_c(image, class)``."""
        d = pairwise_distance(self.image_points(image_feats), self.class_points(text_feats), self.curvature)
        return -self.log_tau.exp() * d

    def level_logits(self, image_feats: torch.Tensor, text_feats: torch.Tensor, structure: LevelStructure) -> list[torch.Tensor]:
        z = self.node_logits(image_feats, text_feats)
        return [z[:, idx.to(z.device)] for idx in structure.node_index]

    def hierarchy_loss(self, image_feats: torch.Tensor, text_feats: torch.Tensor, leaf_nodes: torch.Tensor,
                       edges: torch.Tensor) -> torch.Tensor:
        """Entailment-cone loss along coarse -> fine (taxonomy ``edges``, global node index pairs), fine class ->
        its dominant attribute, and that attribute -> each image (``leaf_nodes``: the image's leaf node index)."""
        c, k = self.curvature, self.config.cone_k
        classes = self.class_points(text_feats)
        attrs = self.attribute_points()
        dominant = self.attribute_weights(text_feats).argmax(dim=-1)  # (num_nodes,)
        images = self.image_points(image_feats)
        loss = entailment_loss(classes[leaf_nodes], attrs[dominant[leaf_nodes]], c, k)
        loss = loss + entailment_loss(attrs[dominant[leaf_nodes]], images, c, k)
        if len(edges):
            loss = loss + entailment_loss(classes[edges[:, 0]], classes[edges[:, 1]], c, k)
        return loss

    # ---------------------------------------------------------------------------------------------- files
    def save(self, folder: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))
        (folder / "lathadapter_config.json").write_text(json.dumps({"dim": self.dim, **asdict(self.config)}, indent=1))

    @classmethod
    def load(cls, folder: Path) -> LatHAdapter:
        cfg = json.loads((folder / "lathadapter_config.json").read_text())
        dim = int(cfg.pop("dim"))
        head = cls(dim, LatHConfig(**cfg))
        head.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
        return head.eval()


def taxonomy_edges(taxonomy: Taxonomy) -> torch.Tensor:
    """``(E, 2)`` global node indices of (parent, child) for every edge below the top level."""
    idx = taxonomy.node_index
    pairs = [(idx[taxonomy.parent(n)], idx[n]) for n in taxonomy.nodes if taxonomy.parent(n) != ROOT]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def leaf_node_index(taxonomy: Taxonomy, leaves: list[str]) -> torch.Tensor:
    return torch.tensor([taxonomy.node_index[leaf] for leaf in leaves], dtype=torch.long)
