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

# The book's layout, shared by every figure: a figure must read at the book's content width and on a
# 390 px phone, where plotly neither wraps text nor moves it out of the way. So titles wrap at
# TITLE_CHARS characters and sit above everything (the top margin grows to hold them), panel titles
# wrap to their panel's share of that, legends sit under the figure (the bottom margin grows to hold
# every row, below the axis titles), and no figure has more than two panels side by side.
TITLE_CHARS = 38
TITLE_SIZE = 15
PANEL_TITLE_SIZE = 13
LINE_PX = 20                      # height of one line of a title, with its spacing
LEGEND_BELOW = {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0, "xanchor": "left"}
MAX_COLS = 2
SLIDER_ROOM = 250                 # bottom margin of a figure with a slider and a legend
LEGEND_ROW_PX = 30                # one row of a horizontal legend

# token roles in token_figure, in colour order
STRIP_ROLES = ["filler", "SET", "ASK", "key", "value", "scored key", "answer", "evidence"]
ROLE_COLOURS = ["#f2f2f2", "#c7d9ee", "#f6d0b1", "#9ecae1", "#a1d99b", "#fd8d3c", "#e6550d", "#31a354"]


def _shown(text: str) -> int:
    """How many characters of ``text`` a reader sees (markup such as ``<sup>`` takes none)."""
    import re

    return len(re.sub(r"<[^>]*>", "", text))


def wrap(text: str | None, width: int = TITLE_CHARS) -> str | None:
    """``text`` with ``<br>`` between words so that no line shows more than ``width`` characters
    (line breaks already in it are kept; a single longer word stays whole; markup is not counted,
    and a line that fits is left alone, so wrapping twice changes nothing)."""
    if not text:
        return text
    lines = []
    for part in str(text).split("<br>"):
        if _shown(part) <= width:
            lines.append(part)
            continue
        line = ""
        for word in part.split(" "):
            if line and _shown(line) + 1 + _shown(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return "<br>".join(lines)


def _lines(text: str | None) -> int:
    return 0 if not text else str(text).count("<br>") + 1


def title_layout(text: str | None, height: int) -> dict:
    """A wrapped title at the top left of a figure ``height`` pixels tall. Plotly places the first
    line of a title at its anchor and the others below it, whatever the anchor, so the first line
    is put 20 pixels from the top and :func:`finish` makes the top margin as tall as every line."""
    return {"text": wrap(text), "x": 0, "xref": "container", "xanchor": "left", "y": round(1 - 20 / height, 4),
            "yref": "container", "yanchor": "middle", "pad": {"l": 12}, "font": {"size": TITLE_SIZE}}


def finish(fig: go.Figure, title: str | None, height: int, *, gap: int = 10, legend: bool = True,
           margin: dict | None = None, title_lines: int | None = None, legend_rows: int = 3,
           **layout) -> go.Figure:
    """Apply the book's layout (see ``TITLE_CHARS``): template, title, legend under the figure,
    axes that make room for their labels. ``gap``: pixels between the title and the plot area
    (panel titles, a slider's label); ``title_lines``: lines to make room for when a slider
    changes the title (default: the title's own); ``legend_rows``: the rows a legend under a
    slider may take on a phone (room is kept for them)."""
    lines = title_lines or _lines(wrap(title))
    bottom, legend_layout = 12, LEGEND_BELOW
    if legend and layout.get("sliders"):
        # plotly places a slider under the plot area and a legend at the figure's foot without
        # stacking them: keep room for the slider (under the axis title) and the legend's rows
        # (three by default) below it
        extra = LEGEND_ROW_PX * (legend_rows - 2) if legend_rows > 3 else 0     # and a row to spare
        bottom, height = SLIDER_ROOM + extra, height + SLIDER_ROOM + extra - 120
        if extra:
            # a legend anchored at the foot keeps its top where the widest screen put it and runs
            # off the figure on a phone; hung from its top, it grows down into the room kept
            legend_layout = {**LEGEND_BELOW, "y": round((LEGEND_ROW_PX * (legend_rows + 1)) / height, 4),
                             "yanchor": "top"}
    fig.update_layout(template=TEMPLATE, height=height, title=title_layout(title, height),
                      margin={"l": 60, "r": 24, "t": 12 + LINE_PX * lines + gap, "b": bottom, **(margin or {})},
                      legend=legend_layout if legend else None, showlegend=None if legend else False, **layout)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def panels(n: int, titles, height: int, max_cols: int = MAX_COLS, **kwargs):
    """``make_subplots`` for ``n`` panels, at most ``max_cols`` side by side (more go on further
    rows), panel titles wrapped to their share of the width, with room between rows for the tick
    labels and axis title of the row above and the titles of the row below. Returns the figure,
    the (row, col) of each panel and the pixels the top row's titles need above the plot area."""
    import math

    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    titles = [wrap(t, TITLE_CHARS // cols - 4) for t in titles] if titles else None
    title_px = max((_lines(t) for t in titles), default=0) * 17 + 8 if titles else 8
    top_px = max((_lines(t) for t in titles[:cols]), default=0) * 17 + 8 if titles else 8
    if rows > 1:
        # tick labels (turned upright on a phone) and the axis title of the row above: about 100 px
        kwargs.setdefault("vertical_spacing", min(0.35, (100 + title_px) / max(height - 120, 100)))
    kwargs.setdefault("horizontal_spacing", 0.14 if cols > 1 else 0.02)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, **kwargs)
    fig.update_annotations(font_size=PANEL_TITLE_SIZE)
    cells = [(i // cols + 1, i % cols + 1) for i in range(n)]
    return fig, cells, top_px


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
    n = len(STRIP_ROLES)
    scale = []
    for i, c in enumerate(ROLE_COLOURS):
        scale += [[i / n, c], [(i + 1) / n, c]]
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", textfont={"size": 10}, hovertext=hover,
        hoverinfo="text", colorscale=scale, zmin=-0.5, zmax=n - 0.5, xgap=1, ygap=1, showscale=False))
    # the roles as a legend of coloured squares (a colour bar has no room for eight labels beside a short strip)
    for i in sorted(set(role)):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=STRIP_ROLES[i], hoverinfo="skip",
                                 marker={"symbol": "square", "size": 12, "color": ROLE_COLOURS[i],
                                         "line": {"color": "#999", "width": 1}}))
    return finish(fig, title, 130 + 26 * rows + LINE_PX * _lines(wrap(title)), margin={"l": 50, "r": 20},
                  xaxis={"showticklabels": False, "showgrid": False, "zeroline": False},
                  yaxis={"autorange": "reversed", "title": "row", "showgrid": False, "zeroline": False,
                         "tickvals": list(range(rows)), "ticktext": [str(r * row_len) for r in range(rows)]})


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


def _mark(x: float, label: str, colour: str = "#555", level: int = 0) -> tuple[dict, dict]:
    """A dotted vertical line at ``x`` and its label, at mid-height (an accuracy's curves run along
    the top or the bottom); ``level`` puts the label one line lower per step, so the labels of
    marks close together do not run into each other."""
    shape = {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "yref": "paper",
             "line": {"dash": "dot", "color": colour, "width": 1.5}}
    note = {"x": x, "y": 0.6 - 0.09 * level, "yref": "paper", "text": label, "showarrow": False,
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
                      annotation_text="chance", annotation_position="top right")
    for level, (label, x) in enumerate((marks or {}).items()):
        shape, note = _mark(x, label, level=level)
        fig.add_shape(shape)
        fig.add_annotation(note)
    return finish(fig, title, 400, hovermode="closest",
                  xaxis_title=wrap("distance from the evidence to the query (tokens)"),
                  yaxis={"title": "answer accuracy", "range": [-0.02, 1.05]})


def parameter_slider_figure(curves: dict, parameter: str = "window", chance: float | None = None,
                            reference: dict | None = None, reach: dict | None = None,
                            title: str | None = None, active=None) -> go.Figure:
    """A slider over precomputed accuracy-by-distance curves, one step per value of a parameter
    (an attention window in chapter 1, a number of slots in chapter 2); works in a static page
    with no kernel. Introduced in chapter 1, generalised in chapter 2.

    curves: ``{value: evaluate(...) result}``; reference: ``{name: result}`` lines shown on every
    step; reach: ``{value: distance}`` where a dotted line marks how far that value can see;
    active: the value shown first (default the first), the one the text discusses; title: default
    "Accuracy against distance, by <parameter>".
    """
    if not curves:
        raise ValueError(f"curves must hold at least one {parameter}")
    keys = list(curves)
    if active is not None and active not in keys:
        raise ValueError(f"active must be one of {keys}, got {active!r}")
    shown = keys.index(active) if active is not None else 0
    fig = go.Figure()
    for i, (name, res) in enumerate((reference or {}).items()):
        fig.add_trace(_distance_trace(name, res, PALETTE[(i + 1) % len(PALETTE)]))
    n_ref = len(fig.data)
    for j, w in enumerate(keys):
        fig.add_trace(_distance_trace(f"{parameter} {w}", curves[w], PALETTE[0], visible=(j == shown)))
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
    first = steps[shown]["args"][1]
    return finish(fig, title or f"Accuracy against distance, by {parameter}", 480, shapes=first["shapes"],
                  annotations=first["annotations"],
                  sliders=[{"active": shown, "steps": steps, "currentvalue": {"prefix": f"{parameter}: "},
                            "pad": {"t": 85}}],
                  xaxis_title=wrap("distance from the evidence to the query (tokens)"),
                  yaxis={"title": "answer accuracy", "range": [-0.02, 1.05]})


