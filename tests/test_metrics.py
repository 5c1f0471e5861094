"""Metrics against hand-computed values on the tree A/{a1, a2}, B/{b1}."""

import pytest
import torch

from hierdemo.metrics import (
    full_path_accuracy,
    hierarchical_prf,
    hierarchical_report,
    inconsistent_paths,
    level_accuracy,
    tree_inconsistency_error,
    weighted_average_precision,
)

PRED = torch.tensor([[0, 0], [0, 2], [1, 2], [1, 1]])
TRUE = torch.tensor([[0, 0], [0, 1], [1, 2], [0, 0]])


def test_level_accuracy_and_fpa(small_tree):
    assert level_accuracy(PRED, TRUE).tolist() == [0.75, 0.5]
    assert full_path_accuracy(PRED, TRUE).item() == 0.5


def test_tice_counts_invalid_paths(small_tree):
    parents = small_tree.structure.parents
    # (A, b1) and (B, a2) are not paths of the tree
    assert inconsistent_paths(PRED, parents).tolist() == [False, True, False, True]
    assert tree_inconsistency_error(PRED, parents).item() == 0.5


def test_wap_weights_levels_by_class_count():
    # N = (2, 3): 2/5 * 0.75 + 3/5 * 0.5
    assert weighted_average_precision(torch.tensor([0.75, 0.5]), [2, 3]).item() == pytest.approx(0.6)


def test_hierarchical_prf(small_tree):
    s = small_tree.structure
    # |A∩B| per row: 2, 1, 2, 0 -> 5; |A| = |B| = 8
    h_p, h_r, h_f = hierarchical_prf(PRED, TRUE, s.node_index, s.num_nodes)
    assert (h_p.item(), h_r.item(), h_f.item()) == pytest.approx((0.625, 0.625, 0.625))


def test_hierarchical_prf_ragged_counts_carried_leaf_once():
    from hierdemo.taxonomy import Taxonomy

    tree = Taxonomy.from_nested({"A": {"a1": {}, "a2": {}}, "c": {}})
    s = tree.structure
    pred = torch.tensor([[1, 2]])  # c, c -> node set {c}
    true = torch.tensor([[0, 0]])  # A, a1
    h_p, h_r, _ = hierarchical_prf(pred, true, s.node_index, s.num_nodes)
    assert (h_p.item(), h_r.item()) == (0.0, 0.0)
    h_p, h_r, h_f = hierarchical_prf(torch.tensor([[0, 1]]), true, s.node_index, s.num_nodes)
    assert (h_p.item(), h_r.item(), h_f.item()) == pytest.approx((0.5, 0.5, 0.5))


def test_report_keys_and_perfect_prediction(small_tree):
    s = small_tree.structure
    report = hierarchical_report(TRUE, TRUE, s.parents, s.node_index, s.num_nodes)
    assert report["fpa"] == report["wap"] == report["hf1"] == 1.0
    assert report["tice"] == 0.0 and report["level_acc"] == [1.0, 1.0] and report["n_images"] == 4
