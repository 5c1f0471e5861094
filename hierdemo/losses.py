"""Hierarchy-aware losses as pure tensor functions.

Conventions: ``level_logits`` is a sequence of ``L`` tensors, level ``l`` of shape ``(N, C_l)``, coarse to fine;
``targets`` is a ``(N, L)`` long tensor of level-class indices (a leaf's path, see :mod:`hierdemo.taxonomy`);
``level_parents[l]`` is a ``(C_l,)`` long tensor with the index at level ``l - 1`` of each class's parent (all
zeros at level 0, so the whole top level are siblings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LOSS_NAMES = ("flat", "levels", "tpkl", "hisce", "tpkl+hisce")


def flat_cross_entropy(leaf_logits: Tensor, leaf_targets: Tensor) -> Tensor:
    """Plain cross-entropy over the finest level: ``mean_n -log p(y_n)``."""
    return F.cross_entropy(leaf_logits, leaf_targets)


def per_level_cross_entropy(level_logits: Sequence[Tensor], targets: Tensor) -> Tensor:
    """Mean over levels of the cross-entropy at each level: ``1/L sum_l CE(z_l, y_l)``."""
    return torch.stack([F.cross_entropy(z, targets[:, lvl]) for lvl, z in enumerate(level_logits)]).mean()


def tree_path_targets(level_sizes: Sequence[int], targets: Tensor) -> Tensor:
    """TP-KL target over the concatenated levels: ``1/L`` on each ground-truth path node, 0 elsewhere."""
    n, num_levels = targets.shape
    out = torch.zeros(n, sum(level_sizes), device=targets.device)
    offsets = torch.tensor([0, *level_sizes[:-1]], device=targets.device).cumsum(0)
    out.scatter_(1, targets + offsets, 1.0 / num_levels)
    return out


def tree_path_kl(level_logits: Sequence[Tensor], targets: Tensor, soft_targets: Sequence[Tensor] | None = None) -> Tensor:
    """Tree-Path KL divergence (H-CAST, ICLR 2025; OpenVINO OTX ``TreePathKLDivergenceLoss``).

    All levels' logits are concatenated and share ONE log-softmax; the target ``q`` puts ``1/L`` on each
    ground-truth path node (or is the L1-normalised concatenation of per-level ``soft_targets``):
    ``KL(q || softmax(concat z)) = 1/N sum_n sum_j q_nj (log q_nj - log p_nj)`` (``batchmean``).
    """
    log_p = F.log_softmax(torch.cat(list(level_logits), dim=1), dim=1)
    if soft_targets is None:
        q = tree_path_targets([z.shape[1] for z in level_logits], targets)
    else:
        q = torch.cat(list(soft_targets), dim=1)
        q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return F.kl_div(log_p, q, reduction="batchmean")


def sibling_smoothed_targets(target: Tensor, parents: Tensor, eps: float) -> Tensor:
    """HiSCE target at one level: ``1 - eps`` on the true class ``i``, ``eps / |S(i)|`` on each sibling in
    ``S(i)`` (same parent, ``i`` excluded), 0 elsewhere; all mass on ``i`` when it has no sibling."""
    same_parent = parents[target].unsqueeze(1) == parents.unsqueeze(0)  # (N, C)
    onehot = F.one_hot(target, num_classes=parents.numel()).bool()
    sib = same_parent & ~onehot
    n_sib = sib.sum(dim=1, keepdim=True)
    share = torch.where(n_sib > 0, eps / n_sib.clamp_min(1), torch.zeros_like(n_sib, dtype=torch.float))
    true_mass = torch.where(n_sib > 0, 1.0 - eps, 1.0)
    return sib.float() * share + onehot.float() * true_mass


def hisce(
    level_logits: Sequence[Tensor], targets: Tensor, level_parents: Sequence[Tensor], eps: float | Sequence[float] = 0.1
) -> Tensor:
    """Hierarchy-Sibling Smoothed Cross-Entropy (arXiv 2512.21529): ``sum_l mean_n CE(T_l, softmax(z_l))`` with
    the sibling-smoothed targets of :func:`sibling_smoothed_targets`; ``eps`` may be given per level."""
    eps_per_level = [float(eps)] * len(level_logits) if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if len(eps_per_level) != len(level_logits):
        raise ValueError(f"eps has {len(eps_per_level)} values for {len(level_logits)} levels")
    total = level_logits[0].new_zeros(())
    for lvl, z in enumerate(level_logits):
        t = sibling_smoothed_targets(targets[:, lvl], level_parents[lvl].to(z.device), eps_per_level[lvl])
        total = total + -(t * F.log_softmax(z, dim=1)).sum(dim=1).mean()
    return total


@dataclass(frozen=True)
class LossConfig:
    """Which terms make up the training loss and their weights."""

    name: str = "tpkl+hisce"
    lambda_tpkl: float = 1.0
    lambda_hisce: float = 1.0
    hisce_eps: float | tuple[float, ...] = 0.1

    def __post_init__(self) -> None:
        if self.name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.name!r}; choose one of {', '.join(LOSS_NAMES)}")


def hierarchical_loss(
    level_logits: Sequence[Tensor], targets: Tensor, level_parents: Sequence[Tensor], config: LossConfig
) -> dict[str, Tensor]:
    """Total loss and its terms.

    ``flat``: CE on the finest level only. Otherwise ``CE_levels + lambda_tpkl * TP-KL + lambda_hisce * HiSCE``
    where ``CE_levels`` is :func:`per_level_cross_entropy` and each extra term is on when its name is in
    ``config.name`` (``levels`` has neither).
    """
    if config.name == "flat":
        ce = flat_cross_entropy(level_logits[-1], targets[:, -1])
        return {"loss": ce, "ce": ce}
    terms = {"ce": per_level_cross_entropy(level_logits, targets)}
    total = terms["ce"]
    if "tpkl" in config.name:
        terms["tpkl"] = tree_path_kl(level_logits, targets)
        total = total + config.lambda_tpkl * terms["tpkl"]
    if "hisce" in config.name:
        terms["hisce"] = hisce(level_logits, targets, level_parents, config.hisce_eps)
        total = total + config.lambda_hisce * terms["hisce"]
    return {"loss": total, **terms}