def window_slider_figure(curves: dict, chance: float | None = None, reference: dict | None = None,
                         reach: dict | None = None, title: str = "Restricting attention to a window",
                         active=None) -> go.Figure:
    """Chapter 1's window slider: :func:`parameter_slider_figure` over attention windows.

    curves: ``{window: evaluate(...) result}`` where window is an int or ``"full"``.
    """
    if not curves:
        raise ValueError("curves must hold at least one window")
    return parameter_slider_figure(curves, "window", chance=chance, reference=reference, reach=reach, title=title,
                                   active=active)


def training_curves_figure(histories: dict[str, dict], title: str = "Training") -> go.Figure:
    """Loss and answer accuracy on training batches; ``histories``: ``{name: train(...) result}``."""
    fig, _, gap = panels(2, ("loss at answers", "accuracy at answers"), 360)
    for i, (name, run) in enumerate(histories.items()):
        h, colour = run["history"], PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=h["step"], y=h["loss"], name=name, line={"color": colour},
                                 legendgroup=name), row=1, col=1)
        fig.add_trace(go.Scatter(x=h["step"], y=h["accuracy"], name=name, line={"color": colour},
                                 legendgroup=name, showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="step")
    return finish(fig, title, 360, gap=gap)


# --- slot memory (chapters 2-3) ----------------------------------------------------------------


def _r(values, digits: int = 3) -> list:
    """Nested lists of rounded floats from a tensor or array (stable figure JSON)."""
    import numpy as np
    import torch

    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.round(np.asarray(values, dtype=float), digits).tolist()


def _cell_ticks(toks: list[int], layout: TokenLayout, max_labels: int) -> tuple[list[int], list[str]]:
    """Tick positions and labels for a token axis: every token when there are at most
    ``max_labels``, otherwise only the fact and query cells (``SET k3=v7`` at the ``SET``)."""
    if len(toks) <= max_labels:
        return list(range(len(toks))), [layout.label(t) for t in toks]
    vals, text = [], []
    for p in range(len(toks) - 2):
        if toks[p] in (layout.SET, layout.ASK) and p % 3 == 0:
            sep = "=" if toks[p] == layout.SET else "→"
            vals.append(p)
            text.append(f"{layout.label(toks[p])} {layout.label(toks[p + 1])}{sep}{layout.label(toks[p + 2])}")
    return vals, text


def slot_heatmap_figure(trace: dict, tokens, index: int = 0, layout: TokenLayout | None = None,
                        title: str | None = None, max_labels: int = 96) -> go.Figure:
    """What a slot memory did on one sequence. Introduced in chapter 2.

    Three panels sharing the token axis (x: token position): write mass per slot
    (``trace["write"]``: write gate times write address), read weight per slot (``trace["read"]``:
    read gate times the read weights, mean over heads), and the write, erase and read gates.
    trace: from ``model(tokens, return_trace=True)``, ``write``/``read`` (batch, seq_len,
    num_slots) and gates (batch, seq_len); tokens: (batch, seq_len); ``index`` picks the sequence.
    Hover shows position, token and value; the axis is labelled with every token when the
    sequence has at most ``max_labels`` tokens, else with its fact and query cells. Values are
    rounded to 3 decimals.
    """
    layout = layout or TokenLayout()
    if not 0 <= index < tokens.shape[0]:
        raise ValueError(f"index must be in [0, {tokens.shape[0]}), got {index}")
    toks = tokens[index].tolist()
    T = len(toks)
    if trace["write"].shape[1] != T:
        raise ValueError(f"trace covers {trace['write'].shape[1]} tokens, tokens has {T}")
    names = [layout.label(t) for t in toks]
    pos = list(range(T))
    write, read = trace["write"][index].T, trace["read"][index].T          # (slots, seq_len)
    slots = list(range(write.shape[0]))
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.4, 0.4, 0.2],
                        subplot_titles=("writes (write gate × address)", "reads (read gate × weights)", "gates"))
    fig.update_annotations(font_size=PANEL_TITLE_SIZE)
    for row, data, scale, what in ((1, write, "Oranges", "write"), (2, read, "Blues", "read")):
        fig.add_trace(go.Heatmap(z=_r(data), x=pos, y=slots, customdata=[names] * len(slots), colorscale=scale,
                                 zmin=0, zmax=1, showscale=False, name=f"{what}s",
                                 hovertemplate=f"position %{{x}}: %{{customdata}}<br>slot %{{y}} {what}: "
                                               "%{z:.3f}<extra></extra>"),
                      row=row, col=1)
    gates = (("write_gate", "write gate"), ("erase", "erase gate"), ("read_gate", "read gate"))
    for i, (key, name) in enumerate(gates):
        fig.add_trace(go.Scatter(x=pos, y=_r(trace[key][index]), customdata=names, name=name, mode="lines",
                                 line={"color": PALETTE[i], "width": 1.5},
                                 hovertemplate=f"position %{{x}}: %{{customdata}}<br>{name} %{{y:.3f}}<extra></extra>"),
                      row=3, col=1)
    tickvals, ticktext = _cell_ticks(toks, layout, max_labels)
    fig.update_yaxes(title_text="slot", row=1, col=1)
    fig.update_yaxes(title_text="slot", row=2, col=1)
    fig.update_yaxes(range=[-0.05, 1.05], row=3, col=1)
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_xaxes(showticklabels=False, row=2, col=1)
    fig.update_xaxes(tickmode="array", tickvals=tickvals, ticktext=ticktext, tickangle=-90, tickfont={"size": 10},
                     title_text="token", row=3, col=1)
    return finish(fig, title, 720, gap=26, margin={"l": 50, "r": 20})


def slot_training_figure(histories: dict[str, dict], title: str = "What the memory does during training") -> go.Figure:
    """Write entropy, read entropy, writes per token and mean slot lifetime against the training
    step, from ``train(..., monitor=memorylib.analysis.slot_monitor)`` results (``{name: result}``).
    Introduced in chapter 2."""
    shown = (("write_entropy", "write entropy"), ("read_entropy", "read entropy"),
             ("writes_per_token", "writes per token"), ("mean_lifetime", "slot lifetime (tokens)"))
    fig, cells, gap = panels(len(shown), [p[1] for p in shown], 560)
    for i, (name, run) in enumerate(histories.items()):
        h, colour = run["history"], PALETTE[i % len(PALETTE)]
        missing = [key for key, _ in shown if key not in h]
        if missing:
            raise ValueError(f"history of {name!r} has no {missing}: train with monitor=slot_monitor")
        for j, ((key, _), (row, col)) in enumerate(zip(shown, cells)):
            fig.add_trace(go.Scatter(x=h["step"], y=h[key], name=name, line={"color": colour},
                                     legendgroup=name, showlegend=j == 0), row=row, col=col)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    fig.update_xaxes(title_text="step", row=cells[-1][0])
    return finish(fig, title, 560, gap=gap)


def capacity_figure(curves: dict[str, dict], chance: float | None = None,
                    title: str = "Accuracy against memory size") -> go.Figure:
    """Held-out accuracy (with its 95 % bootstrap interval) against the number of slots, one line
    per model. curves: ``{name: {num_slots: evaluate(...) result}}``. Introduced in chapter 2;
    :func:`accuracy_curve_figure` on a log axis with a tick at every size."""
    return accuracy_curve_figure(curves, "number of slots", chance=chance, title=title, log_x=True,
                                 tickvals=sorted({n for c in curves.values() for n in c}), hover_x="%{x} slots")


