"""Live controls for Jupyter and Colab. Introduced in chapter 1.

Each widget is an ipywidgets control driving a pure function of :mod:`memorylib.figures`
through ``ipywidgets.interactive_output``; the static book shows the same effect as a plotly
slider over precomputed frames (``figures.window_slider_figure``).
"""

from __future__ import annotations

from contextlib import contextmanager

from .figures import accuracy_by_distance_figure
from .training import evaluate


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("memorylib.widgets needs ipywidgets: pip install 'memorylib[widgets]'") from err
    return ipywidgets


@contextmanager
def attention_window(model, window: int | None):
    """Temporarily set ``model.window`` (``None`` = full attention)."""
    old = model.window
    model.window = window
    try:
        yield model
    finally:
        model.window = old


def window_curve(model, task, window: int | None, **eval_kwargs) -> dict:
    """Evaluate ``model`` with its attention restricted to ``window`` (``None`` = full)."""
    with attention_window(model, window):
        return evaluate(model, task, **eval_kwargs)


def window_explorer(model, task, windows=(4, 8, 16, 32, 64, None), reference: dict | None = None,
                    num_examples: int = 256, seed: int = 0):
    """A slider that restricts a trained model's attention to a window and re-evaluates it live.

    Returns an ``ipywidgets.VBox`` (slider above, figure below). ``reference``:
    ``{name: result}`` curves drawn on every redraw for comparison.
    """
    w = _ipywidgets()
    options = [("full" if x is None else str(x), 0 if x is None else x) for x in windows]
    slider = w.SelectionSlider(options=options, value=options[0][1], description="window",
                               continuous_update=False)

    def draw(window: int):
        res = window_curve(model, task, window or None, num_examples=num_examples, seed=seed)
        curves = {**(reference or {}), f"window {window or 'full'}": res}
        rf = None
        if window:
            with attention_window(model, window):
                rf = model.receptive_field
        fig = accuracy_by_distance_figure(curves, chance=task.chance,
                                          marks={f"reach {rf}": rf} if rf else None,
                                          title=f"window {window or 'full'}: accuracy {res['accuracy']:.3f}")
        fig.show()

    out = w.interactive_output(draw, {"window": slider})
    return w.VBox([slider, out])
