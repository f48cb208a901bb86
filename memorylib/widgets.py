"""Live controls for Jupyter and Colab. Introduced in chapter 1.

Each widget is an ipywidgets control driving a pure function of :mod:`memorylib.figures`, drawn
into an ``ipywidgets.Output`` whenever a control moves (:func:`live_output`); the static book
shows the same effect as a plotly slider over precomputed frames
(``figures.window_slider_figure``, ``figures.parameter_slider_figure``).

When no person watches the kernel (:func:`memorylib.book.headless`: ``MEMORYLIB_BOOK=1`` while the
book's outputs are produced by papermill, nbval and CI, or ``MEMORYLIB_HEADLESS=1`` in CI's run of
the reader's path) the first drawing is skipped. Headless executors (nbclient, behind papermill and
nbval) emulate the Output widget's capture of displays themselves, and with ``interactive_output`` that intermittently
deadlocks: the kernel finishes the cell and the executor waits forever (jupyter/nbclient#312,
jupyter/nbconvert#1921; it hung this book's CI). Instead the output holds a short note (set as the
Output widget's state, which involves no capture) and the controls are disabled, so the static book
shows what is true there: the controls, greyed out, over a note that they run live in Jupyter and
Colab and that the figure before them is the same experiment, precomputed. A moved control still
redraws (tests drive the controls headless).
"""

from __future__ import annotations

from . import figures
from .book import headless
from .figures import accuracy_by_distance_figure

# the knobs are used here, and the chapters import them from here
from .knobs import attention_window, memory_size, sidecar_capacity, surprise_settings
from .training import evaluate


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("memorylib.widgets needs ipywidgets: pip install 'memorylib[widgets]'") from err
    return ipywidgets


LIVE_NOTE = ("These controls run the experiment live in Jupyter or Colab (the launch buttons at the top of the "
             "page). This static page cannot run it: the figure above is the same experiment, precomputed.")


def live_note(text: str = LIVE_NOTE) -> dict:
    """The display output a headless kernel leaves in a live explorer (:func:`live_output`)."""
    import html

    shown = f'<p class="memorylib-live-note"><em>{html.escape(text)}</em></p>'
    return {"output_type": "display_data", "metadata": {}, "data": {"text/plain": text, "text/html": shown}}


def live_output(draw, controls: dict, note: str = LIVE_NOTE):
    """An ``ipywidgets.Output`` that shows ``draw(**{name: control.value})`` and redraws it
    whenever a control in ``controls`` (``{name: widget}``) changes value. The first drawing is
    made at once, except in a headless kernel, where the output holds ``note`` and the controls
    are disabled (module docstring); a moved control redraws in either case."""
    w = _ipywidgets()
    out = w.Output()

    def redraw(change=None):
        with out:
            out.clear_output(wait=True)
            draw(**{name: control.value for name, control in controls.items()})

    for control in controls.values():
        control.observe(redraw, names="value")
    if headless():
        out.outputs = (live_note(note),)
        for control in controls.values():
            control.disabled = True
    else:
        redraw()
    return out


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

    out = live_output(draw, {"window": slider})
    return w.VBox([slider, out])


# --- slot memory (chapters 2-3) ----------------------------------------------------------------


def ablation_curve(model, task, num_slots: int, **eval_kwargs) -> dict:
    """``evaluate(model, task, **eval_kwargs)`` with the memory resized to ``num_slots`` slots
    (restored afterwards): the pure function behind the live controls of chapters 2 and 3.
    Introduced in chapter 2."""
    with memory_size(model, num_slots):
        return evaluate(model, task, **eval_kwargs)


def memory_size_explorer(model, task, sizes=(2, 4, 8, 16, 32), reference: dict | None = None,
                         num_examples: int = 256, seed: int = 0):
    """A slider over the number of slots of a trained slot memory model, re-evaluated live
    (:func:`ablation_curve`, drawn by ``figures.accuracy_by_distance_figure``).

    Starts at the model's own size when it is one of ``sizes``. ``reference``: ``{name: result}``
    curves drawn on every redraw. Returns an ``ipywidgets.VBox`` (slider, output). The static
    book shows the same effect with ``figures.parameter_slider_figure(..., parameter="slots")``.
    Introduced in chapter 2.
    """
    if not sizes:
        raise ValueError("sizes must hold at least one number of slots")
    w = _ipywidgets()
    slider = w.SelectionSlider(options=[str(n) for n in sizes], value=str(model.num_slots)
                               if str(model.num_slots) in [str(n) for n in sizes] else str(sizes[0]),
                               description="slots", continuous_update=False)

    def draw(slots: str):
        res = ablation_curve(model, task, int(slots), num_examples=num_examples, seed=seed)
        fig = accuracy_by_distance_figure({**(reference or {}), f"{slots} slots": res}, chance=task.chance,
                                          title=f"{slots} slots: accuracy {res['accuracy']:.3f}")
        fig.show()

    out = live_output(draw, {"slots": slider})
    return w.VBox([slider, out])