def ablation_figure(rows: list[dict], metrics=("accuracy", "stale_rate"),
                    title: str = "Ablations over seeds") -> go.Figure:
    """One panel per metric: per model, a bar at the mean over seeds with the sample standard
    deviation (``ddof=1``; 0 for a single seed) as error bar, and every seed as a dot.
    rows: dicts with ``model``, ``seed`` and one number per metric (rows where a metric is None
    are left out of that panel). Models keep the order of their first row. A metric whose values
    all lie in [0, 1] (an accuracy, a rate, a normalised entropy) has its error bars cut at 0 and 1.
    At most two panels side by side; more go on further rows. Introduced in chapter 2."""
    import math

    import numpy as np

    if not rows:
        raise ValueError("rows must hold at least one result")
    missing = [m for m in metrics if not any(r.get(m) is not None for r in rows)]
    if missing:
        raise ValueError(f"no row has a value for {missing}; rows have {sorted(set().union(*rows))}")
    models = list(dict.fromkeys(r["model"] for r in rows))
    height = 170 + 250 * math.ceil(len(metrics) / MAX_COLS)
    fig, cells, gap = panels(len(metrics), list(metrics), height)
    for j, (metric, (row, col)) in enumerate(zip(metrics, cells)):
        values = [r[metric] for r in rows if r.get(metric) is not None]
        unit = 0 <= min(values) and max(values) <= 1
        for i, name in enumerate(models):
            vals = np.array([r[metric] for r in rows if r["model"] == name and r.get(metric) is not None], float)
            colour = PALETTE[i % len(PALETTE)]
            if len(vals) == 0:
                continue
            std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            mean = float(vals.mean())
            up, down = (min(std, 1 - mean), min(std, mean)) if unit else (std, std)
            fig.add_trace(go.Bar(x=[name], y=[round(mean, 4)], marker={"color": colour, "opacity": 0.55},
                                 error_y={"type": "data", "symmetric": False, "array": [round(up, 4)],
                                          "arrayminus": [round(down, 4)]}, name=name, legendgroup=name,
                                 showlegend=j == 0,
                                 hovertemplate=f"{name}<br>{metric}: mean %{{y:.3f}} ± {std:.3f} "
                                               f"(n={len(vals)})<extra></extra>"),
                          row=row, col=col)
            fig.add_trace(go.Scatter(x=[name] * len(vals), y=_r(vals, 4), mode="markers", showlegend=False,
                                     marker={"color": colour, "size": 7, "line": {"color": "white", "width": 1}},
                                     legendgroup=name, hovertemplate=f"{name}<br>{metric}: %{{y:.3f}}<extra></extra>"),
                          row=row, col=col)
        fig.update_xaxes(showticklabels=False, row=row, col=col)
    return finish(fig, title, height, gap=gap, barmode="overlay")


def survival_figure(results: dict[str, dict], title: str = "How long a written fact stays retrievable") -> go.Figure:
    """Survival curves from :func:`memorylib.analysis.survival` results (``{name: result}``):
    the probability that the memory still returns a fact's value, against tokens since it was
    written (x: the first delta of each bin); solid for facts still true at that time, dashed for
    facts already overwritten; error bars are 95 % Wilson intervals; bins with no probes are left
    out. Two traces per result. Introduced in chapter 3."""
    fig = go.Figure()
    for i, (name, res) in enumerate(results.items()):
        colour = PALETTE[i % len(PALETTE)]
        for status, dash in (("live", "solid"), ("overwritten", "dash")):
            part, width = res[status], res.get("bin_width", 1)
            keep = [j for j, n in enumerate(part["n"]) if n > 0]
            x = [res["delta"][j] for j in keep]
            p = [part["p"][j] for j in keep]
            fig.add_trace(go.Scatter(
                x=x, y=p, name=f"{name}: {status}", mode="lines", line={"color": colour, "dash": dash},
                legendgroup=name,
                error_y={"type": "data", "symmetric": False, "thickness": 0.8, "width": 0,
                         "array": [round(part["ci_high"][j] - part["p"][j], 4) for j in keep],
                         "arrayminus": [round(part["p"][j] - part["ci_low"][j], 4) for j in keep]},
                customdata=[[x_ + width - 1, part["n"][j]] for x_, j in zip(x, keep)],
                hovertemplate=f"{name} ({status})<br>%{{x}}–%{{customdata[0]}} tokens after the write: "
                              "%{y:.3f} (n=%{customdata[1]})<extra></extra>"))
    return finish(fig, title, 440, xaxis_title="tokens since the fact was written",
                  yaxis={"title": "P(memory still returns<br>the value)", "range": [-0.02, 1.05]})


# --- surprise (chapter 4) --------------------------------------------------------------------


def accuracy_curve_figure(curves: dict[str, dict], x_title: str, chance: float | None = None,
                          title: str | None = None, log_x: bool = False, tickvals: list | None = None,
                          hover_x: str | None = None) -> go.Figure:
    """Held-out accuracy (with its 95 % bootstrap interval) against any parameter, one line per
    model. curves: ``{name: {x: evaluate(...) result}}``; ``tickvals`` puts a tick at each of
    those values; ``hover_x`` is how the hover names a point (default ``"<x_title> %{x}"``).
    Introduced in chapter 2 as :func:`capacity_figure` (against the number of slots); chapter 4
    plots accuracy against needle depth and against the surprise threshold."""
    hover_x = hover_x or f"{x_title} %{{x}}"
    fig = go.Figure()
    for i, (name, by_x) in enumerate(curves.items()):
        xs = sorted(by_x)
        acc = [by_x[x]["accuracy"] for x in xs]
        fig.add_trace(go.Scatter(
            x=xs, y=acc, name=name, mode="lines+markers", line={"color": PALETTE[i % len(PALETTE)]},
            error_y={"type": "data", "symmetric": False,       # an accuracy's interval ends at 0 and 1
                     "array": [round(max(0.0, min(1.0, by_x[x]["ci"][1]) - a), 4) for x, a in zip(xs, acc)],
                     "arrayminus": [round(max(0.0, a - max(0.0, by_x[x]["ci"][0])), 4) for x, a in zip(xs, acc)]},
            hovertemplate=f"{name}<br>{hover_x}: accuracy %{{y:.3f}}<extra></extra>"))
    if chance is not None:
        fig.add_hline(y=chance, line={"dash": "dash", "color": "#888"},
                      annotation_text="chance", annotation_position="top right")
    xaxis = {"title": wrap(x_title), "type": "log" if log_x else "linear"}
    if tickvals is not None:
        xaxis["tickvals"] = tickvals
    return finish(fig, title, 420, xaxis=xaxis, yaxis={"title": "answer accuracy", "range": [-0.02, 1.05]})


def surprise_trace_figure(traces: dict[str, dict], tokens: dict, index: int = 0, threshold: float | None = None,
                          layout: TokenLayout | None = None, title: str | None = None,
                          max_labels: int = 48) -> go.Figure:
    """Surprise and write strength token by token, one panel per sequence. Introduced in chapter 4.

    traces: ``{name: trace}`` from ``model(tokens, return_trace=True)`` of a
    :class:`~memorylib.models.SurpriseMemoryModel` (``surprise``, ``carried``, ``write_gate``,
    each (batch, seq_len)); tokens: ``{name: (batch, seq_len) tokens}``; ``index`` picks the
    sequence. Lines: the momentary surprise ``s_t``, the carried surprise ``S_t`` when it differs
    (momentum), and the write gate the memory used; a dashed line marks ``threshold``. Fact and
    query cells are shaded.
    """
    layout = layout or TokenLayout()
    if set(traces) != set(tokens):
        raise ValueError(f"traces and tokens must have the same names, got {sorted(traces)} and {sorted(tokens)}")
    height = 300 * len(traces) + 120
    fig, _, gap = panels(len(traces), list(traces), height, max_cols=1)
    for row, (name, tr) in enumerate(traces.items(), start=1):
        if not 0 <= index < tokens[name].shape[0]:
            raise ValueError(f"index must be in [0, {tokens[name].shape[0]}), got {index}")
        toks = tokens[name][index].tolist()
        pos, labels = list(range(len(toks))), [layout.label(t) for t in toks]
        lines = [("surprise", "surprise s_t", PALETTE[1], None)]
        if not bool((tr["carried"] == tr["surprise"]).all()):
            lines.append(("carried", "carried surprise S_t", PALETTE[4], "dot"))
        lines.append(("write_gate", "write strength", PALETTE[0], None))
        for key, label, colour, dash in lines:
            fig.add_trace(go.Scatter(x=pos, y=_r(tr[key][index]), customdata=labels, name=label, mode="lines",
                                     line={"color": colour, "width": 1.5, "dash": dash}, legendgroup=label,
                                     showlegend=row == 1,
                                     hovertemplate=f"position %{{x}}: %{{customdata}}<br>{label} "
                                                   "%{y:.3f}<extra></extra>"),
                          row=row, col=1)
        for p, t in enumerate(toks):
            if t in (layout.SET, layout.ASK) and p + 2 < len(toks):
                fig.add_vrect(x0=p - 0.5, x1=p + 2.5, fillcolor="#fdd0a2" if t == layout.SET else "#c6dbef",
                              opacity=0.5, line_width=0, row=row, col=1)
        if threshold is not None:
            fig.add_hline(y=threshold, line={"dash": "dash", "color": "#888", "width": 1}, row=row, col=1)
        tickvals, ticktext = _cell_ticks(toks, layout, max_labels)
        fig.update_xaxes(tickmode="array", tickvals=tickvals, ticktext=ticktext, tickangle=-90,
                         tickfont={"size": 9}, row=row, col=1)
    return finish(fig, title, height, gap=gap, margin={"l": 50, "r": 20})


