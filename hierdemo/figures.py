"""Plotly figures: the taxonomy tree with the predicted path, sibling probabilities, a sunburst, training curves."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .scoring import PathPrediction
from .taxonomy import ROOT, Taxonomy

PATH_COLOUR = "#d62728"
EDGE_COLOUR = "#b0b0b0"
COLOURSCALE = "Blues"


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


def tree_figure(taxonomy: Taxonomy, prediction: PathPrediction, probs: Sequence[Sequence[float]], collapse: bool | None = None) -> go.Figure:
    """The taxonomy as a left-to-right tree: node colour and size by probability, the predicted path in bold red,
    hover with name and probability. Taxonomies over 40 nodes collapse to the path and its siblings by default."""
    collapse = len(taxonomy.nodes) > 40 if collapse is None else collapse
    path = list(dict.fromkeys(prediction.path))
    nodes = visible_nodes(taxonomy, path, collapse)
    pos = tidy_layout(taxonomy, nodes)
    p = node_probabilities(taxonomy, probs)
    on_path = set(path)
    fig = go.Figure()
    for highlight in (False, True):
        xs, ys = [], []
        for node in nodes:
            up = taxonomy.parent(node)
            if (node in on_path and (up == ROOT or up in on_path)) != highlight:
                continue
            for a, b in ((pos[up], pos[node]),):
                xs += [a[0], b[0], None]
                ys += [a[1], b[1], None]
        fig.add_trace(go.Scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
            line={"color": PATH_COLOUR if highlight else EDGE_COLOUR, "width": 5 if highlight else 1.5},
            name="predicted path" if highlight else "tree",
        ))
    ordered = [ROOT] + nodes
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in ordered], y=[pos[n][1] for n in ordered], mode="markers+text",
        text=["root"] + [taxonomy.name(n) for n in nodes], textposition="middle right",
        customdata=[[1.0]] + [[p.get(n, 0.0)] for n in nodes],
        hovertemplate="%{text}<br>p = %{customdata[0]:.3f}<extra></extra>",
        marker={
            "size": [14] + [10 + 22 * p.get(n, 0.0) for n in nodes],
            "color": [1.0] + [p.get(n, 0.0) for n in nodes], "colorscale": COLOURSCALE, "cmin": 0, "cmax": 1,
            "line": {"color": [PATH_COLOUR] + [PATH_COLOUR if n in on_path else "#555" for n in nodes],
                     "width": [3] + [3 if n in on_path else 1 for n in nodes]},
            "colorbar": {"title": "p", "thickness": 10},
        },
        showlegend=False, name="nodes",
    ))
    fig.update_layout(
        title=" → ".join(taxonomy.name(n) for n in path) + (" (path and siblings)" if collapse else ""),
        xaxis={"visible": False, "range": [-0.3, taxonomy.num_levels + 0.9]}, yaxis={"visible": False},
        height=max(320, 30 * (1 + int(max(-pos[n][1] for n in nodes)))),
        margin={"l": 10, "r": 10, "t": 50, "b": 10}, plot_bgcolor="white",
    )
    return fig


def sibling_figure(prediction: PathPrediction) -> go.Figure:
    """One bar chart per level of the path: the conditional probabilities of the chosen node and its siblings."""
    n = len(prediction.levels)
    fig = make_subplots(rows=n, cols=1, subplot_titles=[f"level {lv.level + 1}" for lv in prediction.levels],
                        vertical_spacing=0.25 / max(1, n))
    for row, lv in enumerate(prediction.levels, start=1):
        sibs = lv.siblings[:10][::-1]
        fig.add_trace(go.Bar(
            x=[s[2] for s in sibs], y=[s[1] for s in sibs], orientation="h", showlegend=False,
            marker_color=[PATH_COLOUR if s[0] == lv.node else "#7f9fbf" for s in sibs],
            hovertemplate="%{y}: %{x:.3f}<extra></extra>", name=f"level {lv.level + 1}",
        ), row=row, col=1)
        fig.update_xaxes(range=[0, 1], row=row, col=1)
    fig.update_layout(height=140 + 110 * n, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title="probability among siblings (given the parent)")
    return fig


def sunburst_figure(taxonomy: Taxonomy, leaf_probs: Sequence[float]) -> go.Figure:
    """Sunburst of the leaf-marginal probabilities (each node = sum of its leaves)."""
    mass = {leaf: float(p) for leaf, p in zip(taxonomy.leaves, leaf_probs)}
    for node in reversed(taxonomy.nodes):
        if taxonomy.children(node):
            mass[node] = sum(mass[c] for c in taxonomy.children(node))
    nodes = taxonomy.nodes
    fig = go.Figure(go.Sunburst(
        ids=nodes, labels=[taxonomy.name(n) for n in nodes], parents=[taxonomy.parent(n) for n in nodes],
        values=[mass[n] for n in nodes], branchvalues="total", hovertemplate="%{label}: %{value:.3f}<extra></extra>",
    ))
    fig.update_layout(margin={"l": 0, "r": 0, "t": 30, "b": 0}, height=420, title="leaf-marginal probabilities")
    return fig


def taxonomy_figure(taxonomy: Taxonomy, counts: dict[str, int] | None = None) -> go.Figure:
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
    fig = go.Figure([
        go.Scatter(x=xs, y=ys, mode="lines", line={"color": EDGE_COLOUR}, hoverinfo="skip", showlegend=False),
        go.Scatter(x=[pos[n][0] for n in shown], y=[pos[n][1] for n in shown], mode="markers+text", text=labels,
                   textposition="middle right", marker={"size": 10, "color": "#1f77b4"}, showlegend=False,
                   hovertemplate="%{text}<extra></extra>"),
    ])
    fig.update_layout(xaxis={"visible": False, "range": [-0.3, taxonomy.num_levels + 1.2]}, yaxis={"visible": False},
                      height=max(260, 26 * len(taxonomy.leaves)), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      plot_bgcolor="white", title=f"{len(taxonomy.leaves)} classes, {taxonomy.num_levels} levels")
    return fig


def training_figure(steps: Sequence[tuple[int, float]], epochs: Sequence[dict]) -> go.Figure:
    """Training loss per step, and validation FPA and TICE per epoch."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "validation"))
    fig.add_trace(go.Scatter(x=[s for s, _ in steps], y=[v for _, v in steps], mode="lines+markers" if len(steps) < 50 else "lines",
                             name="loss"), row=1, col=1)
    ep = [e["epoch"] for e in epochs]
    fig.add_trace(go.Scatter(x=ep, y=[e["fpa"] for e in epochs], mode="lines+markers", name="FPA"), row=1, col=2)
    fig.add_trace(go.Scatter(x=ep, y=[e["tice"] for e in epochs], mode="lines+markers", name="TICE"), row=1, col=2)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=1, col=2)
    fig.update_yaxes(range=[0, 1], row=1, col=2)
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig
