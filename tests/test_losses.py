"""Losses against hand-computed values on the tree A/{a1, a2}, B/{b1}."""

import math

import pytest
import torch

from hierdemo.losses import (
    LossConfig,
    flat_cross_entropy,
    hierarchical_loss,
    hisce,
    per_level_cross_entropy,
    sibling_smoothed_targets,
    tree_path_kl,
    tree_path_targets,
)

PARENTS = [torch.tensor([0, 0]), torch.tensor([0, 0, 1])]


def zeros(n=1):
    return [torch.zeros(n, 2), torch.zeros(n, 3)]


def test_tree_path_targets_put_one_over_L_on_path():
    q = tree_path_targets([2, 3], torch.tensor([[0, 0], [1, 2]]))
    assert torch.equal(q, torch.tensor([[0.5, 0, 0.5, 0, 0], [0, 0.5, 0, 0, 0.5]]))


def test_tpkl_uniform_logits():
    # one softmax over 5 zeros: p = 1/5 everywhere; q = 1/2 on A and a1 -> KL = 2 * 0.5 * log(0.5 / 0.2)
    loss = tree_path_kl(zeros(), torch.tensor([[0, 0]]))
    assert loss.item() == pytest.approx(math.log(2.5), abs=1e-6)


def test_tpkl_shares_one_softmax_across_levels():
    # raising a coarse logit lowers the probability of the fine true node too (levels compete)
    z_fine = torch.tensor([[3.0, 0.0, 0.0]])
    low = tree_path_kl([torch.tensor([[0.0, 0.0]]), z_fine], torch.tensor([[0, 0]]))
    high = tree_path_kl([torch.tensor([[0.0, 5.0]]), z_fine], torch.tensor([[0, 0]]))
    logp = torch.log_softmax(torch.tensor([0.0, 5.0, 3.0, 0.0, 0.0]), 0)
    assert high.item() == pytest.approx(0.5 * (math.log(0.5) - logp[0].item()) + 0.5 * (math.log(0.5) - logp[2].item()), abs=1e-5)
    assert high > low


def test_tpkl_soft_targets_are_l1_normalised():
    soft = [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]])]
    assert tree_path_kl(zeros(), torch.tensor([[0, 0]]), soft).item() == pytest.approx(math.log(2.5), abs=1e-6)


def test_sibling_smoothed_targets():
    t = sibling_smoothed_targets(torch.tensor([0, 2]), PARENTS[1], eps=0.1)
    # a1 has sibling a2; b1 is an only child and keeps all mass
    assert torch.allclose(t, torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.0, 1.0]]))
    top = sibling_smoothed_targets(torch.tensor([1]), PARENTS[0], eps=0.2)
    assert torch.allclose(top, torch.tensor([[0.2, 0.8]]))


def test_sibling_smoothing_splits_eps_over_several_siblings():
    parents = torch.tensor([0, 0, 0, 1])
    t = sibling_smoothed_targets(torch.tensor([1]), parents, eps=0.3)
    assert torch.allclose(t, torch.tensor([[0.15, 0.7, 0.15, 0.0]]))


def test_hisce_hand_computed():
    # uniform logits: CE = log 2 at the top, log 3 at the fine level, whatever the smoothing
    assert hisce(zeros(), torch.tensor([[0, 0]]), PARENTS, 0.1).item() == pytest.approx(math.log(6), abs=1e-6)
    # fine logits [2, 0, 0], true b1 (only child): all mass on b1 -> -log softmax_3 = log(e^2 + 2)
    z = [torch.zeros(1, 2), torch.tensor([[2.0, 0.0, 0.0]])]
    expected = math.log(2) + math.log(math.e**2 + 2)
    assert hisce(z, torch.tensor([[1, 2]]), PARENTS, 0.1).item() == pytest.approx(expected, abs=1e-6)
    # true a2 with sibling a1: 0.9 * -log p(a2) + 0.1 * -log p(a1)
    logp = torch.log_softmax(torch.tensor([2.0, 0.0, 0.0]), 0)
    expected = math.log(2) - 0.9 * logp[1].item() - 0.1 * logp[0].item()
    assert hisce(z, torch.tensor([[0, 1]]), PARENTS, 0.1).item() == pytest.approx(expected, abs=1e-6)


def test_hisce_per_level_eps_and_eps_zero_equals_summed_ce():
    torch.manual_seed(0)
    z = [torch.randn(4, 2), torch.randn(4, 3)]
    y = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2]])
    ce_sum = per_level_cross_entropy(z, y) * 2
    assert hisce(z, y, PARENTS, 0.0).item() == pytest.approx(ce_sum.item(), abs=1e-6)
    assert hisce(z, y, PARENTS, (0.0, 0.0)).item() == pytest.approx(ce_sum.item(), abs=1e-6)
    with pytest.raises(ValueError):
        hisce(z, y, PARENTS, (0.1,))


def test_flat_and_per_level_ce():
    z = [torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(2.0), 0.0, 0.0]])]
    y = torch.tensor([[0, 0]])
    assert flat_cross_entropy(z[1], y[:, 1]).item() == pytest.approx(math.log(2), abs=1e-6)  # p = 2/4
    assert per_level_cross_entropy(z, y).item() == pytest.approx((math.log(2) + math.log(2)) / 2, abs=1e-6)


@pytest.mark.parametrize("name, keys", [
    ("flat", {"loss", "ce"}), ("levels", {"loss", "ce"}), ("tpkl", {"loss", "ce", "tpkl"}),
    ("hisce", {"loss", "ce", "hisce"}), ("tpkl+hisce", {"loss", "ce", "tpkl", "hisce"}),
])
def test_hierarchical_loss_combines_terms(name, keys):
    z, y = zeros(2), torch.tensor([[0, 0], [1, 2]])
    cfg = LossConfig(name, lambda_tpkl=2.0, lambda_hisce=0.5)
    terms = hierarchical_loss(z, y, PARENTS, cfg)
    assert set(terms) == keys
    expected = terms["ce"] + 2.0 * terms.get("tpkl", 0) + 0.5 * terms.get("hisce", 0)
    assert terms["loss"].item() == pytest.approx(float(expected), abs=1e-6)


def test_losses_have_gradients_and_reject_unknown_names():
    z = [torch.zeros(1, 2, requires_grad=True), torch.zeros(1, 3, requires_grad=True)]
    hierarchical_loss(z, torch.tensor([[0, 1]]), PARENTS, LossConfig())["loss"].backward()
    assert z[1].grad[0, 1] < 0 < z[1].grad[0, 2]  # pushes the true node up, a non-sibling down
    with pytest.raises(ValueError, match="unknown loss"):
        LossConfig("focal")
