"""Figure builders: the highlighted path is the predicted one; sibling probabilities sum to 1 per group; every spec is
valid Plotly (``to_plotly`` validates) and ``to_json`` sends what plotly would."""

import itertools
import json

import pytest
import torch

from hierdemo.figures import (
    node_probabilities,
    sibling_figure,
    sunburst_figure,
    taxonomy_figure,
    to_json,
    to_plotly,
    training_figure,
    tree_figure,
)
from hierdemo.scoring import decode, explain
from hierdemo.taxonomy import Taxonomy


@pytest.fixture
def prediction():
    tree = Taxonomy.from_nested({"animal": {"bird": ["owl", "flamingo"], "fish": ["cod"]}, "plant": ["tree", "grass"]})
    logits = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, 0.0, 1.0, 0.0]]), torch.tensor([[0.2, 1.5, 0.1, 0.3, 0.0]])]
    pred, probs = decode(logits, tree.structure, "consistent")
    return tree, explain(tree, pred[0], [p[0] for p in probs], "consistent"), [p[0].tolist() for p in probs]


def _highlighted_segments(fig):
    path_trace = next(t for t in fig.data if t.name == "predicted path")
    xs, ys = list(path_trace.x), list(path_trace.y)
    return [((xs[i], ys[i]), (xs[i + 1], ys[i + 1])) for i in range(0, len(xs), 3)]


def test_tree_highlights_exactly_the_predicted_path(prediction):
    tree, pred, probs = prediction
    assert pred.path == ["animal", "animal/bird", "animal/bird/flamingo"]
    fig = to_plotly(tree_figure(tree, pred, probs, collapse=False))
    nodes = next(t for t in fig.data if t.name == "nodes")
    pos = {label: (x, y) for label, x, y in zip(nodes.text, nodes.x, nodes.y)}
    expected = [(pos["root"], pos["animal"]), (pos["animal"], pos["bird"]), (pos["bird"], pos["flamingo"])]
    assert sorted(_highlighted_segments(fig)) == sorted(expected)
    # node colour is its probability at its level, and the hover shows it
    p = node_probabilities(tree, probs)
    assert list(nodes.marker.color[1:]) == pytest.approx([p[n] for n in tree.nodes])
    assert "flamingo" in fig.layout.title.text


def test_tree_collapses_to_path_and_siblings(prediction):
    tree, pred, probs = prediction
    fig = to_plotly(tree_figure(tree, pred, probs, collapse=True))
    labels = set(next(t for t in fig.data if t.name == "nodes").text)
    assert labels == {"root", "animal", "plant", "bird", "fish", "owl", "flamingo"}


def test_sibling_bars_sum_to_one_per_group(prediction):
    _, pred, _ = prediction
    fig = to_plotly(sibling_figure(pred))
    assert len(fig.data) == 3
    for bars, level in zip(fig.data, pred.levels):
        assert sum(bars.x) == pytest.approx(1.0)
        highlighted = [y for y, c in zip(bars.y, bars.marker.color) if c == "#d62728"]
        assert highlighted == [level.name]


def test_sunburst_sums_leaves(prediction):
    tree, _, _ = prediction
    fig = to_plotly(sunburst_figure(tree, [0.1, 0.2, 0.3, 0.25, 0.15]))
    values = dict(zip(fig.data[0].ids, fig.data[0].values))
    assert values["animal"] == pytest.approx(0.6) and values["animal/bird"] == pytest.approx(0.3)


def test_taxonomy_and_training_figures(prediction):
    tree, _, _ = prediction
    fig = to_plotly(taxonomy_figure(tree, {"plant/tree": 7}))
    assert "tree (7)" in fig.data[1].text
    fig = to_plotly(training_figure([(1, 2.0), (2, 1.5)], [{"epoch": 1, "fpa": 0.4, "tice": 0.2}]))
    assert list(fig.data[0].y) == [2.0, 1.5] and list(fig.data[1].y) == [0.4]


def test_every_spec_is_valid_plotly_and_serialises_like_plotly(prediction):
    tree, pred, probs = prediction
    specs = [
        tree_figure(tree, pred, probs, collapse=False), tree_figure(tree, pred, probs, collapse=True),
        sibling_figure(pred), sunburst_figure(tree, [0.1, 0.2, 0.3, 0.25, 0.15]), taxonomy_figure(tree, {"plant/tree": 7}),
        training_figure([(1, 2.0), (2, 1.5)], [{"epoch": 1, "fpa": 0.4, "tice": 0.2}]),
    ]
    for spec in specs:
        validated = json.loads(to_plotly(spec).to_json())  # to_plotly raises ValueError on an invalid property
        assert json.loads(to_json(spec)) == validated  # the browser draws exactly what plotly would send


def test_sibling_panels_stack_without_overlap(prediction):
    _, pred, _ = prediction
    layout = sibling_figure(pred)["layout"]
    domains = [tuple(layout[f"yaxis{'' if k == 0 else k + 1}"]["domain"]) for k in range(3)]
    assert domains[0][1] == pytest.approx(1.0) and domains[-1][0] == pytest.approx(0.0)
    assert all(lower[1] < upper[0] for upper, lower in itertools.pairwise(domains))