def surprise_scatter_figure(points: dict[str, dict], title: str | None = None) -> go.Figure:
    """Write strength against surprise, one point per token. Introduced in chapter 4.

    points: ``{name: {"surprise": [...], "write": [...], "role": [...]}}`` (one panel per name, at
    most two side by side; ``role`` a label per token, e.g. "needle" or "filler", one colour each).
    """
    import math

    height = 150 + 270 * math.ceil(len(points) / MAX_COLS)
    fig, cells, gap = panels(len(points), list(points), height, shared_yaxes=True)
    roles = sorted({r for p in points.values() for r in p["role"]})
    for (name, p), (row, col) in zip(points.items(), cells):
        if not len(p["surprise"]) == len(p["write"]) == len(p["role"]):
            raise ValueError(f"{name}: surprise, write and role must have the same length")
        for i, role in enumerate(roles):
            sel = [j for j, r in enumerate(p["role"]) if r == role]
            fig.add_trace(go.Scatter(x=_r([p["surprise"][j] for j in sel]), y=_r([p["write"][j] for j in sel]),
                                     mode="markers", name=role, legendgroup=role, showlegend=(row, col) == (1, 1),
                                     marker={"color": PALETTE[i % len(PALETTE)], "size": 5, "opacity": 0.6},
                                     hovertemplate=f"{role}<br>surprise %{{x:.3f}}<br>write %{{y:.3f}}<extra></extra>"),
                          row=row, col=col)
        fig.update_xaxes(title_text="surprise", row=row, col=col)
        fig.update_yaxes(range=[-0.05, 1.05], row=row, col=col)
        if col == 1:
            fig.update_yaxes(title_text="write strength", row=row, col=col)
    return finish(fig, title, height, gap=gap)


def threshold_slider_figure(surprise: dict[str, list], gates: dict, summary: dict | None = None,
                            title: str = "Surprise threshold", active=None) -> go.Figure:
    """A slider over surprise thresholds that works in a static page. Introduced in chapter 4.

    surprise: ``{name: [surprise per token]}`` for one sequence per panel (drawn on every step);
    gates: ``{threshold: {name: [write strength per token]}}``; summary: ``{threshold: text}``
    shown in the title at that step (e.g. the accuracy measured with that threshold); active: the
    threshold shown first (default the first), the one the text discusses.
    """
    if not gates:
        raise ValueError("gates must hold at least one threshold")
    names = list(surprise)
    thresholds = list(gates)
    if active is not None and active not in thresholds:
        raise ValueError(f"active must be one of {thresholds}, got {active!r}")
    shown = thresholds.index(active) if active is not None else 0
    height = 280 * len(names) + 230
    fig, _, gap = panels(len(names), names, height, max_cols=1)
    for row, name in enumerate(names, start=1):
        fig.add_trace(go.Scatter(y=_r(surprise[name]), name="surprise", mode="lines", legendgroup="surprise",
                                 showlegend=row == 1, line={"color": PALETTE[1], "width": 1.5}), row=row, col=1)
    n_fixed = len(fig.data)
    for j, thr in enumerate(thresholds):
        for row, name in enumerate(names, start=1):
            fig.add_trace(go.Scatter(y=_r(gates[thr][name]), name="write strength", mode="lines",
                                     legendgroup="write", showlegend=row == 1, visible=j == shown,
                                     line={"color": PALETTE[0], "width": 1.5}), row=row, col=1)
    steps = []
    for j, thr in enumerate(thresholds):
        visible = [True] * n_fixed + [k // len(names) == j for k in range(len(thresholds) * len(names))]
        shapes = [{"type": "line", "x0": 0, "x1": 1, "xref": f"x{'' if r == 1 else r} domain",
                   "yref": f"y{'' if r == 1 else r}", "y0": thr, "y1": thr,
                   "line": {"dash": "dash", "color": "#888", "width": 1}} for r in range(1, len(names) + 1)]
        text = f"{title}: threshold {thr}" + (f"<br>{summary[thr]}" if summary and thr in summary else "")
        steps.append({"method": "update", "label": str(thr),
                      "args": [{"visible": visible}, {"shapes": shapes, "title.text": wrap(text)}]})
    finish(fig, steps[shown]["args"][1]["title.text"], height, gap=gap, shapes=steps[shown]["args"][1]["shapes"],
           title_lines=max(_lines(s["args"][1]["title.text"]) for s in steps),
           sliders=[{"active": shown, "steps": steps, "currentvalue": {"prefix": "threshold: "}, "pad": {"t": 40}}],
           margin={"l": 50, "r": 20})
    fig.update_yaxes(range=[-0.05, 1.05])
    fig.update_xaxes(title_text="token position", row=len(names), col=1)
    return fig


# --- memories that learn (chapter 5) -----------------------------------------------------------


def recall_by_age_figure(curves: dict, parameter: str = "retention",
                         title: str = "Which pairs a memory still holds", active=None) -> go.Figure:
    """A slider over a parameter (chapter 5: the retention ``a``), one step per value; on each
    step, recall against age (how many pairs were written after it) for every memory. Works in a
    static page with no kernel. curves: ``{value: {memory name: by_age list}}`` (by_age as
    returned by :func:`memorylib.recall.store_and_recall`); active: the value shown first (default
    the first), the one the text discusses. Introduced in chapter 5."""
    if not curves:
        raise ValueError(f"curves must hold at least one {parameter}")
    values = list(curves)
    if active is not None and active not in values:
        raise ValueError(f"active must be one of {values}, got {active!r}")
    shown = values.index(active) if active is not None else 0
    names = list(curves[values[0]])
    fig = go.Figure()
    for j, value in enumerate(values):
        for i, name in enumerate(names):
            by_age = curves[value][name]
            fig.add_trace(go.Scatter(x=list(range(len(by_age))), y=_r(by_age, 3), name=name, mode="lines",
                                     line={"color": PALETTE[i % len(PALETTE)]}, visible=j == shown,
                                     legendgroup=name, showlegend=True,
                                     hovertemplate=f"{name}, {parameter} {value}<br>written %{{x}} pairs "
                                                   "before the end: recall %{y:.2f}<extra></extra>"))
    steps = [{"method": "update", "label": str(value),
              "args": [{"visible": [k // len(names) == j for k in range(len(values) * len(names))]}]}
             for j, value in enumerate(values)]
    return finish(fig, title, 480,
                  sliders=[{"active": shown, "steps": steps, "currentvalue": {"prefix": f"{parameter}: "},
                            "pad": {"t": 50}}],
                  xaxis_title="age: pairs written after this one",
                  yaxis={"title": "recall (nearest stored<br>value is its own)", "range": [-0.02, 1.05]})


# --- chunked parallelism (chapter 6) ------------------------------------------------------------


def _sig(value, digits: int = 4):
    """``value`` rounded to ``digits`` significant digits (None and non-finite values pass through)."""
    import math

    if value is None or not math.isfinite(value) or value == 0:
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def _length_ticks(values) -> tuple[list, list]:
    """Tick values and labels for sequence lengths: 512, 1K, 16K, ..."""
    xs = sorted(set(values))
    return xs, [f"{x // 1024}K" if x >= 1024 and x % 1024 == 0 else str(x) for x in xs]


def scaling_figure(xs: list, series: dict[str, list], y_title: str, x_title: str = "sequence length (tokens)",
                   title: str | None = None, marks: dict[str, float] | None = None,
                   dashed: tuple = ()) -> go.Figure:
    """Log-log lines of a cost (seconds, bytes) against sequence length, one per named series.
    Introduced in chapter 6.

    xs: the x values (e.g. sequence lengths); series: ``{name: [value per x]}`` (None: not
    measured); marks: ``{label: x}`` dotted vertical lines (e.g. where two series cross), drawn as
    traces so they sit at the right place on log axes; dashed: names drawn dashed."""
    if not series:
        raise ValueError("series must hold at least one named list of values")
    for name, ys in series.items():
        if len(ys) != len(xs):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(xs)} x values")
    fig = go.Figure()
    values = [y for ys in series.values() for y in ys if y]
    for i, (name, ys) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=list(xs), y=[_sig(y) for y in ys], name=name, mode="lines+markers",
                                 line={"color": colour, "dash": "dash" if name in dashed else "solid"},
                                 hovertemplate=f"{name}<br>{x_title} %{{x}}: %{{y:.4g}}<extra></extra>"))
    for label, x in (marks or {}).items():
        fig.add_trace(go.Scatter(x=[_sig(x), _sig(x)], y=[_sig(min(values)), _sig(max(values))], mode="lines+text",
                                 text=["", label], textposition="top right", showlegend=False,
                                 line={"dash": "dot", "color": "#555", "width": 1.5}, hoverinfo="skip"))
    tickvals, ticktext = _length_ticks(xs)
    return finish(fig, title, 440, hovermode="closest",
                  xaxis={"title": wrap(x_title), "type": "log", "tickvals": tickvals, "ticktext": ticktext},
                  yaxis={"title": wrap(y_title, 30), "type": "log", "dtick": 1})


def _error_points(errors: dict, cap: float, mark_at: float | None = None):
    """(x, y, diverged x, diverged y) from ``{chunk: relative error}``, y in percent; diverged
    points are drawn at ``mark_at`` (default ``cap``)."""
    import math

    xs, ys, dx, dy = [], [], [], []
    for c, e in sorted(errors.items()):
        if e is None or not math.isfinite(e) or e * 100 > cap:
            dx.append(c)
            dy.append(_sig(mark_at or cap, 3))
        else:
            xs.append(c)
            ys.append(_sig(100 * e, 3))
    return xs, ys, dx, dy


def drift_figure(errors: dict[str, dict], threshold: float | None = 1.0, cap: float = 1000.0,
                 notes: dict[str, str] | None = None,
                 title: str = "How far the mini-batch MLP memory drifts from the sequential one") -> go.Figure:
    """Relative error of the chunked MLP memory's reads against chunk size, one panel per setting
    and one line per learning rate. Introduced in chapter 6.

    errors: ``{panel: {learning rate: {chunk size: relative error}}}`` (from
    ``memorylib.chunk_study.minibatch_drift``; ``inf`` or above ``cap`` percent is drawn as a cross
    at ``cap``, "diverged"); threshold: a dashed line at that many percent; notes: ``{panel:
    text}`` added under a panel's title. At most two panels side by side."""
    import math

    if not errors:
        raise ValueError("errors must hold at least one panel")
    names = list(errors)
    width = TITLE_CHARS // min(len(names), MAX_COLS) - 4          # as panels() wraps panel titles
    titles = [wrap(p, width) + ("".join(f"<br><sup>{line}</sup>" for line in wrap(notes[p], width).split("<br>"))
                                if notes and p in notes else "") for p in names]
    height = 170 + 280 * math.ceil(len(names) / MAX_COLS)
    fig, cells, gap = panels(len(names), titles, height, shared_yaxes="all")
    rates = sorted({lr for by_lr in errors.values() for lr in by_lr})
    colour = {lr: PALETTE[i % len(PALETTE)] for i, lr in enumerate(rates)}
    for panel, (row, col) in zip(names, cells):
        for lr, by_chunk in sorted(errors[panel].items()):
            # crosses of different rates stacked above the cap, so none hides another
            xs, ys, dx, dy = _error_points(by_chunk, cap, cap * 1.3 ** rates.index(lr))
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"lr {lr}", legendgroup=str(lr),
                                     showlegend=panel == names[0], line={"color": colour[lr]},
                                     hovertemplate=f"{panel}, lr {lr}<br>chunk %{{x}}: %{{y:.3g}} %<extra></extra>"),
                          row=row, col=col)
            if dx:
                fig.add_trace(go.Scatter(x=dx, y=dy, mode="markers", name="diverged", legendgroup="diverged",
                                         showlegend=False, marker={"symbol": "x", "size": 10, "color": colour[lr]},
                                         hovertemplate=f"{panel}, lr {lr}<br>chunk %{{x}}: diverged<extra></extra>"),
                              row=row, col=col)
        if threshold is not None:
            fig.add_trace(go.Scatter(x=[1, max(max(b) for b in errors[panel].values()) if errors[panel] else 2],
                                     y=[threshold, threshold], mode="lines", showlegend=False, hoverinfo="skip",
                                     line={"dash": "dash", "color": "#888", "width": 1}), row=row, col=col)
        if col == 1:
            fig.update_yaxes(title_text="relative error of<br>the reads (%)", row=row, col=col)
    if any(t.name == "diverged" for t in fig.data):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="diverged",
                                 marker={"symbol": "x", "size": 10, "color": "#555"}))
    chunks = sorted({c for by_lr in errors.values() for by_c in by_lr.values() for c in by_c})
    fig.update_xaxes(type="log", tickvals=chunks, title_text="chunk size")
    fig.update_yaxes(type="log", dtick=1)
    return finish(fig, title, height, gap=gap, hovermode="closest")


