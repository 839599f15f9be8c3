"""Accuracy/computation scatter plots of searches: a PNG (matplotlib) and an interactive HTML
page (plotly). Every trial is a point (a circle), and so is each of its threshold-sweep points
(a triangle: the trial's model at another gate threshold, ``TRIAL@T``); each search's front is
joined by a line and drawn larger; several searches are overlaid in distinct colours; the HTML
hover shows the trial's config."""
from __future__ import annotations

from pathlib import Path

from skipnet.fronts.analysis import SearchFront

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
_HOVER_KEYS = ("hrl.alpha", "hrl.lr", "sp.lr", "model.gate", "model.gate_threshold", "model.arch", "seed")
_MARKER = {False: "o", True: "^"}                      # a trial's own point, a threshold-sweep point
_PLOTLY_MARKER = {False: "circle", True: "triangle-up"}


def _colour(i: int) -> str:
    return _COLOURS[i % len(_COLOURS)]


def front_png(fronts: list[SearchFront], path: str | Path, title: str = "SkipNet searches") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for i, f in enumerate(fronts):
        c = _colour(i)
        for swept in (False, True):
            rest = [t for t, r in zip(f.trials, f.rank) if r != 0 and t.valid and t.swept == swept]
            ax.scatter([t.computation for t in rest], [t.accuracy for t in rest], s=18, color=c, alpha=0.35,
                       marker=_MARKER[swept])
        front = f.front
        ax.plot([t.computation for t in front], [t.accuracy for t in front], "-", color=c,
                label=f"{f.search_id} (HV {f.hypervolume_pct:.1f} %)")
        for swept in (False, True):
            on = [t for t in front if t.swept == swept]
            ax.scatter([t.computation for t in on], [t.accuracy for t in on], s=45, color=c, marker=_MARKER[swept],
                       label=f"{f.search_id}: trials at other gate thresholds" if swept and on else None)
        if f.knee is not None:
            ax.scatter([f.knee.computation], [f.knee.accuracy], s=160, facecolors="none", edgecolors=c, linewidths=2)
    ax.set_xlabel("computation (% of the plain ResNet's FLOPs)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title + "  (line: front, ring: knee, triangle: other gate threshold)", fontsize=9)
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
        for swept in (False, True):
            valid = [(t, int(r)) for t, r in zip(f.trials, f.rank) if t.valid and t.swept == swept]
            if swept and not valid:
                continue
            hover = ["<br>".join([f"trial {t.trial_id} ({f.search_id})", f"val top-1 {t.accuracy:.2f} %",
                                  f"computation {t.computation:.2f} %", f"rank {r}", f"steps {t.steps}",
                                  *[f"{k} = {t.config[k]}" for k in _HOVER_KEYS if k in t.config]])
                     for t, r in valid]
            fig.add_trace(go.Scatter(x=[t.computation for t, _ in valid], y=[t.accuracy for t, _ in valid],
                                     mode="markers", hovertext=hover, hoverinfo="text",
                                     name=f"{f.search_id}: {'at other gate thresholds' if swept else 'all trials'}",
                                     marker=dict(color=c, size=7, opacity=0.4, symbol=_PLOTLY_MARKER[swept])))
        front = f.front
        fig.add_trace(go.Scatter(x=[t.computation for t in front], y=[t.accuracy for t in front],
                                 mode="lines+markers", name=f"{f.search_id}: front (HV {f.hypervolume_pct:.1f} %)",
                                 hoverinfo="skip", line=dict(color=c),
                                 marker=dict(color=c, size=11, symbol=[_PLOTLY_MARKER[t.swept] for t in front])))
    fig.update_layout(title=title, xaxis_title="computation (% of the plain ResNet's FLOPs)",
                      yaxis_title="validation top-1 (%)", hovermode="closest", template="plotly_white")
    path = Path(path)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
