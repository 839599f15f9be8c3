"""Accuracy/computation scatter plots of searches: a PNG (matplotlib) and an interactive HTML
page (plotly). Every trial is a point; each search's front is joined by a line and drawn larger;
several searches are overlaid in distinct colours; the HTML hover shows the trial's config."""
from __future__ import annotations

from pathlib import Path

from skipnet.fronts import SearchFront

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
_HOVER_KEYS = ("hrl.alpha", "hrl.lr", "sp.lr", "model.gate", "model.arch", "seed")


def _colour(i: int) -> str:
    return _COLOURS[i % len(_COLOURS)]


def front_png(fronts: list[SearchFront], path: str | Path, title: str = "SkipNet searches") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for i, f in enumerate(fronts):
        c = _colour(i)
        rest = [t for t, r in zip(f.trials, f.rank) if r != 0 and t.valid]
        ax.scatter([t.computation for t in rest], [t.accuracy for t in rest], s=18, color=c, alpha=0.35)
        front = f.front
        ax.plot([t.computation for t in front], [t.accuracy for t in front], "-o", color=c, markersize=7,
                label=f"{f.search_id} (HV {f.hypervolume_pct:.1f} %)")
        if f.knee is not None:
            ax.scatter([f.knee.computation], [f.knee.accuracy], s=160, facecolors="none", edgecolors=c, linewidths=2)
    ax.set_xlabel("computation (% of the plain ResNet's FLOPs)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title + "  (line: front, ring: knee)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def front_html(fronts: list[SearchFront], path: str | Path, title: str = "SkipNet searches") -> Path:
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, f in enumerate(fronts):
        c = _colour(i)
        valid = [(t, int(r)) for t, r in zip(f.trials, f.rank) if t.valid]
        hover = ["<br>".join([f"trial {t.trial_id} ({f.search_id})", f"val top-1 {t.accuracy:.2f} %",
                              f"computation {t.computation:.2f} %", f"rank {r}", f"steps {t.steps}",
                              *[f"{k} = {t.config[k]}" for k in _HOVER_KEYS if k in t.config]])
                 for t, r in valid]
        fig.add_trace(go.Scatter(x=[t.computation for t, _ in valid], y=[t.accuracy for t, _ in valid],
                                 mode="markers", name=f"{f.search_id}: all trials", hovertext=hover,
                                 hoverinfo="text", marker=dict(color=c, size=7, opacity=0.4)))
        front = f.front
        fig.add_trace(go.Scatter(x=[t.computation for t in front], y=[t.accuracy for t in front],
                                 mode="lines+markers", name=f"{f.search_id}: front (HV {f.hypervolume_pct:.1f} %)",
                                 hoverinfo="skip", marker=dict(color=c, size=11), line=dict(color=c)))
    fig.update_layout(title=title, xaxis_title="computation (% of the plain ResNet's FLOPs)",
                      yaxis_title="validation top-1 (%)", hovermode="closest", template="plotly_white")
    path = Path(path)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
