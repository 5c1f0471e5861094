"""Poincaré-ball operations (curvature ``-c``, ``c > 0``) as pure tensor functions.

The ball is ``{x : c ||x||^2 < 1}``. Formulas (Ganea et al., NeurIPS 2018 "Hyperbolic Neural Networks" and
"Hyperbolic Entailment Cones", ICML 2018):

- Möbius addition ``x ⊕ y = ((1 + 2c<x,y> + c||y||²) x + (1 - c||x||²) y) / (1 + 2c<x,y> + c²||x||²||y||²)``
- exponential map at 0 ``exp0(v) = tanh(√c ||v||) v / (√c ||v||)``, logarithmic map ``log0(x) = artanh(√c ||x||) x / (√c ||x||)``
- distance ``d(x, y) = 2/√c · artanh(√c ||(-x) ⊕ y||)``
- entailment cone of ``x`` (for ``c = 1``, points rescaled by ``√c``): half-aperture ``ψ(x) = arcsin(K (1 - ||x||²) / ||x||)``
  and the angle ``Ξ(x, y)`` at ``x`` between the cone axis and ``y``; ``y`` is entailed by ``x`` when ``Ξ <= ψ``.

Points are kept a small margin inside the boundary (``project``) so float32 never reaches ``artanh(1)``.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor
EPS = 1e-5  # distance kept from the boundary, relative to the ball radius 1/√c
MIN_NORM = 1e-15


def _c(c: Tensor | float, like: Tensor) -> Tensor:
    return torch.as_tensor(c, dtype=like.dtype, device=like.device)


def project(x: Tensor, c: Tensor | float = 1.0) -> Tensor:
    """Pull points back inside the ball (norm at most ``(1 - EPS) / √c``)."""
    sqrt_c = _c(c, x).sqrt()
    norm = x.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    max_norm = (1 - EPS) / sqrt_c
    return torch.where(norm > max_norm, x / norm * max_norm, x)


def expmap0(v: Tensor, c: Tensor | float = 1.0) -> Tensor:
    """Tangent vector at the origin -> point on the ball."""
    sqrt_c = _c(c, v).sqrt()
    norm = v.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    return project(torch.tanh(sqrt_c * norm) * v / (sqrt_c * norm), c)


def logmap0(x: Tensor, c: Tensor | float = 1.0) -> Tensor:
    """Point on the ball -> tangent vector at the origin (inverse of :func:`expmap0`)."""
    sqrt_c = _c(c, x).sqrt()
    norm = x.norm(dim=-1, keepdim=True).clamp_min(MIN_NORM)
    scaled = (sqrt_c * norm).clamp(max=1 - EPS)
    return torch.atanh(scaled) * x / (sqrt_c * norm)


def mobius_add(x: Tensor, y: Tensor, c: Tensor | float = 1.0) -> Tensor:
    """Möbius addition ``x ⊕ y`` (broadcasts over leading dimensions)."""
    c = _c(c, x)
    xy = (x * y).sum(-1, keepdim=True)
    x2 = (x * x).sum(-1, keepdim=True)
    y2 = (y * y).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    den = 1 + 2 * c * xy + c**2 * x2 * y2
    return num / den.clamp_min(MIN_NORM)


def distance(x: Tensor, y: Tensor, c: Tensor | float = 1.0) -> Tensor:
    """Geodesic distance, broadcasting ``x`` and ``y`` over leading dimensions."""
    sqrt_c = _c(c, x).sqrt()
    diff = mobius_add(-x, y, c).norm(dim=-1)
    return 2 / sqrt_c * torch.atanh((sqrt_c * diff).clamp(max=1 - EPS))


def pairwise_distance(x: Tensor, y: Tensor, c: Tensor | float = 1.0) -> Tensor:
    """``(N, M)`` distances between ``x`` ``(N, D)`` and ``y`` ``(M, D)``, in closed form:
    ``d = 1/√c · arcosh(1 + 2c||x - y||² / ((1 - c||x||²)(1 - c||y||²)))`` (equal to :func:`distance`)."""
    c = _c(c, x)
    x2 = (x * x).sum(-1, keepdim=True)
    y2 = (y * y).sum(-1, keepdim=True).T
    sq = (x2 + y2 - 2 * x @ y.T).clamp_min(0)
    denom = ((1 - c * x2) * (1 - c * y2)).clamp_min(MIN_NORM)
    arg = 1 + 2 * c * sq / denom
    floor = 1 + (1e-7 if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-15)  # finite gradient at d = 0
    return torch.acosh(arg.clamp_min(floor)) / c.sqrt()


def cone_half_aperture(x: Tensor, c: Tensor | float = 1.0, k: float = 0.1) -> Tensor:
    """``ψ(x) = arcsin(K (1 - ||x̃||²) / ||x̃||)`` with ``x̃ = √c x``; defined for ``||x̃|| > ε_K``."""
    xs = x * _c(c, x).sqrt()
    norm = xs.norm(dim=-1).clamp_min(MIN_NORM)
    return torch.asin((k * (1 - norm**2) / norm).clamp(-1 + 1e-6, 1 - 1e-6))


def cone_angle(x: Tensor, y: Tensor, c: Tensor | float = 1.0) -> Tensor:
    """``Ξ(x, y)``: angle at ``x`` between the ray from the origin through ``x`` and the geodesic to ``y``."""
    sqrt_c = _c(c, x).sqrt()
    xs, ys = x * sqrt_c, y * sqrt_c
    xy = (xs * ys).sum(-1)
    x2 = (xs * xs).sum(-1)
    y2 = (ys * ys).sum(-1)
    num = xy * (1 + x2) - x2 * (1 + y2)
    den = x2.sqrt() * (xs - ys).norm(dim=-1) * (1 + x2 * y2 - 2 * xy).clamp_min(MIN_NORM).sqrt()
    return torch.acos((num / den.clamp_min(MIN_NORM)).clamp(-1 + 1e-6, 1 - 1e-6))


def entailment_loss(parent: Tensor, child: Tensor, c: Tensor | float = 1.0, k: float = 0.1) -> Tensor:
    """Mean ``max(0, Ξ(parent, child) - ψ(parent))``: zero when each child lies in its parent's cone."""
    return (cone_angle(parent, child, c) - cone_half_aperture(parent, c, k)).clamp_min(0).mean()
