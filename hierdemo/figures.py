"""Plotly figures as plain data: the taxonomy tree with the predicted path, sibling probabilities, a sunburst, training
curves. Builders are pure and fast; :func:`to_plotly` gives a validated Figure, :func:`to_json` what the browser draws."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import orjson
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import make_colorscale, sequential

from .scoring import PathPrediction
from .taxonomy import ROOT, Taxonomy

PATH_COLOUR = "#d62728"
EDGE_COLOUR = "#b0b0b0"
SIBLING_COLOUR = "#7f9fbf"
# explicit stops: plotly.js reads the name "Blues" dark-to-light, plotly (Python) light-to-dark
COLOURSCALE = make_colorscale(sequential.Blues)


FigureSpec = dict[str, Any]
"""A Plotly figure as plain data, ``{"data": [trace dicts], "layout": {...}}``: what plotly.js draws."""


def to_plotly(spec: FigureSpec) -> go.Figure:
    """The spec as a validated ``plotly.graph_objects.Figure`` (raises ``ValueError`` on any invalid property):
    for notebooks, ``fig.show()`` and the tests. Building one costs 2-15 ms, so the app sends :func:`to_json`."""
    return go.Figure(spec)


@lru_cache(maxsize=1)
def _default_template() -> dict:
    return pio.templates[pio.templates.default].to_plotly_json()


def to_json(spec: FigureSpec) -> str:
    """The JSON plotly.js takes, with plotly's default template as ``go.Figure(spec).to_json()`` would add it, in
    ~0.1 ms instead of ~5 ms (no graph objects are built)."""
    layout = {"template": _default_template(), **spec.get("layout", {})}
    return orjson.dumps({"data": spec["data"], "layout": layout}, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def node_probabilities(taxonomy: Taxonomy, probs: Sequence[Sequence[float]]) -> dict[str, float]:
    """Each node's probability at its own depth (per-level probabilities of one sample, coarse to fine)."""
    out = {}
    for lvl, level in enumerate(taxonomy.levels):
        for j, node in enumerate(level):
            if taxonomy.depth(node) == lvl + 1:
                out[node] = float(probs[lvl][j])
    return out


def visible_nodes(taxonomy: Taxonomy, path: Sequence[str], collapse: bool) -> list[str]:
    """All nodes, or (collapsed) the predicted path and the siblings at each of its levels."""
    if not collapse:
        return list(taxonomy.nodes)
    keep = set()
    for node in dict.fromkeys(path):
        keep.update(taxonomy.children(taxonomy.parent(node)))
    return [n for n in taxonomy.nodes if n in keep]


def tidy_layout(taxonomy: Taxonomy, nodes: Sequence[str]) -> dict[str, tuple[float, float]]:
    """x = depth, y = leaf order (visible leaves evenly spaced, parents centred over their visible children)."""
    shown = set(nodes) | {ROOT}
    pos: dict[str, tuple[float, float]] = {}
    counter = [0]

    def place(node: str) -> float:
        kids = [c for c in taxonomy.children(node) if c in shown]
        y = sum(place(c) for c in kids) / len(kids) if kids else float(counter[0])
        if not kids:
            counter[0] += 1
        pos[node] = (float(taxonomy.depth(node)), -y)
        return y

    place(ROOT)
    return pos


