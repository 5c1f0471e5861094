"""Hierarchical classification metrics as pure tensor functions.

``pred`` and ``target`` are ``(N, L)`` long tensors of level-class indices, coarse to fine (see
:mod:`hierdemo.taxonomy`). ``pred`` is usually the independent per-level argmax, so it may not be a valid path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def level_accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """Top-1 accuracy at each level: ``Acc_l = 1/N sum_n [pred_nl = y_nl]``; shape ``(L,)``."""
    return (pred == target).float().mean(dim=0)


def full_path_accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """FPA: share of samples right at every level, ``1/N sum_n prod_l [pred_nl = y_nl]``."""
    return (pred == target).all(dim=1).float().mean()


def weighted_average_precision(level_acc: Tensor, classes_per_level: Sequence[int]) -> Tensor:
    """wAP (Chang et al., CVPR 2021): ``sum_l N_l / (sum_k N_k) * Acc_l`` with ``N_l`` classes at level ``l``
    (carried-down shallow leaves count at every level they appear)."""
    weights = torch.tensor(classes_per_level, dtype=level_acc.dtype, device=level_acc.device)
    return (weights / weights.sum() * level_acc).sum()


def inconsistent_paths(pred: Tensor, level_parents: Sequence[Tensor]) -> Tensor:
    """Boolean ``(N,)``: the per-level predictions do not form a root-to-leaf path, i.e. for some ``l >= 1`` the
    level-``l`` prediction's parent is not the level-``l-1`` prediction."""
    bad = torch.zeros(pred.shape[0], dtype=torch.bool, device=pred.device)
    for lvl in range(1, pred.shape[1]):
        bad |= level_parents[lvl].to(pred.device)[pred[:, lvl]] != pred[:, lvl - 1]
    return bad


def tree_inconsistency_error(pred: Tensor, level_parents: Sequence[Tensor]) -> Tensor:
    """TICE: share of samples whose per-level predictions are not a valid tree path."""
    return inconsistent_paths(pred, level_parents).float().mean()


def _node_sets(labels: Tensor, node_index: Sequence[Tensor], num_nodes: int) -> Tensor:
    """``(N, num_nodes)`` 0/1 membership of the distinct global nodes named by a row of level labels."""
    ids = torch.stack([node_index[lvl].to(labels.device)[labels[:, lvl]] for lvl in range(labels.shape[1])], dim=1)
    return torch.zeros(labels.shape[0], num_nodes, device=labels.device).scatter_(1, ids, 1.0)


def hierarchical_prf(
    pred: Tensor, target: Tensor, node_index: Sequence[Tensor], num_nodes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Micro hierarchical precision, recall and F1 (Kiritchenko et al.; as in hiclass ``metrics.py``).

    With ``A_n`` the set of distinct nodes predicted for sample ``n`` (a path includes its ancestors) and ``B_n``
    the true path's nodes: ``hP = sum|A∩B| / sum|A|``, ``hR = sum|A∩B| / sum|B|``, ``hF = 2 hP hR / (hP + hR)``.
    Nodes are compared by their unique path id, so equal display names under two parents differ.
    """
    a = _node_sets(pred, node_index, num_nodes)
    b = _node_sets(target, node_index, num_nodes)
    inter = (a * b).sum()
    h_p = inter / a.sum()
    h_r = inter / b.sum()
    h_f = torch.where(h_p + h_r > 0, 2 * h_p * h_r / (h_p + h_r), torch.zeros_like(h_p))
    return h_p, h_r, h_f


def hierarchical_report(
    pred: Tensor,
    target: Tensor,
    level_parents: Sequence[Tensor],
    node_index: Sequence[Tensor],
    num_nodes: int,
) -> dict[str, float | list[float] | int]:
    """All metrics above as plain numbers (the CLI's ``--json`` keys)."""
    acc = level_accuracy(pred, target)
    h_p, h_r, h_f = hierarchical_prf(pred, target, node_index, num_nodes)
    return {
        "fpa": full_path_accuracy(pred, target).item(),
        "tice": tree_inconsistency_error(pred, level_parents).item(),
        "wap": weighted_average_precision(acc, [len(p) for p in level_parents]).item(),
        "level_acc": acc.tolist(),
        "hp": h_p.item(),
        "hr": h_r.item(),
        "hf1": h_f.item(),
        "n_images": int(pred.shape[0]),
    }
