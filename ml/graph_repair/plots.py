"""A picture of one abstract syntax graph: the tree top-down by depth, sibling edges dotted, dataflow edges as
red arcs."""

from __future__ import annotations

from ml.graph_repair.rows import graph_of
from ml.plots import _png, plt


def _layout(parents: list[int]) -> list[tuple[float, float]]:
    kids: list[list[int]] = [[] for _ in parents]
    for i, p in enumerate(parents):
        if p >= 0:
            kids[p].append(i)
    xy: list[tuple[float, float]] = [(0.0, 0.0)] * len(parents)
    next_x = [0.0]

    def place(i: int, depth: int) -> float:
        if not kids[i]:
            x = next_x[0]
            next_x[0] += 1
        else:
            xs = [place(c, depth + 1) for c in kids[i]]
            x = sum(xs) / len(xs)
        xy[i] = (x, -depth)
        return x

    place(0, 0)
    return xy


def sample_graph_png(row: dict) -> bytes:
    g = graph_of(row)
    xy = _layout(g.parents)
    width = max(6.0, min(24.0, 0.55 * max(x for x, _ in xy)))
    fig, ax = plt.subplots(figsize=(width, 0.9 * (1 - min(y for _, y in xy)) + 1))
    edges = g.edges()
    for a, b in edges["child"]:
        ax.plot([xy[a][0], xy[b][0]], [xy[a][1], xy[b][1]], color="#999999", lw=0.8, zorder=1)
    for a, b in edges["next_sibling"]:
        ax.plot([xy[a][0], xy[b][0]], [xy[a][1], xy[b][1]], color="#4C72B0", lw=0.6, ls=":", zorder=1)
    for a, b in edges["dataflow"]:
        ax.annotate("", xy=xy[b], xytext=xy[a], zorder=2,
                    arrowprops={"arrowstyle": "->", "color": "#C44E52", "lw": 0.8, "connectionstyle": "arc3,rad=0.3"})
    for i, label in enumerate(g.labels):
        kind = "#DD8452" if label.startswith("id:") else "#55A868" if label.startswith("lit:") else "#FFFFFF"
        ax.text(*xy[i], label.removeprefix("id:").removeprefix("lit:"), ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round,pad=0.2", "fc": kind, "ec": "#555555", "lw": 0.5}, zorder=3)
    ax.set_title(f"{row['name']}: {len(g)} nodes (grey: child, dotted: sibling, red: dataflow)", fontsize=9)
    ax.axis("off")
    return _png(fig)