def tree_figure(
    taxonomy: Taxonomy, prediction: PathPrediction, probs: Sequence[Sequence[float]], collapse: bool | None = None
) -> FigureSpec:
    """The taxonomy as a left-to-right tree: node colour and size by probability, the predicted path in bold red,
    hover with name and probability. Taxonomies over 40 nodes collapse to the path and its siblings by default."""
    collapse = len(taxonomy.nodes) > 40 if collapse is None else collapse
    path = list(dict.fromkeys(prediction.path))
    nodes = visible_nodes(taxonomy, path, collapse)
    pos = tidy_layout(taxonomy, nodes)
    p = node_probabilities(taxonomy, probs)
    on_path = set(path)
    edges: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}
    for node in nodes:
        up = taxonomy.parent(node)
        xs, ys = edges[node in on_path and (up == ROOT or up in on_path)]
        xs += [pos[up][0], pos[node][0], None]
        ys += [pos[up][1], pos[node][1], None]
    data = [
        {"type": "scatter", "x": xs, "y": ys, "mode": "lines", "hoverinfo": "skip", "showlegend": False,
         "line": {"color": PATH_COLOUR if highlight else EDGE_COLOUR, "width": 5 if highlight else 1.5},
         "name": "predicted path" if highlight else "tree"}
        for highlight, (xs, ys) in edges.items()
    ]
    ordered = [ROOT] + nodes
    data.append({
        "type": "scatter", "x": [pos[n][0] for n in ordered], "y": [pos[n][1] for n in ordered],
        "mode": "markers+text", "text": ["root"] + [taxonomy.name(n) for n in nodes], "textposition": "middle right",
        "customdata": [[1.0]] + [[p.get(n, 0.0)] for n in nodes],
        "hovertemplate": "%{text}<br>p = %{customdata[0]:.3f}<extra></extra>",
        "marker": {
            "size": [14] + [10 + 22 * p.get(n, 0.0) for n in nodes],
            "color": [1.0] + [p.get(n, 0.0) for n in nodes], "colorscale": COLOURSCALE, "cmin": 0, "cmax": 1,
            "line": {"color": [PATH_COLOUR] + [PATH_COLOUR if n in on_path else "#555" for n in nodes],
                     "width": [3] + [3 if n in on_path else 1 for n in nodes]},
            "colorbar": {"title": {"text": "p"}, "thickness": 10},
        },
        "showlegend": False, "name": "nodes",
    })
    layout = {
        "title": {"text": " → ".join(taxonomy.name(n) for n in path) + (" (path and siblings)" if collapse else "")},
        "xaxis": {"visible": False, "range": [-0.3, taxonomy.num_levels + 0.9]}, "yaxis": {"visible": False},
        "height": max(320, 30 * (1 + int(max(-pos[n][1] for n in nodes)))),
        "margin": {"l": 10, "r": 10, "t": 50, "b": 10}, "plot_bgcolor": "white",
    }
    return {"data": data, "layout": layout}


def stacked_domains(n: int, spacing: float) -> list[tuple[float, float]]:
    """Vertical ``(bottom, top)`` paper fractions of ``n`` equal panels stacked top to bottom."""
    height = (1.0 - spacing * (n - 1)) / n
    tops = [1.0 - k * (height + spacing) for k in range(n)]
    return [(max(0.0, top - height), top) for top in tops]


def sibling_figure(prediction: PathPrediction) -> FigureSpec:
    """One bar chart per level of the path: the conditional probabilities of the chosen node and its siblings."""
    levels = prediction.levels
    data, layout = [], {}
    for k, ((bottom, top), lv) in enumerate(zip(stacked_domains(len(levels), 0.25 / max(1, len(levels))), levels)):
        suffix = "" if k == 0 else str(k + 1)
        sibs = lv.siblings[:10][::-1]
        data.append({
            "type": "bar", "x": [s[2] for s in sibs], "y": [s[1] for s in sibs], "orientation": "h",
            "showlegend": False, "marker": {"color": [PATH_COLOUR if s[0] == lv.node else SIBLING_COLOUR for s in sibs]},
            "hovertemplate": "%{y}: %{x:.3f}<extra></extra>", "name": f"level {lv.level + 1}",
            "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
        })
        layout[f"xaxis{suffix}"] = {"domain": [0.0, 1.0], "range": [0, 1], "anchor": f"y{suffix}"}
        layout[f"yaxis{suffix}"] = {"domain": [bottom, top], "anchor": f"x{suffix}"}
        layout.setdefault("annotations", []).append({
            "text": f"level {lv.level + 1}", "x": 0.5, "y": top, "xref": "paper", "yref": "paper",
            "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 16},
        })
    layout.update(height=140 + 110 * len(levels), margin={"l": 10, "r": 10, "t": 40, "b": 10},
                  title={"text": "probability among siblings (given the parent)"})
    return {"data": data, "layout": layout}


