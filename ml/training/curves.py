"""Training curves as a PNG (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Iterable


def plot_curves(curve: Iterable[tuple[int, str, float]], title: str = "training") -> bytes:
    """PNG bytes of ``loss`` and ``eval_loss`` versus step from ``(step, metric, value)`` triples."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    series: dict[str, list[tuple[int, float]]] = {"loss": [], "eval_loss": []}
    for step, metric, value in curve:
        if metric in series:
            series[metric].append((int(step), float(value)))
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for name, style in (("loss", "-"), ("eval_loss", "o-")):
        pts = sorted(series[name])
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(series.values()):
        ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
