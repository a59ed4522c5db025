"""Matplotlib figures rendered to PNG bytes, for asset metadata and reports."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def length_histogram(lengths: Sequence[int], title: str, cap: int | None = None) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if lengths:
        ax.hist(lengths, bins=min(50, max(5, len(set(lengths)))), color="#4C72B0")
    else:
        ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes)
    if cap:
        ax.axvline(cap, color="#C44E52", linestyle="--", label=f"cap {cap}")
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel("AST tokens per unit")
    ax.set_ylabel("units")
    return _png(fig)


def line_plot(series: dict[str, Sequence[tuple[float, float]]], title: str, xlabel: str, ylabel: str) -> bytes:
    """One line per named series of (x, y) points."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, points in series.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker=".", label=name)
    if not any(series.values()):
        ax.text(0.5, 0.5, "no points", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _png(fig)


def grouped_bars(values: dict[str, dict[str, float]], title: str, ylabel: str) -> bytes:
    """Bars per group (outer key) and series (inner key), e.g. a metric per evaluation set and model."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    groups = list(values)
    series = list(dict.fromkeys(s for g in values.values() for s in g))
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        xs = [j + i * width for j in range(len(groups))]
        ax.bar(xs, [values[g].get(name, 0.0) for g in groups], width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))], groups)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend()
    return _png(fig)
