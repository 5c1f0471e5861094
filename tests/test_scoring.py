"""Decoding modes, sibling probabilities, confident depth and the text-embedding cache."""


import pytest
import torch

from hierdemo.scoring import (
    TextEmbeddingCache,
    decode,
    explain,
    leaf_marginals,
    level_logits,
    node_prompts,
    sibling_probabilities,
)


def logits_for(p0, p1):
    return [torch.log(torch.tensor([p0])), torch.log(torch.tensor([p1]))]


def test_independent_can_be_inconsistent_consistent_cannot(small_tree):
    s = small_tree.structure
    z = logits_for([0.6, 0.4], [0.1, 0.1, 0.8])  # top says A, fine says b1
    pred, _ = decode(z, s, "independent")
    assert pred.tolist() == [[0, 2]]
    pred, _ = decode(z, s, "consistent")
    # path scores: A/a1 = log .6 + log .1, A/a2 same, B/b1 = log .4 + log .8 -> B/b1
    assert pred.tolist() == [[1, 2]]


def test_leaf_marginal_sums_leaves_and_goes_top_down(small_tree):
    s = small_tree.structure
    z = logits_for([0.5, 0.5], [0.35, 0.35, 0.3])
    probs = leaf_marginals(z, s)
    assert torch.allclose(probs[0], torch.tensor([[0.7, 0.3]]))
    pred, _ = decode(z, s, "leaf-marginal")
    assert pred.tolist() == [[0, 0]]  # A (0.7), then the better child of A
    with pytest.raises(ValueError):
        decode(z, s, "beam")


def test_sibling_probabilities_are_conditional(small_tree):
    group, cond = sibling_probabilities(torch.tensor([0.2, 0.2, 0.6]), small_tree.structure.parents[1], 0)
    assert group == [0, 1] and torch.allclose(cond, torch.tensor([0.5, 0.5]))


def test_explain_names_siblings_and_confident_depth(small_tree):
    s = small_tree.structure
    z = logits_for([0.9, 0.1], [0.3, 0.6, 0.1])
    pred, probs = decode(z, s, "independent")
    out = explain(small_tree, pred[0], [p[0] for p in probs], "independent", threshold=0.5)
    assert out.path == ["A", "A/a2"] and out.consistent
    assert out.confident_depth == 2
    assert [n for n, _, _ in out.levels[1].siblings] == ["A/a2", "A/a1"]
    assert sum(p for _, _, p in out.levels[1].siblings) == pytest.approx(1.0)
    out = explain(small_tree, pred[0], [p[0] for p in probs], "independent", threshold=0.7)
    assert out.confident_depth == 1 and out.confident_path == ["A"]


def test_level_logits_select_node_columns(small_tree):
    img = torch.tensor([[1.0, 0.0]])
    nodes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # A a1 a2 B b1
    z = level_logits(img, nodes, small_tree.structure, 10.0)
    assert z[0].tolist() == [[10.0, 0.0]] and z[1].tolist() == [[0.0, 10.0, -10.0]]


def test_hierarchical_prompts_fall_back_at_top(small_tree):
    prompts = node_prompts(small_tree, ("a photo of a {name}, a type of {parent}.",))
    assert prompts[0] == ["a photo of a A."]
    assert prompts[1] == ["a photo of a a1, a type of A."]


def test_text_cache_memory_and_disk(tiny_backbone, small_tree, tmp_path):
    cache = TextEmbeddingCache(directory=tmp_path / "new" / "dir")  # created on demand
    a = cache.get(tiny_backbone, small_tree, ("a photo of a {name}.",))
    b = cache.get(tiny_backbone, small_tree, ("a photo of a {name}.",))
    assert a is b and (cache.hits, cache.misses) == (1, 1)
    assert a.shape == (5, 32) and torch.allclose(a.norm(dim=1), torch.ones(5), atol=1e-5)
    fresh = TextEmbeddingCache(directory=tmp_path / "new" / "dir")
    c = fresh.get(tiny_backbone, small_tree, ("a photo of a {name}.",))
    assert torch.allclose(a, c) and (fresh.hits, fresh.misses) == (1, 0)
    other = cache.get(tiny_backbone, small_tree, ("a photo of a {name}.",), adapter_key="some-adapter")
    assert cache.misses == 2 and other is not a