def ablation_explorer(models: dict, task, sizes=(2, 4, 8, 16), num_examples: int = 256, seed: int = 0):
    """Toggle buttons choose a trained model (e.g. erase on/off, a write policy) and a slider
    sets its number of slots (:func:`ablation_curve`); accuracy by distance is redrawn live with
    the accuracy and the stale-answer rate in the title. ``models``: ``{name: trained model}``;
    the slider starts at the last size. Returns an ``ipywidgets.VBox`` (buttons, slider,
    output). Introduced in chapter 3."""
    w = _ipywidgets()
    if not models:
        raise ValueError("models must hold at least one trained model")
    if not sizes:
        raise ValueError("sizes must hold at least one number of slots")
    choice = w.ToggleButtons(options=list(models), description="model")
    slider = w.SelectionSlider(options=[str(n) for n in sizes], value=str(sizes[-1]), description="slots",
                               continuous_update=False)

    def draw(name: str, slots: str):
        res = ablation_curve(models[name], task, int(slots), num_examples=num_examples, seed=seed)
        stale = "n/a" if res["stale_rate"] is None else f"{res['stale_rate']:.3f}"
        fig = accuracy_by_distance_figure({f"{name}, {slots} slots": res}, chance=task.chance,
                                          title=f"{name}, {slots} slots: accuracy {res['accuracy']:.3f}, "
                                                f"stale answers {stale}")
        fig.show()

    out = live_output(draw, {"name": choice, "slots": slider})
    return w.VBox([choice, slider, out])


def threshold_curve(model, task, threshold: float, **eval_kwargs) -> dict:
    """Evaluate a surprise-gated model with its surprise threshold set to ``threshold``."""
    with surprise_settings(model, threshold=threshold):
        return evaluate(model, task, **eval_kwargs)