def _decade_ticks(lo: float, hi: float) -> list:
    """1, 2, 5 times powers of ten between ``lo`` and ``hi`` (tick values for a log axis)."""
    import math

    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0 ** e for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    return [_sig(t, 1) for t in ticks]


def _percent(error: float, cap: float) -> float:
    import math

    return cap if not math.isfinite(error) else _sig(min(100 * error, cap), 3)


def _tradeoff_traces(table: dict, chunk: int, profile: tuple | None, cap: float):
    """Traces of one step of the chunk-size trade-off, as (trace, column), and the table's row."""
    sizes = sorted(table)
    us = [_sig(table[c]["us_per_token"], 3) for c in sizes]
    err = [_percent(table[c]["error"], cap) for c in sizes]
    at = sizes.index(chunk)
    out = [(go.Scatter(x=us, y=err, mode="lines+markers+text", text=[str(c) for c in sizes],
                       textposition="top center", name="every chunk size", showlegend=False,
                       line={"color": "#bbb"}, marker={"color": "#bbb", "size": 7},
                       hovertemplate="chunk %{text}: %{x:.3g} µs per token, drift %{y:.3g} %<extra></extra>"), 1),
           (go.Scatter(x=[us[at]], y=[err[at]], mode="markers", name=f"chunk {chunk}", showlegend=False,
                       marker={"color": PALETTE[1], "size": 14}, hoverinfo="skip"), 1)]
    if profile is not None:
        positions, values = profile
        out.append((go.Scatter(x=list(positions), y=[_percent(v / 100, cap) for v in values], mode="lines",
                               name=f"chunk {chunk}", showlegend=False, line={"color": PALETTE[1], "width": 2},
                               hovertemplate=f"chunk {chunk}<br>tokens from %{{x}}: drift "
                                             "%{y:.3g} %<extra></extra>"), 2))
    return out, table[chunk]


def _tradeoff_panels():
    """The two panels of the chunk-size trade-off, one above the other: (figure, title gap)."""
    fig, _, gap = panels(2, _TRADEOFF_PANELS, _TRADEOFF_HEIGHT, max_cols=1)
    return fig, gap


def _tradeoff_layout(fig, title: str, table: dict, cap: float, lowest: float, gap: int, **layout):
    import math

    us = [table[c]["us_per_token"] for c in table]
    fig.update_xaxes(type="log", title_text="time per token (µs)", tickvals=_decade_ticks(min(us) / 1.5, max(us) * 1.5),
                     row=1, col=1)
    fig.update_xaxes(title_text=wrap("token position (start of a 16-token window)"), row=2, col=1)
    fig.update_yaxes(type="log", range=[math.log10(lowest), math.log10(cap) + 0.2], dtick=1,
                     title_text="relative error of<br>the reads (%)")
    finish(fig, title, _TRADEOFF_HEIGHT, gap=gap, legend=False, **layout)


def _tradeoff_title(chunk: int, row: dict, baseline_us: float | None) -> str:
    import math

    err = row["error"]
    text = f"chunk {chunk}: {row['us_per_token']:.3g} µs per token"
    if baseline_us:
        text += f" ({baseline_us / row['us_per_token']:.1f}x token by token)"
    return text + ", drift " + (f"{100 * err:.3g} %" if math.isfinite(err) and err <= 10 else "diverged")


_TRADEOFF_PANELS = ("speed against drift, every chunk size", "drift along the stream")
_TRADEOFF_HEIGHT = 760


def chunk_tradeoff_figure(table: dict, chunk: int, profile: tuple | None = None, baseline_us: float | None = None,
                          cap: float = 1000.0, lowest: float = 0.001) -> go.Figure:
    """Speed against fidelity of the chunked MLP memory, one chunk size highlighted. Introduced in
    chapter 6.

    table: ``{chunk size: {"us_per_token": µs, "error": relative error}}`` (the grey curve, left);
    profile: ``(positions, drift in percent)`` of the highlighted chunk size along the stream
    (right; ``memorylib.chunk_study.drift_profile``); baseline_us: the token-by-token time per token,
    for the speed-up in the title. Errors above ``cap`` percent or not finite are drawn at ``cap``
    (diverged); ``lowest`` is the bottom of the error axis, in percent."""
    if chunk not in table:
        raise ValueError(f"chunk {chunk} is not in the table's chunk sizes {sorted(table)}")
    fig, gap = _tradeoff_panels()
    traces, row = _tradeoff_traces(table, chunk, profile, cap)
    for trace, panel in traces:
        fig.add_trace(trace, row=panel, col=1)
    _tradeoff_layout(fig, _tradeoff_title(chunk, row, baseline_us), table, cap, lowest, gap)
    return fig