def sunburst_figure(taxonomy: Taxonomy, leaf_probs: Sequence[float]) -> FigureSpec:
    """Sunburst of the leaf-marginal probabilities (each node = sum of its leaves)."""
    mass = {leaf: float(p) for leaf, p in zip(taxonomy.leaves, leaf_probs)}
    for node in reversed(taxonomy.nodes):
        if taxonomy.children(node):
            mass[node] = sum(mass[c] for c in taxonomy.children(node))
    nodes = taxonomy.nodes
    data = [{
        "type": "sunburst", "ids": nodes, "labels": [taxonomy.name(n) for n in nodes],
        "parents": [taxonomy.parent(n) for n in nodes], "values": [mass[n] for n in nodes], "branchvalues": "total",
        "hovertemplate": "%{label}: %{value:.3f}<extra></extra>",
    }]
    layout = {"margin": {"l": 0, "r": 0, "t": 30, "b": 0}, "height": 420, "title": {"text": "leaf-marginal probabilities"}}
    return {"data": data, "layout": layout}


def taxonomy_figure(taxonomy: Taxonomy, counts: dict[str, int] | None = None) -> FigureSpec:
    """The tree alone (e.g. parsed from an upload), leaves labelled with their image counts."""
    nodes = list(taxonomy.nodes)
    pos = tidy_layout(taxonomy, nodes)
    shown = [ROOT] + nodes
    xs, ys = [], []
    for node in nodes:
        a, b = pos[taxonomy.parent(node)], pos[node]
        xs += [a[0], b[0], None]
        ys += [a[1], b[1], None]
    labels = ["root"] + [taxonomy.name(n) + (f" ({counts[n]})" if counts and n in counts else "") for n in nodes]
    data = [
        {"type": "scatter", "x": xs, "y": ys, "mode": "lines", "line": {"color": EDGE_COLOUR}, "hoverinfo": "skip",
         "showlegend": False},
        {"type": "scatter", "x": [pos[n][0] for n in shown], "y": [pos[n][1] for n in shown], "mode": "markers+text",
         "text": labels, "textposition": "middle right", "marker": {"size": 10, "color": "#1f77b4"}, "showlegend": False,
         "hovertemplate": "%{text}<extra></extra>"},
    ]
    layout = {
        "xaxis": {"visible": False, "range": [-0.3, taxonomy.num_levels + 1.2]}, "yaxis": {"visible": False},
        "height": max(260, 26 * len(taxonomy.leaves)), "margin": {"l": 10, "r": 10, "t": 30, "b": 10},
        "plot_bgcolor": "white", "title": {"text": f"{len(taxonomy.leaves)} classes, {taxonomy.num_levels} levels"},
    }
    return {"data": data, "layout": layout}


def training_figure(steps: Sequence[tuple[int, float]], epochs: Sequence[dict]) -> FigureSpec:
    """Training loss per step (left), and validation FPA and TICE per epoch (right)."""
    ep = [e["epoch"] for e in epochs]
    data = [
        {"type": "scatter", "x": [s for s, _ in steps], "y": [v for _, v in steps], "name": "loss",
         "mode": "lines+markers" if len(steps) < 50 else "lines", "xaxis": "x", "yaxis": "y"},
        {"type": "scatter", "x": ep, "y": [e["fpa"] for e in epochs], "mode": "lines+markers", "name": "FPA",
         "xaxis": "x2", "yaxis": "y2"},
        {"type": "scatter", "x": ep, "y": [e["tice"] for e in epochs], "mode": "lines+markers", "name": "TICE",
         "xaxis": "x2", "yaxis": "y2"},
    ]
    panels = (("training loss", (0.0, 0.45)), ("validation", (0.55, 1.0)))
    layout = {
        "xaxis": {"domain": list(panels[0][1]), "anchor": "y", "title": {"text": "step"}},
        "yaxis": {"anchor": "x"},
        "xaxis2": {"domain": list(panels[1][1]), "anchor": "y2", "title": {"text": "epoch"}},
        "yaxis2": {"anchor": "x2", "range": [0, 1]},
        "annotations": [{"text": title, "x": sum(dom) / 2, "y": 1.0, "xref": "paper", "yref": "paper",
                         "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 16}}
                        for title, dom in panels],
        "height": 320, "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
    }
    return {"data": data, "layout": layout}
