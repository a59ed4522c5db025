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
