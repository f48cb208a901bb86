"""Figures: pure functions from results to ``plotly.graph_objects.Figure``. Introduced in chapter 1.

No function here displays anything; notebooks display the returned figure, widgets redraw it, and
a script can ``fig.write_html(...)``. Numbers are rounded before they enter a figure so that the
JSON a notebook stores is stable from run to run.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .tasks import Batch, TokenLayout

TEMPLATE = "plotly_white"
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]

# token roles in token_figure, in colour order
ROLES = ["filler", "SET", "ASK", "key", "value", "scored key", "answer", "evidence"]
ROLE_COLOURS = ["#f2f2f2", "#c7d9ee", "#f6d0b1", "#9ecae1", "#a1d99b", "#fd8d3c", "#e6550d", "#31a354"]


def token_figure(batch: Batch, index: int = 0, layout: TokenLayout | None = None,
                 row_len: int = 24, title: str | None = None) -> go.Figure:
    """One sequence of a batch, token by token, coloured by role.

    Scored keys, their answers and the evidence each answer depends on (the token ``distance``
    back) are highlighted; hover a token for its position, id and distance.
    """
    layout = layout or TokenLayout()
    if not 0 <= index < len(batch):
        raise ValueError(f"index must be in [0, {len(batch)}), got {index}")
    if row_len < 1:
        raise ValueError(f"row_len must be >= 1, got {row_len}")
    tokens = batch.tokens[index].tolist()
    targets, distance = batch.targets[index].tolist(), batch.distance[index].tolist()
    role = []
    for t in tokens:
        role.append(1 if t == layout.SET else 2 if t == layout.ASK else
                    3 if t < layout.value_start else 4 if t < layout.filler_start else 0)
    hover_extra = [""] * len(tokens)
    for pos, d in enumerate(distance):
        if d >= 0:
            role[pos], role[pos + 1] = 5, 6
            role[pos - d] = 7 if role[pos - d] != 5 else 5
            hover_extra[pos] = f"<br>scored: answer {layout.label(targets[pos])}, evidence {d} back"
            hover_extra[pos - d] += f"<br>evidence for position {pos}"
    rows = (len(tokens) + row_len - 1) // row_len
    z, text, hover = [], [], []
    for r in range(rows):
        sl = slice(r * row_len, (r + 1) * row_len)
        pad = row_len - len(tokens[sl])
        z.append(role[sl] + [None] * pad)
        text.append([layout.label(t) for t in tokens[sl]] + [""] * pad)
        hover.append([f"position {r * row_len + i}: {layout.label(t)} (id {t}){hover_extra[r * row_len + i]}"
                      for i, t in enumerate(tokens[sl])] + [""] * pad)
    n = len(ROLES)
    scale = []
    for i, c in enumerate(ROLE_COLOURS):
        scale += [[i / n, c], [(i + 1) / n, c]]
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", textfont={"size": 10}, hovertext=hover,
        hoverinfo="text", colorscale=scale, zmin=-0.5, zmax=n - 0.5, xgap=1, ygap=1,
        colorbar={"tickvals": list(range(n)), "ticktext": ROLES, "title": "role"}))
    fig.update_layout(template=TEMPLATE, title=title, height=60 + 26 * rows,
                      margin={"l": 50, "r": 20, "t": 40 if title else 10, "b": 20},
                      xaxis={"showticklabels": False, "showgrid": False},
                      yaxis={"autorange": "reversed", "title": "row", "showgrid": False,
                             "tickvals": list(range(rows)), "ticktext": [str(r * row_len) for r in range(rows)]})
    return fig


def _bin_centres(bins: dict) -> list[float]:
    return [round((lo + hi - 1) / 2, 1) for lo, hi in zip(bins["lo"], bins["hi"])]


def _distance_trace(name: str, result: dict, colour: str, visible=True) -> go.Scatter:
    bins = result["by_distance"]
    acc = bins["accuracy"]
    return go.Scatter(
        x=_bin_centres(bins), y=acc, name=name, mode="lines+markers", visible=visible,
        line={"color": colour}, marker={"color": colour},
        error_y={"type": "data", "symmetric": False,
                 "array": [round(h - a, 4) for a, h in zip(acc, bins["ci_high"])],
                 "arrayminus": [round(a - lo, 4) for a, lo in zip(acc, bins["ci_low"])]},
        customdata=[[lo, hi - 1, n] for lo, hi, n in zip(bins["lo"], bins["hi"], bins["count"])],
        hovertemplate=f"{name}<br>distance %{{customdata[0]}}–%{{customdata[1]}}"
                      "<br>accuracy %{y:.3f} (n=%{customdata[2]})<extra></extra>")


def _mark(x: float, label: str, colour: str = "#555") -> tuple[dict, dict]:
    shape = {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "yref": "paper",
             "line": {"dash": "dot", "color": colour, "width": 1.5}}
    note = {"x": x, "y": 0.97, "yref": "paper", "text": label, "showarrow": False,
            "xanchor": "left", "yanchor": "top", "font": {"size": 11, "color": colour}}
    return shape, note


def accuracy_by_distance_figure(results: dict[str, dict], chance: float | None = None,
                                marks: dict[str, float] | None = None,
                                title: str = "Accuracy against fact-to-query distance") -> go.Figure:
    """Accuracy per distance bin with 95 % Wilson intervals, one line per named result.

    results: ``{name: evaluate(...) result}``; chance: a horizontal reference line;
    marks: ``{label: distance}`` vertical lines (e.g. a window, a receptive field).
    """
    fig = go.Figure()
    for i, (name, res) in enumerate(results.items()):
        fig.add_trace(_distance_trace(name, res, PALETTE[i % len(PALETTE)]))
    if chance is not None:
        fig.add_hline(y=chance, line={"dash": "dash", "color": "#888"},
                      annotation_text="chance", annotation_position="bottom right")
    for label, x in (marks or {}).items():
        shape, note = _mark(x, label)
        fig.add_shape(shape)
        fig.add_annotation(note)
    fig.update_layout(template=TEMPLATE, title=title, height=380, hovermode="closest",
                      xaxis_title="distance from the evidence to the query (tokens)",
                      yaxis={"title": "answer accuracy", "range": [-0.02, 1.05]},
                      legend={"orientation": "h", "y": -0.25})
    return fig


def window_slider_figure(curves: dict, chance: float | None = None, reference: dict | None = None,
                         reach: dict | None = None,
                         title: str = "Restricting attention to a window") -> go.Figure:
    """A slider over precomputed curves; works in a static page with no kernel.

    curves: ``{window: evaluate(...) result}`` where window is an int or ``"full"``;
    reference: ``{name: result}`` lines shown on every step; reach: ``{window: distance}`` where
    a dotted line marks how far that window can see.
    """
    if not curves:
        raise ValueError("curves must hold at least one window")
    fig = go.Figure()
    keys = list(curves)
    for i, (name, res) in enumerate((reference or {}).items()):
        fig.add_trace(_distance_trace(name, res, PALETTE[(i + 1) % len(PALETTE)]))
    n_ref = len(fig.data)
    for j, w in enumerate(keys):
        fig.add_trace(_distance_trace(f"window {w}", curves[w], PALETTE[0], visible=(j == 0)))
    steps = []
    for j, w in enumerate(keys):
        visible = [True] * n_ref + [k == j for k in range(len(keys))]
        shapes, notes = [], []
        if reach and reach.get(w) is not None:
            shape, note = _mark(reach[w], f"reach {reach[w]}")
            shapes, notes = [shape], [note]
        if chance is not None:
            shapes.append({"type": "line", "x0": 0, "x1": 1, "xref": "paper", "y0": chance, "y1": chance,
                           "line": {"dash": "dash", "color": "#888", "width": 1}})
        steps.append({"method": "update", "label": str(w),
                      "args": [{"visible": visible}, {"shapes": shapes, "annotations": notes}]})
    first = steps[0]["args"][1]
    fig.update_layout(template=TEMPLATE, title=title, height=430, shapes=first["shapes"],
                      annotations=first["annotations"],
                      sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": "window: "},
                                "pad": {"t": 50}}],
                      xaxis_title="distance from the evidence to the query (tokens)",
                      yaxis={"title": "answer accuracy", "range": [-0.02, 1.05]},
                      legend={"orientation": "h", "y": 1.12})
    return fig


def training_curves_figure(histories: dict[str, dict], title: str = "Training") -> go.Figure:
    """Loss and answer accuracy on training batches; ``histories``: ``{name: train(...) result}``."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss at answers", "accuracy at answers"))
    for i, (name, run) in enumerate(histories.items()):
        h, colour = run["history"], PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=h["step"], y=h["loss"], name=name, line={"color": colour},
                                 legendgroup=name), row=1, col=1)
        fig.add_trace(go.Scatter(x=h["step"], y=h["accuracy"], name=name, line={"color": colour},
                                 legendgroup=name, showlegend=False), row=1, col=2)
    fig.update_layout(template=TEMPLATE, title=title, height=330, legend={"orientation": "h", "y": -0.2})
    fig.update_xaxes(title_text="step")
    return fig