def surprise_explorer(model, tasks: dict, thresholds=(0.1, 0.3, 0.5, 0.7, 0.9, 0.98), num_examples: int = 256,
                      seed: int = 0):
    """A slider over the surprise threshold of a trained surprise-gated model; for each haystack
    in ``tasks`` (``{name: task}``) the surprise and write strength of one sequence are redrawn
    (``figures.surprise_trace_figure``) with the held-out accuracy at that threshold in the
    title. A second slider sets the temperature. Returns an ``ipywidgets.VBox``. The static
    book shows the same effect with ``figures.threshold_slider_figure``. Introduced in chapter 4."""
    import torch

    w = _ipywidgets()
    if not tasks:
        raise ValueError("tasks must hold at least one task")
    if not thresholds:
        raise ValueError("thresholds must hold at least one value")
    slider = w.SelectionSlider(options=[str(t) for t in thresholds], value=str(thresholds[len(thresholds) // 2]),
                               description="threshold", continuous_update=False)
    temperatures = ["0.02", "0.05", "0.1", "0.2", "0.5"]
    temp = w.SelectionSlider(options=temperatures, value=str(model.temperature)
                             if str(model.temperature) in temperatures else "0.1",
                             description="temperature", continuous_update=False)
    batches = {name: task.sample(1, seed=seed) for name, task in tasks.items()}

    def draw(threshold: str, temperature: str):
        thr, tmp = float(threshold), float(temperature)
        with surprise_settings(model, threshold=thr, temperature=tmp), torch.no_grad():
            traces = {name: model(b.tokens, return_trace=True)[1] for name, b in batches.items()}
            accs = {name: evaluate(model, task, num_examples=num_examples, seed=seed)["accuracy"]
                    for name, task in tasks.items()}
        text = ", ".join(f"{name} {a:.3f}" for name, a in accs.items())
        figures.surprise_trace_figure(traces, {n: b.tokens for n, b in batches.items()}, threshold=thr,
                              title=f"threshold {thr}, temperature {tmp}: accuracy {text}").show()

    out = live_output(draw, {"threshold": slider, "temperature": temp})
    return w.VBox([w.HBox([slider, temp]), out])


# --- chunked parallelism (chapter 6) ------------------------------------------------------------


def chunk_size_explorer(stream: dict, learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0), lr: float = 0.1,
                        chunk_sizes=(2, 4, 8, 16, 32, 64, 128, 256), chunk_size: int = 16,
                        momentum: float = 0.0, retain: float = 1.0, repeats: int = 3):
    """A slider over the chunk size of the MLP memory and one over its learning rate, on one
    stream (``memorylib.chunk_study.unit_stream``). Each setting is run live: the chunked form is
    timed in float32 (median of ``repeats``) and its reads compared with the token-by-token ones
    (float64); ``figures.chunk_tradeoff_figure`` is redrawn with every chunk size measured so far
    at that learning rate and the drift along the stream (``chunked.drift_profile``). The static
    book shows the same with ``figures.chunk_slider_figure`` over precomputed chunk sizes.
    Returns an ``ipywidgets.VBox``. Introduced in chapter 6."""
    import math

    from .chunk_study import drift_profile, relative_error, run_mlp_memory, time_call
    w = _ipywidgets()
    if chunk_size not in chunk_sizes or lr not in learning_rates:
        raise ValueError(f"chunk_size must be one of {tuple(chunk_sizes)} and lr one of {tuple(learning_rates)}, "
                         f"got {chunk_size!r}, {lr!r}")
    size = w.SelectionSlider(options=[str(c) for c in chunk_sizes], value=str(chunk_size), description="chunk size",
                             continuous_update=False)
    rate = w.SelectionSlider(options=[str(x) for x in learning_rates], value=str(lr), description="learning rate",
                             continuous_update=False)
    fast = {k: (v.float() if hasattr(v, "float") else v) for k, v in stream.items()}
    T = stream["k"].shape[0] * stream["k"].shape[2]
    cache: dict = {}

    def measure(lr_value: float, c: int | None):
        key = (lr_value, c)
        if key not in cache:
            reads = run_mlp_memory(stream, lr_value, c, momentum, retain)
            seconds = time_call(lambda: run_mlp_memory(fast, lr_value, c, momentum, retain), repeats)
            cache[key] = (reads, 1e6 * seconds / T)
        return cache[key]

    def draw(chunk: str, lr_value: str):
        c, x = int(chunk), float(lr_value)
        ref, ref_us = measure(x, None)
        if not bool(ref.isfinite().all()):
            print(f"at learning rate {x} the token-by-token memory itself diverges on this stream")
            return
        measure(x, c)
        table = {k: {"us_per_token": us, "error": relative_error(reads, ref)}
                 for (lr_k, k), (reads, us) in cache.items() if lr_k == x and k is not None}
        reads = cache[(x, c)][0]
        profile = drift_profile(reads, ref) if math.isfinite(table[c]["error"]) else None
        fig = figures.chunk_tradeoff_figure(table, c, profile, baseline_us=ref_us)
        fig.update_layout(title=f"learning rate {x}, {fig.layout.title.text or ''} (timed live)")
        fig.show()

    out = live_output(draw, {"chunk": size, "lr_value": rate})
    return w.VBox([w.HBox([size, rate]), out])


def sidecar_curves(kind: str, capacity: int, num_pairs=(8, 16, 32, 64, 128, 256), trials: int = 32,
                   seed: int = 0) -> dict:
    """``{variant: [recall per number of pairs]}`` for a memory ``kind`` ("delta" or "additive")
    with a sidecar of ``capacity`` pairs: the memory alone, the sidecar kept by surprise, the
    sidecar kept at random, and the bound (memory alone + K / N). Introduced in chapter 7."""
    from .recall import store_and_recall_with_sidecar

    rows = {"memory alone": [], "+ sidecar, kept by surprise": [], "+ sidecar, kept at random": [],
            "bound: memory + K/N": []}
    for n in num_pairs:
        by_surprise = store_and_recall_with_sidecar(kind, n, capacity, trials=trials, seed=seed)
        at_random = store_and_recall_with_sidecar(kind, n, capacity, trials=trials, seed=seed, rank="random")
        rows["memory alone"].append(by_surprise["memory_only"])
        rows["+ sidecar, kept by surprise"].append(by_surprise["accuracy"])
        rows["+ sidecar, kept at random"].append(at_random["accuracy"])
        rows["bound: memory + K/N"].append(round(min(1.0, by_surprise["memory_only"] + capacity / n), 4))
    return rows


def sidecar_explorer(kinds=("delta", "additive"), capacities=(0, 4, 8, 16, 32, 64),
                     num_pairs=(8, 16, 32, 64, 128, 256), capacity: int = 16, trials: int = 32, seed: int = 0):
    """A slider over the sidecar's capacity and a choice of memory; each setting writes and
    recalls the pairs live (:func:`sidecar_curves`) and redraws
    :func:`~memorylib.figures.sidecar_recall_figure`. The static book shows the same figure with
    precomputed capacities. Returns an ``ipywidgets.VBox``. Introduced in chapter 7."""
    w = _ipywidgets()
    if capacity not in capacities:
        raise ValueError(f"capacity must be one of {tuple(capacities)}, got {capacity!r}")
    size = w.SelectionSlider(options=[str(c) for c in capacities], value=str(capacity), description="sidecar K",
                             continuous_update=False)
    memory = w.ToggleButtons(options=list(kinds), value=kinds[0], description="memory")

    def draw(K: str, kind: str):
        curves = {int(K): {kind: sidecar_curves(kind, int(K), num_pairs, trials, seed)}}
        title = f"{kind} memory with a sidecar of {K} pairs (live)"
        figures.sidecar_recall_figure(list(num_pairs), curves, title=title).show()

    out = live_output(draw, {"K": size, "kind": memory})
    return w.VBox([w.HBox([size, memory]), out])


# --- the full model (chapters 7-8) ---------------------------------------------------------------


SWITCHES = ("erase", "surprise", "sidecar")


def variant_switches(model) -> dict:
    """``{"erase", "surprise", "sidecar"}`` -> bool for a :class:`~memorylib.models.FullMemoryModel`:
    which of the three mechanisms it was built with."""
    return {"erase": model.kind == "delta", "surprise": bool(model.surprise), "sidecar": model.sidecar > 0}


def _per_task(label: str, entry, tasks: dict) -> dict:
    """``{task name: model}`` from one model (used for every task) or a ``{task name: model}`` dict."""
    if isinstance(entry, dict):
        missing = [t for t in tasks if t not in entry]
        if missing:
            raise ValueError(f"models[{label!r}] has no model for tasks {missing}; it has {list(entry)}")
        return {t: entry[t] for t in tasks}
    return {t: entry for t in tasks}


def _any_model(entry):
    return next(iter(entry.values())) if isinstance(entry, dict) else entry


def dashboard_results(models: dict, tasks: dict, capacities=(0, 4, 16, 64), num_examples: int = 128,
                      seed: int = 0) -> dict:
    """``{label: {K: {task: evaluate(...)}}}``: every trained full-model variant of ``models`` on
    every task of ``tasks`` (``{name: task}``), with its sidecar run at every capacity ``K`` (a
    variant without a sidecar is evaluated once and repeated). ``models``: ``{label: model}``, or
    ``{label: {task name: model}}`` when each task has its own trained weights. The pure function
    behind chapter 8's dashboard. Introduced in chapter 8."""
    out = {}
    for label, entry in models.items():
        by_task = _per_task(label, entry, tasks)
        fixed = all(m.sidecar == 0 for m in by_task.values())      # no sidecar: K changes nothing
        out[label], once = {}, None
        for K in capacities:
            if fixed and once is not None:
                out[label][K] = once
                continue
            res = {}
            for name, task in tasks.items():
                with sidecar_capacity(by_task[name], K):
                    res[name] = evaluate(by_task[name], task, num_examples=num_examples, seed=seed)
            out[label][K] = res
            once = res if fixed else None
    return out


def ablation_dashboard(models: dict, tasks: dict, capacities=(0, 4, 16, 64), capacity: int = 16,
                       num_examples: int = 128, seed: int = 0):
    """Toggle erase, surprise and the sidecar, and slide the sidecar's capacity: each setting picks
    the trained variant with those switches (``models``: ``{label: FullMemoryModel}`` or
    ``{label: {task name: FullMemoryModel}}``; a combination that was not trained says so) and
    evaluates it live on every task of ``tasks``, drawn by :func:`~memorylib.figures.dashboard_figure`.
    The static book shows the same figure over precomputed settings. Returns an ``ipywidgets.VBox``.
    Introduced in chapter 8."""
    w = _ipywidgets()
    if capacity not in capacities:
        raise ValueError(f"capacity must be one of {tuple(capacities)}, got {capacity!r}")
    for label, entry in models.items():
        _per_task(label, entry, tasks)                  # every task has a model
    by_switches = {tuple(variant_switches(_any_model(m)).values()): label for label, m in models.items()}
    toggles = {name: w.ToggleButton(value=True, description=name) for name in SWITCHES}
    size = w.SelectionSlider(options=[str(c) for c in capacities], value=str(capacity), description="sidecar K",
                             continuous_update=False)
    cache: dict = {}

    def draw(erase: bool, surprise: bool, sidecar: bool, K: str):
        label = by_switches.get((erase, surprise, sidecar))
        if label is None:
            def off(lab):
                switches = variant_switches(_any_model(models[lab]))
                return ", ".join(n for n, on in switches.items() if not on) or "all on"
            trained = ", ".join(f"{lab} ({off(lab)} off)" for lab in models)
            print(f"no model was trained with erase={erase}, surprise={surprise}, sidecar={sidecar}; "
                  f"the sweep switches off one mechanism at a time: {trained}")
            return
        k = int(K) if sidecar else 0
        if (label, k) not in cache:
            cache[label, k] = dashboard_results({label: models[label]}, tasks, (k,), num_examples, seed)[label][k]
        figures.dashboard_figure({label: {k: cache[label, k]}}, title=f"{label}, sidecar K={k} (evaluated live)").show()

    out = live_output(draw, {**toggles, "K": size})
    return w.VBox([w.HBox([*toggles.values(), size]), out])


# --- the needle family (chapter 7) -------------------------------------------------------------------------


def needle_curves(models: dict, num_needles: int, haystack: str, seq_len: int = 512, **eval_kwargs) -> dict:
    """``{name: evaluate(...)}`` of every model in ``models`` on the needle family's multi-key
    variant (one of ``num_needles`` needles asked; 1: the single needle) at ``seq_len`` tokens, each
    with ``"floor"``: the keyless floor's accuracy on the same sequences (computed once).
    Introduced in chapter 7."""
    from .floors import keyless_floor
    from .registry import build_task

    task = build_task("needle_family", variant="single" if num_needles == 1 else "multi_key", seq_len=seq_len,
                      num_needles=num_needles, filler=haystack)
    floor = keyless_floor(task, num_examples=eval_kwargs.get("num_examples", 512), seed=eval_kwargs.get("seed", 0))
    return {name: {**evaluate(model, task, **eval_kwargs), "floor": floor["accuracy"]}
            for name, model in models.items()}


def needle_curve(model, num_needles: int, haystack: str, seq_len: int = 512, **eval_kwargs) -> dict:
    """:func:`needle_curves` for one model."""
    return needle_curves({"model": model}, num_needles, haystack, seq_len, **eval_kwargs)["model"]


def needle_explorer(models: dict, needles=(1, 2, 4, 8, 16), haystacks=("random", "markov"), seq_len: int = 512,
                    num_needles: int = 8, num_examples: int = 128, seed: int = 0):
    """A slider over the number of needles in the stream (one asked) and a haystack toggle; every
    model in ``models`` (``{name: trained model}``) is re-evaluated live (:func:`needle_curves`) and
    drawn as a bar with its interval beside the keyless floor. The static book shows the same
    question over every family and size with ``figures.frontier_figure``. Returns an
    ``ipywidgets.VBox`` (toggle, slider, output). Introduced in chapter 7."""
    w = _ipywidgets()
    if not models:
        raise ValueError("models must hold at least one trained model")
    if num_needles not in needles:
        raise ValueError(f"num_needles={num_needles} must be one of needles={tuple(needles)}")
    toggle = w.ToggleButtons(options=list(haystacks), description="haystack")
    slider = w.SelectionSlider(options=[str(n) for n in needles], value=str(num_needles), description="needles",
                               continuous_update=False)

    def draw(haystack: str, n: str):
        res = needle_curves(models, int(n), haystack, seq_len, num_examples=num_examples, seed=seed)
        shown = {name: {**r, "chance": r["floor"]} for name, r in res.items()}
        figures.eval_figure(shown, title=f"{n} needle{'s' if n != '1' else ''}, one asked, {haystack} haystack, "
                                 f"{seq_len} tokens", line="keyless floor").show()

    out = live_output(draw, {"haystack": toggle, "n": slider})
    return w.VBox([toggle, slider, out])
