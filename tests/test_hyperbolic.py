"""Poincaré-ball maps: inverses, closed-form distances, boundary stability, entailment cones."""

import math

import pytest
import torch

from hierdemo.hyperbolic import (
    cone_angle,
    cone_half_aperture,
    distance,
    entailment_loss,
    expmap0,
    logmap0,
    mobius_add,
    pairwise_distance,
    project,
)


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_exp_and_log_invert_each_other(c):
    torch.manual_seed(0)
    v = torch.randn(64, 8, dtype=torch.float64) * 0.7
    assert torch.allclose(logmap0(expmap0(v, c), c), v, atol=1e-9)
    x = project(torch.randn(64, 8, dtype=torch.float64) * 0.2, c)
    assert torch.allclose(expmap0(logmap0(x, c), c), x, atol=1e-9)
    assert (expmap0(v, c).norm(dim=-1) < 1 / math.sqrt(c)).all()


def test_distance_closed_forms():
    # from the origin: d(0, x) = 2/√c artanh(√c |x|)
    x = torch.tensor([[0.3, 0.4]], dtype=torch.float64)  # |x| = 0.5
    o = torch.zeros(1, 2, dtype=torch.float64)
    assert distance(o, x, 1.0).item() == pytest.approx(2 * math.atanh(0.5))
    assert distance(o, x, 2.0).item() == pytest.approx(2 / math.sqrt(2) * math.atanh(math.sqrt(2) * 0.5))
    # two points on a line through 0 on opposite sides: d = d(0, a) + d(0, b)
    a, b = torch.tensor([[0.5, 0.0]], dtype=torch.float64), torch.tensor([[-0.2, 0.0]], dtype=torch.float64)
    assert distance(a, b).item() == pytest.approx(2 * math.atanh(0.5) + 2 * math.atanh(0.2))
    # the Möbius form and the arcosh form agree, and distances are symmetric with d(x, x) = 0
    torch.manual_seed(1)
    p = project(torch.randn(5, 3, dtype=torch.float64) * 0.4, 1.5)
    q = project(torch.randn(7, 3, dtype=torch.float64) * 0.4, 1.5)
    pair = pairwise_distance(p, q, 1.5)
    direct = distance(p.unsqueeze(1), q.unsqueeze(0), 1.5)
    assert torch.allclose(pair, direct, atol=1e-8)
    assert torch.allclose(pair, pairwise_distance(q, p, 1.5).T, atol=1e-8)
    assert torch.allclose(pairwise_distance(p, p, 1.5).diagonal(), torch.zeros(5, dtype=torch.float64), atol=1e-4)


def test_mobius_identity_and_inverse():
    x = torch.tensor([[0.1, -0.3, 0.2]])
    assert torch.allclose(mobius_add(x, torch.zeros_like(x)), x)
    assert torch.allclose(mobius_add(-x, x), torch.zeros_like(x), atol=1e-7)


def test_stable_near_the_boundary_in_float32():
    v = torch.tensor([[50.0, 0.0], [1e4, 1e4]], requires_grad=True)
    x = expmap0(v)
    assert (x.norm(dim=-1) < 1).all()
    d = pairwise_distance(x, torch.tensor([[0.0, 0.0], [-0.99999, 0.0]]))
    assert torch.isfinite(d).all()
    (d.sum() + logmap0(x).sum()).backward()
    assert torch.isfinite(v.grad).all()
    tiny = torch.zeros(1, 4, requires_grad=True)
    expmap0(tiny).sum().backward()
    assert torch.isfinite(tiny.grad).all()


def test_entailment_cones():
    parent = torch.tensor([[0.3, 0.0]])
    inside = torch.tensor([[0.8, 0.01]])  # further out along the parent's direction
    outside = torch.tensor([[0.0, 0.8]])  # off to the side
    assert cone_angle(parent, inside).item() < cone_half_aperture(parent).item()
    assert cone_angle(parent, outside).item() > cone_half_aperture(parent).item()
    assert entailment_loss(parent, inside).item() == 0.0
    assert entailment_loss(parent, outside).item() > 0.5
    # apertures shrink as the parent moves toward the boundary (more specific concepts)
    assert cone_half_aperture(torch.tensor([[0.2, 0.0]])) > cone_half_aperture(torch.tensor([[0.6, 0.0]]))