def chunk_slider_figure(table: dict, profiles: dict, baseline_us: float | None = None, active: int | None = None,
                        cap: float = 1000.0, lowest: float = 0.001) -> go.Figure:
    """:func:`chunk_tradeoff_figure` with a slider over chunk sizes that works in a static page.
    Introduced in chapter 6.

    profiles: ``{chunk size: (positions, drift in percent)}``, one slider step per entry (each must
    be in ``table``); active: the chunk size shown first (default the first)."""
    if not profiles:
        raise ValueError("profiles must hold at least one chunk size")
    missing = [c for c in profiles if c not in table]
    if missing:
        raise ValueError(f"chunk sizes {missing} have a profile but no row in the table")
    sizes = list(profiles)
    active = sizes[0] if active is None else active
    if active not in profiles:
        raise ValueError(f"active must be one of {sizes}, got {active!r}")
    fig, gap = _tradeoff_panels()
    titles = []
    for j, c in enumerate(sizes):
        traces, row = _tradeoff_traces(table, c, profiles[c], cap)
        if j == 0:
            fig.add_trace(traces[0][0], row=1, col=1)                 # the grey curve, on every step
        for trace, panel in traces[1:]:
            trace.visible = c == active
            fig.add_trace(trace, row=panel, col=1)
        titles.append(wrap(_tradeoff_title(c, row, baseline_us)))
    steps = [{"method": "update", "label": str(c),
              "args": [{"visible": [True] + [k // 2 == j for k in range(2 * len(sizes))]},
                       {"title.text": titles[j]}]}
             for j, c in enumerate(sizes)]
    _tradeoff_layout(fig, titles[sizes.index(active)], table, cap, lowest, gap,
                     title_lines=max(_lines(t) for t in titles),
                     sliders=[{"active": sizes.index(active), "steps": steps, "pad": {"t": 60},
                               "currentvalue": {"prefix": "chunk size: "}}])
    return fig


# --- the sidecar (chapter 7) ----------------------------------------------------------------------


def sidecar_recall_figure(num_pairs: list, curves: dict, active=None,
                          title: str = "Recall beyond capacity: a memory with a sidecar beside it") -> go.Figure:
    """A slider over the sidecar's capacity ``K``; on each step, recall against the number of
    stored pairs, one panel per memory, one line per variant (memory alone, sidecar kept by
    surprise, sidecar kept at random, ...). Works in a static page with no kernel.

    num_pairs: the x values; curves: ``{K: {panel: {variant: [accuracy per num_pairs]}}}`` (from
    :func:`memorylib.recall.store_and_recall_with_sidecar`). Introduced in chapter 7."""
    import math

    if not curves:
        raise ValueError("curves must hold at least one capacity")
    capacities = list(curves)
    names = list(curves[capacities[0]])
    variants = list(curves[capacities[0]][names[0]])
    for K in capacities:
        for panel in names:
            for variant in variants:
                if len(curves[K][panel][variant]) != len(num_pairs):
                    raise ValueError(f"curve {K}/{panel}/{variant} has {len(curves[K][panel][variant])} values "
                                     f"for {len(num_pairs)} numbers of pairs")
    height = 230 + 300 * math.ceil(len(names) / MAX_COLS)
    fig, cells, gap = panels(len(names), names, height, shared_yaxes="all")
    per_step = len(names) * len(variants)
    active_index = capacities.index(active) if active in capacities else 0
    for j, K in enumerate(capacities):
        for p, panel in enumerate(names):
            for i, variant in enumerate(variants):
                fig.add_trace(go.Scatter(
                    x=list(num_pairs), y=_r(curves[K][panel][variant], 3), name=variant, mode="lines+markers",
                    line={"color": PALETTE[i % len(PALETTE)], "dash": "dot" if "bound" in variant else "solid"},
                    legendgroup=variant, showlegend=p == 0, visible=j == active_index,
                    hovertemplate=f"{panel}, {variant}, K={K}<br>%{{x}} pairs: recall %{{y:.3f}}<extra></extra>"),
                    row=cells[p][0], col=cells[p][1])
    steps = [{"method": "update", "label": str(K),
              "args": [{"visible": [k // per_step == j for k in range(len(capacities) * per_step)]}]}
             for j, K in enumerate(capacities)]
    fig.update_xaxes(type="log", tickvals=list(num_pairs), title="pairs stored")
    fig.update_yaxes(range=[-0.02, 1.05])
    fig.update_yaxes(title="recall", col=1)
    return finish(fig, title, height, gap=gap,
                  sliders=[{"active": active_index, "steps": steps,
                            "currentvalue": {"prefix": "sidecar capacity K: "}, "pad": {"t": 60}}])


# --- putting it together (chapter 8) ------------------------------------------------------------


def capstone_figure(table: dict, models: list, tasks: list, labels: dict | None = None,
                    title: str = "Held-out accuracy, mean over seeds", floors: dict | None = None) -> go.Figure:
    """A heatmap of models (rows) by tasks (columns); each cell shows the mean accuracy over seeds
    and its standard deviation, and the hover lists every seed. table: ``{model: {task: {"mean",
    "std", "values"}}}`` (:func:`memorylib.capstone.summary_table`); ``labels``: column titles.

    ``floors`` (``{task: accuracy}``, the keyless floor of :mod:`memorylib.floors`) makes each
    column's floor the line to beat: the column title shows it, a cell is coloured by how far its
    mean climbs from the floor towards 1 (white at the floor, red below it, blue above), and the
    hover says how far above or below the floor each seed is. Introduced in chapter 8."""
    labels, floors = labels or {}, floors or {}
    missing = [t for t in floors if t not in tasks]
    if missing:
        raise ValueError(f"floors given for tasks not shown: {missing}; tasks: {list(tasks)}")
    z, text, hover = [], [], []
    for m in models:
        row_z, row_t, row_h = [], [], []
        for t in tasks:
            cell, floor = table.get(m, {}).get(t), floors.get(t)
            if cell is None:
                row_z.append(None)
            elif floor is None:
                row_z.append(round(cell["mean"], 3))
            else:                                           # the share of the way from the floor to 1
                row_z.append(round((cell["mean"] - floor) / max(1 - floor, 1e-9), 3))
            row_t.append("" if cell is None else f"{cell['mean']:.2f}<br>± {cell['std']:.2f}")
            seeds = "" if cell is None else ", ".join(f"{v:.3f}" for v in cell["values"])
            vs_floor = "" if cell is None or floor is None else (
                f"<br>floor {floor:.3f}: {sum(v > floor for v in cell['values'])} of {len(cell['values'])} "
                "seeds above it")
            row_h.append("not run" if cell is None else f"{m}, {labels.get(t, t)}<br>seeds: {seeds}{vs_floor}")
        z.append(row_z)
        text.append(row_t)
        hover.append(row_h)
    names = [labels.get(t, t) for t in tasks]
    if floors:                     # red below the floor, white at it, blue towards 1
        scale = {"zmin": -1, "zmax": 1, "colorscale": [[0, "#c0392b"], [0.5, "#ffffff"], [1, "#2166ac"]]}
    else:
        scale = {"zmin": 0, "zmax": 1, "colorscale": "Blues"}
    fig = go.Figure(go.Heatmap(z=z, x=names, y=list(models), text=text, texttemplate="%{text}", customdata=hover,
                               hovertemplate="%{customdata}<extra></extra>", showscale=False,
                               **scale))                # each cell prints its number
    header = [wrap(labels.get(t, t), 10) + (f"<br>floor {floors[t]:.2f}" if t in floors else "") for t in tasks]
    return finish(fig, title, 170 + 34 * len(models), legend=False, gap=16 + 14 * max(map(_lines, header)),
                  yaxis={"autorange": "reversed"},
                  xaxis={"side": "top", "tickvals": names, "ticktext": header, "tickangle": 0,
                         "tickfont": {"size": 11}})


def forgetting_figure(results: dict, title: str = "Tasks one after another: learning and forgetting",
                      reference: dict | None = None) -> go.Figure:
    """One panel per model: held-out accuracy on every task (one line each) against training
    updates, with the phases (which task is being trained) shaded. results: ``{model:
    forgetting_curves(...) result}``. ``reference``: ``{model: {task: accuracy}}``, e.g. the same
    model trained on every task at once (:func:`memorylib.continual.joint_training`), drawn as a
    dotted line of the task's colour across the panel. Introduced in chapter 8."""
    import math

    if not results:
        raise ValueError("results must hold at least one model")
    reference = reference or {}
    unknown = sorted(set(reference) - set(results))
    if unknown:
        raise ValueError(f"reference names models without curves: {unknown}; the models: {list(results)}")
    models = list(results)
    height = 170 + 270 * math.ceil(len(models) / MAX_COLS)
    fig, cells, gap = panels(len(models), models, height, shared_yaxes="all")
    phases = results[models[0]]["phases"]
    for c, m in enumerate(models):
        row, col = cells[c]
        r = results[m]
        steps = r["step"]
        per_phase = max(steps) / len(phases)
        for i, task in enumerate(phases):
            fig.add_trace(go.Scatter(x=steps, y=_r(r["accuracy"][task], 3), name=task, mode="lines",
                                     line={"color": PALETTE[i % len(PALETTE)]}, legendgroup=task, showlegend=c == 0,
                                     hovertemplate=f"{m}: {task}<br>after %{{x}} updates: %{{y:.3f}}<extra></extra>"),
                          row=row, col=col)
            if task in reference.get(m, {}):
                y = round(reference[m][task], 3)
                fig.add_trace(go.Scatter(x=[min(steps), max(steps)], y=[y, y], mode="lines", legendgroup=task,
                                         name=f"{task}: all tasks at once", showlegend=False,
                                         line={"color": PALETTE[i % len(PALETTE)], "dash": "dot", "width": 1.5},
                                         hovertemplate=f"{m}: {task}, trained on all tasks at once: {y:.3f}"
                                                       "<extra></extra>"), row=row, col=col)
        # every other phase shaded (after the traces: plotly skips empty panels)
        for p in range(1, len(phases), 2):
            fig.add_vrect(x0=p * per_phase, x1=(p + 1) * per_phase, fillcolor="#eee", line_width=0,
                          layer="below", row=row, col=col)
        fig.update_xaxes(title="updates", nticks=4, row=row, col=col)
    fig.update_yaxes(range=[-0.02, 1.05])
    fig.update_yaxes(title="held-out accuracy", col=1)
    return finish(fig, title, height, gap=gap)


def dashboard_figure(results: dict, active=None,
                     title: str = "The full model, one mechanism off at a time") -> go.Figure:
    """Bars of held-out accuracy (with its interval) per task, one colour per model variant, and a
    slider over the sidecar's capacity ``K``. Works in a static page with no kernel.
    results: ``{label: {K: {task: evaluate(...) result}}}`` (:func:`memorylib.widgets.dashboard_results`).
    Introduced in chapter 8."""
    if not results:
        raise ValueError("results must hold at least one variant")
    labels = list(results)
    capacities = list(results[labels[0]])
    tasks = list(results[labels[0]][capacities[0]])
    active_index = capacities.index(active) if active in capacities else 0
    fig = go.Figure()
    for j, K in enumerate(capacities):
        for i, label in enumerate(labels):
            rs = [results[label][K][t] for t in tasks]
            acc = [round(r["accuracy"], 4) for r in rs]
            fig.add_trace(go.Bar(x=tasks, y=acc, name=label, marker={"color": PALETTE[i % len(PALETTE)]},
                                 visible=j == active_index, legendgroup=label,
                                 error_y={"type": "data", "symmetric": False,
                                          "array": [round(max(0.0, min(1.0, r["ci"][1]) - a), 4)
                                                    for r, a in zip(rs, acc)],
                                          "arrayminus": [round(max(0.0, a - max(0.0, r["ci"][0])), 4)
                                                         for r, a in zip(rs, acc)]},
                                 hovertemplate=f"{label}, K={K}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    steps = [{"method": "update", "label": str(K),
              "args": [{"visible": [k // len(labels) == j for k in range(len(capacities) * len(labels))]}]}
             for j, K in enumerate(capacities)]
    layout = dict(barmode="group", yaxis={"title": "held-out accuracy", "range": [0, 1.05]})
    if len(capacities) > 1:
        layout["sliders"] = [{"active": active_index, "steps": steps,
                              "currentvalue": {"prefix": "sidecar capacity K: "}, "pad": {"t": 40}}]
    return finish(fig, title, 480, **layout)


def write_by_role_figure(results: dict, title: str = "How strongly each kind of token is written") -> go.Figure:
    """Grouped bars: mean write strength per token role, one colour per model. results:
    ``{model: write_by_role(...) result}``; roles in the order of :data:`memorylib.analysis.ROLES`,
    a role a model never saw is left out of its bars. Introduced in chapter 8."""
    from .analysis import ROLES

    if not results:
        raise ValueError("results must hold at least one model")
    roles = [r for r in ROLES if any(r in res for res in results.values())]
    fig = go.Figure()
    for i, (name, res) in enumerate(results.items()):
        shown = [r for r in roles if r in res]
        fig.add_trace(go.Bar(x=shown, y=[round(res[r]["mean"], 4) for r in shown], name=name,
                             marker={"color": PALETTE[i % len(PALETTE)]},
                             customdata=[res[r]["n"] for r in shown],
                             hovertemplate=f"{name}<br>%{{x}}: %{{y:.3f}} (%{{customdata}} tokens)<extra></extra>"))
    return finish(fig, title, 460, barmode="group",
                  xaxis={"tickvals": roles, "ticktext": [wrap(r.replace(": ", "<br>"), 10) for r in roles]},
                  yaxis={"title": "mean write strength", "rangemode": "tozero"})


def lifetime_figure(curves: dict, x_title: str = "tokens since it was cached",
                    title: str = "How long a token stays in the sidecar") -> go.Figure:
    """Kaplan-Meier survival curves as steps: the fraction of items still kept against time.
    curves: ``{name: {"time": [...], "alive": [...], "n": int}}`` (``alive`` from
    :func:`memorylib.stats.kaplan_meier` at each ``time``). Introduced in chapter 8."""
    if not curves:
        raise ValueError("curves must hold at least one curve")
    fig = go.Figure()
    for i, (name, c) in enumerate(curves.items()):
        if len(c["time"]) != len(c["alive"]):
            raise ValueError(f"{name}: time and alive must have the same length, got {len(c['time'])} and "
                             f"{len(c['alive'])}")
        fig.add_trace(go.Scatter(x=list(c["time"]), y=_r(c["alive"], 4), name=f"{name} (n={c['n']})", mode="lines",
                                 line={"color": PALETTE[i % len(PALETTE)], "shape": "hv"},
                                 hovertemplate=f"{name}<br>after %{{x}} tokens: %{{y:.3f}} still kept<extra></extra>"))
    return finish(fig, title, 420, xaxis={"title": wrap(x_title)},
                  yaxis={"title": "fraction still kept", "range": [-0.02, 1.05]})


# --- the command line (memorylib plot) ---------------------------------------------------------


def run_figure(metrics: dict):
    """Training curves (loss and accuracy at answers) and held-out accuracy by distance, side by
    side, from a run's ``metrics.json`` (or any :func:`~memorylib.experiments.run` result)."""
    label = metrics.get("model", "model")
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08,
                        subplot_titles=("training loss at answers", "training accuracy at answers",
                                        "held-out accuracy by distance"))
    for trace in training_curves_figure({label: metrics}).data:
        fig.add_trace(trace, row=1, col=1 if trace.xaxis in (None, "x") else 2)
    evals = {k: r for k, r in metrics["eval"].items() if isinstance(r, dict) and "by_distance" in r}
    for trace in accuracy_by_distance_figure(evals).data:
        fig.add_trace(trace, row=1, col=3)
    chances = [r["chance"] for r in evals.values() if r.get("chance") is not None]
    if chances:
        fig.add_hline(y=min(chances), line={"dash": "dash", "color": "#888"}, row=1, col=3,
                      annotation_text="chance", annotation_position="top right")
    title = f"{label} on {metrics['task']}" if "task" in metrics else label
    if "seed" in metrics and "steps" in metrics:
        title += f", seed {metrics['seed']}, {metrics['steps']} steps"
    finish(fig, title, 420, gap=30)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_xaxes(title_text="step", row=1, col=2)
    fig.update_xaxes(title_text="distance to the evidence (tokens)", row=1, col=3)
    fig.update_yaxes(range=[-0.02, 1.05], row=1, col=2)
    fig.update_yaxes(range=[-0.02, 1.05], row=1, col=3)
    return fig


def eval_figure(results: dict[str, dict], title: str | None = None, line: str = "chance"):
    """Held-out accuracy per task (or model), a bar with its 95 % interval, and each result's
    ``chance`` as a tick named ``line`` (e.g. "keyless floor" when ``chance`` holds the floor)."""
    labels = list(results)
    acc = [r["accuracy"] for r in results.values()]
    fig = go.Figure()
    fig.add_trace(go.Bar(
        x=labels, y=acc, name="accuracy", marker={"color": PALETTE[0], "opacity": 0.7},
        error_y={"type": "data", "symmetric": False,
                 "array": [round(r["ci"][1] - r["accuracy"], 4) for r in results.values()],
                 "arrayminus": [round(r["accuracy"] - r["ci"][0], 4) for r in results.values()]},
        customdata=[[r["ci"][0], r["ci"][1], r.get("num_answers")] for r in results.values()],
        hovertemplate="%{x}<br>accuracy %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                      "<br>n=%{customdata[2]} answers<extra></extra>"))
    fig.add_trace(go.Scatter(x=labels, y=[r["chance"] for r in results.values()], mode="markers", name=line,
                             marker={"symbol": "line-ew-open", "size": 28, "color": "#555",
                                     "line": {"width": 2}}))
    return finish(fig, title, 420, yaxis={"title": "held-out answer accuracy<br>(95% CI)", "range": [0, 1.05]})


def frontier_figure(curves: dict, floors: dict, active=None, reference=("full attention",),
                    title: str = "How much recall a byte of state buys", panel: str = "{} haystack",
                    slider: str = "needles in the stream, one asked: ", labels: dict | None = None) -> go.Figure:
    """The recall–state frontier: a slider over the number of needles ``N``; on each step, one
    panel per haystack with accuracy against bytes of state (log axis), each memory family a line
    through its sizes (markers at the mean over training seeds, bars from the lowest to the highest
    seed), the ``reference`` families (full attention, whose key-value cache grows with the stream)
    as stars, and the keyless floor as a dotted line. With one step there is no slider.

    curves, floors: from :func:`memorylib.analysis.frontier_curves` (or ``{step: {panel: curves}}``
    from :func:`memorylib.capstone.matched_frontier`); ``panel`` formats each panel's title from its
    key, ``slider`` is the slider's prefix; ``labels``: shorter legend names for some families. The
    legend gets room for its rows at a phone's width. Introduced in chapter 7."""
    labels = labels or {}
    reference = (reference,) if isinstance(reference, str) else tuple(reference or ())
    if not curves:
        raise ValueError("curves must hold at least one number of needles")
    needles = list(curves)
    haystacks = list(curves[needles[0]])
    families = list(dict.fromkeys(f for n in needles for h in haystacks for f in curves[n][h]))
    plain = [f for f in families if f not in reference]
    xs = [p["state_bytes"] for n in needles for h in haystacks for f in curves[n][h] for p in curves[n][h][f]]
    lo, hi = min(xs), max(xs)
    height = 560
    fig, cells, gap = panels(len(haystacks), [panel.format(h) for h in haystacks], height, shared_yaxes="all")
    owner = []                                           # the slider step of every trace
    active_index = needles.index(active) if active in needles else len(needles) - 1
    for j, n in enumerate(needles):
        for p, haystack in enumerate(haystacks):
            row, col = cells[p]
            for family in families:
                pts = curves[n][haystack].get(family, [])
                if not pts:
                    continue
                star = family in reference
                k = plain.index(family) if not star else 0       # colours go to the families that are not stars
                colour = ("#333", "#999")[reference.index(family) % 2] if star else PALETTE[k % len(PALETTE)]
                symbol = "star" if star else ("circle", "diamond")[k // len(PALETTE) % 2]
                fig.add_trace(go.Scatter(
                    x=[q["state_bytes"] for q in pts], y=[q["mean"] for q in pts], name=labels.get(family, family),
                    mode="markers" if star else "lines+markers",
                    marker={"color": colour, "symbol": symbol, "size": 12 if star else 8},
                    line={"color": colour},
                    error_y={"type": "data", "symmetric": False, "color": colour, "thickness": 1,
                             "array": [round(q["high"] - q["mean"], 4) for q in pts],
                             "arrayminus": [round(q["mean"] - q["low"], 4) for q in pts]},
                    customdata=[[q["size"] if q["size"] is not None else "", len(q["seeds"]), q["low"], q["high"]]
                                for q in pts],
                    legendgroup=family, showlegend=p == 0, visible=j == active_index,
                    hovertemplate=(f"{family} %{{customdata[0]}}<br>%{{x:,}} bytes: %{{y:.3f}} "
                                   "(%{customdata[1]} seeds, %{customdata[2]:.3f}–%{customdata[3]:.3f})"
                                   "<extra></extra>")), row=row, col=col)
                owner.append(j)
            fig.add_trace(go.Scatter(
                x=[lo / 1.5, hi * 1.5], y=[floors[n][haystack]] * 2, mode="lines", name="keyless floor",
                line={"color": "#888", "dash": "dot"}, legendgroup="floor", showlegend=p == 0,
                visible=j == active_index, hovertemplate=f"keyless floor {floors[n][haystack]:.3f}<extra></extra>"),
                row=row, col=col)
            owner.append(j)
    steps = [{"method": "update", "label": str(n), "args": [{"visible": [k == j for k in owner]}]}
             for j, n in enumerate(needles)]
    fig.update_xaxes(type="log", title="bytes of state", range=[_log10(lo / 1.5), _log10(hi * 1.5)])
    fig.update_yaxes(range=[-0.02, 1.05])
    fig.update_yaxes(title="accuracy", col=1)
    if len(needles) == 1:
        return finish(fig, title, height, gap=gap)
    # a phone's legend row holds two short names (16 characters or fewer) or one long one
    names = [labels.get(f, f) for f in families] + ["keyless floor"]
    long = sum(len(n) > 16 for n in names)
    return finish(fig, title, height, gap=gap, legend_rows=long + (len(names) - long + 1) // 2,
                  sliders=[{"active": active_index, "steps": steps, "currentvalue": {"prefix": slider},
                            "pad": {"t": 60}}])


def _log10(x: float) -> float:
    import math

    return round(math.log10(x), 4)


def family_figure(summary: dict, models: list, active=None, labels: dict | None = None,
                  title: str = "The needle family: keyed recall in a long stream") -> go.Figure:
    """A slider over the stream's length; on each step, one panel per haystack (one above the
    other, so that every variant's name fits under its bars unturned) with a group of bars per
    variant of the needle family: each model's accuracy (the mean over training seeds; the bar
    spans the lowest to the highest seed) and the keyless floor on the same streams (a grey tick).

    summary: :func:`memorylib.analysis.family_summary`; models: the models to show, in order (a
    model not measured at a cell is left out of it); labels: ``{variant: shown name}``, short
    names (about 8 characters) for the variants. Introduced in chapter 7."""
    if not summary:
        raise ValueError("summary must hold at least one length")
    lengths = list(summary)
    haystacks = list(dict.fromkeys(h for n in lengths for h in summary[n]))
    labels = labels or {}
    height = 180 + 300 * len(haystacks)
    fig, cells, gap = panels(len(haystacks), [f"{h} haystack" for h in haystacks], height, max_cols=1,
                             shared_xaxes=False)
    owner, orders = [], []
    active_index = lengths.index(active) if active in lengths else 0
    for j, n in enumerate(lengths):
        order = list(dict.fromkeys(v for h in haystacks for v in summary[n].get(h, {})))
        orders.append([labels.get(v, v) for v in order])
        for p, haystack in enumerate(haystacks):
            row, col = cells[p]
            by_variant = summary[n].get(haystack, {})
            for i, model in enumerate(models):
                shown = [v for v in order if model in by_variant.get(v, {})]
                if not shown:
                    continue
                e = [by_variant[v][model] for v in shown]
                fig.add_trace(go.Bar(
                    x=[labels.get(v, v) for v in shown], y=[x["mean"] for x in e], name=model, offsetgroup=str(i),
                    marker_color=PALETTE[i % len(PALETTE)], legendgroup=model, showlegend=p == 0,
                    visible=j == active_index,
                    error_y={"type": "data", "symmetric": False, "thickness": 1, "color": "#333",
                             "array": [round(x["high"] - x["mean"], 4) for x in e],
                             "arrayminus": [round(x["mean"] - x["low"], 4) for x in e]},
                    customdata=[[len(x["seeds"]), x["low"], x["high"], x["streams"]] for x in e],
                    hovertemplate=(f"{model}<br>%{{x}}: %{{y:.3f}} (%{{customdata[0]}} seeds, "
                                   "%{customdata[1]:.3f}–%{customdata[2]:.3f}; %{customdata[3]} streams each)"
                                   "<extra></extra>")), row=row, col=col)
                owner.append(j)
            measured = [v for v in order if by_variant.get(v)]
            fig.add_trace(go.Scatter(
                x=[labels.get(v, v) for v in measured],
                y=[next(iter(by_variant[v].values()))["floor"] for v in measured], mode="markers",
                name="keyless floor", marker={"symbol": "line-ew-open", "size": 34, "color": "#555",
                                              "line": {"width": 2, "color": "#555"}},
                legendgroup="floor", showlegend=p == 0, visible=j == active_index,
                hovertemplate="keyless floor %{y:.3f}<extra></extra>"), row=row, col=col)
            owner.append(j)
    axes = {f"xaxis{'' if k == 0 else k + 1}.categoryarray" for k in range(len(haystacks))}
    steps = [{"method": "update", "label": f"{n:,}",
              "args": [{"visible": [k == j for k in owner]}, {a: orders[j] for a in sorted(axes)}]}
             for j, n in enumerate(lengths)]
    fig.update_xaxes(categoryorder="array", categoryarray=orders[active_index])  # turned only on a phone
    fig.update_yaxes(range=[0, 1.05], title="accuracy")
    return finish(fig, title, height, gap=gap, barmode="group",
                  sliders=[{"active": active_index, "steps": steps,
                            "currentvalue": {"prefix": "tokens in the stream: "}, "pad": {"t": 50}}])
