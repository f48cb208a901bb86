"""Slot-memory measurements (memorylib.analysis), their figures and the live controls
(chapters 2-3): hand-made traces with known answers, survival bookkeeping against oracles and a
slow reference, and every figure deterministic and JSON-ready."""

import json
import math

import plotly.graph_objects as go
import pytest
import torch

from memorylib.analysis import slot_lifetimes, slot_monitor, slot_statistics, survival
from memorylib.figures import (
    ablation_figure,
    capacity_figure,
    parameter_slider_figure,
    slot_heatmap_figure,
    slot_training_figure,
    survival_figure,
    window_slider_figure,
)
from memorylib.registry import build_model, build_task
from memorylib.tasks import Batch, TokenLayout, derive_seed, make_generator
from memorylib.widgets import ablation_curve, ablation_explorer, memory_size, memory_size_explorer

LAYOUT = TokenLayout()
CHANGING = dict(seq_len=84, num_active_keys=3, updates_per_phase=6, queries_per_phase=2, num_phases=2,
                min_distance=18)


def small_model(**kwargs):
    torch.manual_seed(0)
    return build_model("slot_memory", d_model=32, slot_dim=16, num_slots=6, **kwargs).eval()


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def changing():
    return build_task("changing_facts", **CHANGING)


@pytest.fixture(scope="module")
def traced(model, changing):
    batch = changing.sample(2, seed=1)
    with torch.no_grad():
        _, trace = model(batch.tokens, return_trace=True)
    return trace, batch.tokens


# --- slot_statistics on hand-made traces ----------------------------------------------------


def hand_trace(write, read=None, read_gate=None):
    """A one-sequence trace with the given write mass and reads (T, S)."""
    T, S = write.shape
    read = torch.full((T, S), 1.0 / S) if read is None else read
    read_gate = torch.ones(T) if read_gate is None else read_gate
    return {"write": write[None], "read": read[None], "age_before": torch.zeros(1, T, S),
            "write_gate": write.sum(-1)[None], "erase": torch.ones(1, T), "read_gate": read_gate[None]}


def test_all_writes_to_one_slot_is_collapse_with_lifetime_one():
    write = torch.zeros(40, 4)
    write[:, 0] = 1.0
    stats = slot_statistics(hand_trace(write))
    assert stats["write_entropy"] == 0.0 and stats["write_share"] == [1.0, 0.0, 0.0, 0.0]
    assert stats["writes_per_token"] == 1.0
    assert stats["mean_lifetime"] == 1.0          # every content is replaced by the next token


def test_a_slot_overwritten_every_4_tokens_lives_4_tokens():
    write = torch.zeros(40, 4)
    write[0::4, 2] = 1.0
    stats = slot_statistics(hand_trace(write))
    assert stats["mean_lifetime"] == 4.0 and stats["writes_per_token"] == 0.25
    assert stats["write_entropy"] == 0.0 and stats["write_share"] == [0.0, 0.0, 1.0, 0.0]
    # round robin over 4 slots, one write every 4 tokens: even use, each slot rewritten 16 later
    rr = torch.zeros(48, 4)
    rr[torch.arange(0, 48, 4), torch.arange(12) % 4] = 1.0
    stats = slot_statistics(hand_trace(rr))
    assert stats["write_entropy"] == 1.0 and stats["mean_lifetime"] == 16.0
    assert stats["write_share"] == [0.25] * 4


def test_lifetime_ignores_writes_into_empty_slots_and_counts_soft_writes_softly():
    once = torch.zeros(10, 3)
    once[0] = torch.tensor([1.0, 0.0, 0.0])            # one write, never replaced
    assert math.isnan(slot_statistics(hand_trace(once))["mean_lifetime"])
    lifetime, weight = slot_lifetimes(once[None])
    assert weight.sum() == 0 and lifetime.shape == weight.shape == (1, 10, 3)
    half = torch.zeros(5, 1)
    half[0], half[4] = 1.0, 0.5                        # full write at 0, half write at 4
    lifetime, weight = slot_lifetimes(half[None])
    assert float(lifetime[0, 4, 0]) == 4.0 and float(weight[0, 4, 0]) == 0.5
    with pytest.raises(ValueError, match="batch, seq_len, num_slots"):
        slot_lifetimes(half)


def test_read_entropy_looks_only_at_tokens_that_read():
    T, S = 12, 4
    write = torch.zeros(T, S)
    write[::3, 0] = 1.0
    peaked = torch.eye(S)[torch.arange(T) % S]
    uniform = torch.full((T, S), 1.0 / S)
    assert slot_statistics(hand_trace(write, peaked))["read_entropy"] == 0.0
    assert slot_statistics(hand_trace(write, uniform))["read_entropy"] == 1.0
    # half the tokens read (gate 0.9, peaked); the others barely (gate 0.1, spread): only the first count
    gate = torch.tensor([0.9, 0.1] * (T // 2))
    mixed = torch.where(gate[:, None] > 0.5, peaked, uniform) * gate[:, None]
    assert slot_statistics(hand_trace(write, mixed, gate))["read_entropy"] == 0.0
    assert math.isnan(slot_statistics(hand_trace(write, uniform, torch.zeros(T)))["read_entropy"])


def test_slot_monitor_returns_scalars_and_restores_training_mode(model, changing):
    batch = changing.sample(4, seed=2)
    model.train()
    try:
        out = slot_monitor(model, batch)
        assert model.training
    finally:
        model.eval()
    assert set(out) == {"write_entropy", "read_entropy", "mean_lifetime", "writes_per_token"}
    assert all(isinstance(v, float) for v in out.values())
    assert 0.0 <= out["write_entropy"] <= 1.0 and out["writes_per_token"] > 0


# --- survival -------------------------------------------------------------------------------


def facts_of(row):
    """(position of the value token, key, value) of every SET cell of one token list."""
    return [(t + 2, row[t + 1], row[t + 2]) for t in range(0, len(row) - 2, 3) if row[t] == LAYOUT.SET]


class Oracle:
    """A fake model whose recall() reads the answer off the tokens: the current value of each
    probed key (``latest``) or the first value ever set for it (``first``), after each position."""

    def __init__(self, mode):
        self.mode = mode

    def recall(self, tokens, probe_keys, layout=None):
        B, T = tokens.shape
        out = torch.full((B, T, probe_keys.shape[1]), -1, dtype=torch.long)
        for b in range(B):
            known = {}
            sets = {p: (k, v) for p, k, v in facts_of(tokens[b].tolist())}
            for t in range(T):
                if t in sets:
                    k, v = sets[t]
                    if self.mode == "latest" or k not in known:
                        known[k] = v
                for j, k in enumerate(probe_keys[b].tolist()):
                    out[b, t, j] = known.get(k, -1)
        return out


class SetTwice:
    """A task in which each of 3 keys is set exactly twice (the second time to a different value),
    in random order among filler cells: an overwritten fact is always a key's first one."""

    layout = LAYOUT
    seq_len = 60

    def sample(self, n, gen):
        tokens = LAYOUT.filler_start + torch.randint(0, LAYOUT.num_filler, (n, self.seq_len), generator=gen)
        for b in range(n):
            keys = LAYOUT.key_start + torch.randperm(LAYOUT.num_keys, generator=gen)[:3]
            values = LAYOUT.value_start + torch.randperm(LAYOUT.num_values, generator=gen)[:6].view(3, 2)
            order = [0, 1, 2] + (torch.randperm(3, generator=gen)).tolist()       # first writes come first
            cells = torch.randperm(self.seq_len // 3, generator=gen)[:6].sort().values.tolist()
            seen = set()
            for cell, which in zip(cells, order):
                v = values[which, int(which in seen)]
                seen.add(which)
                tokens[b, 3 * cell: 3 * cell + 3] = torch.stack([torch.tensor(LAYOUT.SET), keys[which], v])
        z = torch.full_like(tokens, -1)
        return Batch(tokens=tokens, targets=torch.full_like(tokens, -100), distance=z, stale=z)


def reference_survival(answer_of, task, num_examples, seed, batch_size, bin_width=3):
    """The slow, obvious form: every fact, every later position, statuses by scanning the tokens.
    ``answer_of(row, t, k)``: what the memory says key ``k`` holds after position ``t``."""
    T = task.seq_len
    num_bins = T // bin_width + 1
    counts = {s: [0] * num_bins for s in ("live", "overwritten", "restated")}
    hits = {s: [0] * num_bins for s in ("live", "overwritten", "restated")}
    gen = make_generator(derive_seed(seed, "eval"))
    done = 0
    while done < num_examples:
        n = min(batch_size, num_examples - done)
        for row in task.sample(n, gen).tokens.tolist():
            facts = facts_of(row)
            for p, k, v in facts:
                for t in range(p, T):
                    latest = [(q, w) for q, kk, w in facts if kk == k and q <= t][-1]
                    status = "live" if latest[0] == p else "overwritten" if latest[1] != v else "restated"
                    counts[status][(t - p) // bin_width] += 1
                    hits[status][(t - p) // bin_width] += answer_of(row, t, k) == v
        done += n
    return counts, hits


def first_value(row, t, k):
    return next((v for q, kk, v in facts_of(row) if kk == k and q <= t), -1)


def test_survival_of_an_oracle_that_knows_the_current_value():
    task = build_task("changing_facts", **CHANGING)
    res = survival(Oracle("latest"), task, num_examples=12, batch_size=5)
    live, over = res["live"], res["overwritten"]
    assert sum(live["n"]) > 0 and sum(over["n"]) > 0
    assert all(p == 1.0 for p, n in zip(live["p"], live["n"]) if n)
    assert all(p == 0.0 for p, n in zip(over["p"], over["n"]) if n)
    assert res["num_facts"] == 12 * CHANGING["updates_per_phase"] * CHANGING["num_phases"]
    json.dumps(res, allow_nan=False)


def test_survival_of_an_oracle_that_remembers_the_first_value():
    res = survival(Oracle("first"), SetTwice(), num_examples=10, batch_size=4)
    live, over = res["live"], res["overwritten"]
    assert sum(over["n"]) > 0 and all(p == 1.0 for p, n in zip(over["p"], over["n"]) if n)
    # live probes of first facts hit, live probes of second facts miss
    assert 0 < sum(p * n for p, n in zip(live["p"], live["n"])) < sum(live["n"])
    assert res["num_facts"] == 60 and res["restated_probes"] == 0


def test_survival_matches_the_slow_reference_including_restated_values():
    task = build_task("changing_facts", **CHANGING)
    res = survival(Oracle("first"), task, num_examples=10, batch_size=4)
    counts, hits = reference_survival(first_value, task, num_examples=10, seed=0, batch_size=4)
    for status in ("live", "overwritten"):
        assert res[status]["n"] == counts[status]
        assert res[status]["p"] == [round(h / n, 4) if n else 0.0 for h, n in zip(hits[status], counts[status])]
    assert res["restated_probes"] == sum(counts["restated"])


def test_survival_of_an_untrained_model_is_a_probability_per_bin(model, changing):
    model.train()
    try:
        res = survival(model, changing, num_examples=6, batch_size=4, seed=3)
        assert model.training                      # mode restored
    finally:
        model.eval()
    T = changing.seq_len
    assert res["delta"] == list(range(0, T + 1, 3)) and res["bin_width"] == 3
    for status in ("live", "overwritten"):
        part = res[status]
        assert len(part["p"]) == len(part["n"]) == len(part["ci_low"]) == len(part["ci_high"]) == len(res["delta"])
        for lo, p, hi, n in zip(part["ci_low"], part["p"], part["ci_high"], part["n"]):
            assert (0.0 <= lo <= p <= hi <= 1.0) if n else (p == lo == hi == 0.0)
    # every (fact, later position) pair is counted exactly once
    gen = make_generator(derive_seed(3, "eval"))
    rows = torch.cat([changing.sample(4, gen).tokens, changing.sample(2, gen).tokens]).tolist()
    pairs = sum(T - p for row in rows for p, _, _ in facts_of(row))
    assert sum(res["live"]["n"]) + sum(res["overwritten"]["n"]) + res["restated_probes"] == pairs
    assert res["num_facts"] == sum(len(facts_of(row)) for row in rows)
    assert survival(model, changing, num_examples=6, batch_size=4, seed=3) == res     # deterministic
    short = survival(model, changing, num_examples=2, max_delta=10)
    assert short["delta"] == [0, 3, 6, 9] and len(short["live"]["n"]) == 4
    json.dumps(res, allow_nan=False)
    with pytest.raises(ValueError, match="num_examples must be an int >= 1, got 0"):
        survival(model, changing, num_examples=0)


# --- figures --------------------------------------------------------------------------------


def fake_eval(acc, ci=(0.1, 0.9), stale=None):
    """An evaluate()-shaped result with three distance bins."""
    return {"accuracy": acc[0], "ci": list(ci), "stale_rate": stale, "num_examples": 8,
            "by_distance": {"lo": [18, 30, 42], "hi": [30, 42, 54], "count": [10, 20, 30], "accuracy": acc,
                            "ci_low": [round(a - 0.1, 4) for a in acc],
                            "ci_high": [round(min(1.0, a + 0.1), 4) for a in acc]}}


def fake_history(offset):
    steps = [0, 10, 20]
    return {"history": {"step": steps, "loss": [3.0, 2.0, 1.0], "accuracy": [0.0, 0.5, 0.9],
                        "write_entropy": [0.9 - offset, 0.8, 0.7], "read_entropy": [1.0, 0.6, 0.2],
                        "writes_per_token": [0.1, 0.2, 0.3], "mean_lifetime": [5.0, 9.0, 12.5]}}


def survival_result(model, changing):
    return survival(model, changing, num_examples=4, batch_size=4)


def build_figures(traced, model, changing):
    trace, tokens = traced
    curves = {2: fake_eval([0.2, 0.1, 0.05]), 4: fake_eval([0.5, 0.4, 0.3]), 8: fake_eval([0.9, 0.8, 0.7])}
    rows = [{"model": m, "seed": s, "accuracy": 0.1 * s + (m == "b"), "stale_rate": 0.05 * s}
            for m in ("a", "b") for s in range(3)]
    surv = survival_result(model, changing)
    return {
        "heatmap": (lambda: slot_heatmap_figure(trace, tokens, index=1, title="one sequence"), 5),
        "training": (lambda: slot_training_figure({"x": fake_history(0), "y": fake_history(0.1)}), 8),
        "slider": (lambda: parameter_slider_figure(curves, parameter="slots", chance=0.1,
                                                   reference={"as trained": curves[8]}), 4),
        "capacity": (lambda: capacity_figure({"x": curves, "y": {1: fake_eval([0.1, 0.1, 0.1])}}, chance=0.1), 2),
        "ablation": (lambda: ablation_figure(rows), 8),
        "survival": (lambda: survival_figure({"x": surv, "y": surv}), 4),
    }


def test_every_figure_is_a_deterministic_json_ready_plotly_figure(traced, model, changing):
    for name, (make, num_traces) in build_figures(traced, model, changing).items():
        fig = make()
        assert isinstance(fig, go.Figure), name
        assert len(fig.data) == num_traces, (name, len(fig.data))
        one = json.dumps(fig.to_dict(), sort_keys=True, allow_nan=False)
        two = json.dumps(make().to_dict(), sort_keys=True, allow_nan=False)
        assert one == two, name


def test_slot_heatmap_shows_writes_reads_and_gates_on_the_token_axis(traced):
    trace, tokens = traced
    fig = slot_heatmap_figure(trace, tokens, index=1)
    writes, reads = fig.data[0], fig.data[1]
    T, S = tokens.shape[1], trace["write"].shape[-1]
    assert len(writes.z) == S and len(writes.z[0]) == T and list(writes.x) == list(range(T))
    assert writes.z[3][5] == round(float(trace["write"][1, 5, 3]), 3)
    assert reads.z[2][7] == round(float(trace["read"][1, 7, 2]), 3)
    assert [d.name for d in fig.data[2:]] == ["write gate", "erase gate", "read gate"]
    assert fig.data[4].y[9] == round(float(trace["read_gate"][1, 9]), 3)
    labels = [LAYOUT.label(t) for t in tokens[1].tolist()]
    assert list(writes.customdata[0]) == labels and "position %{x}: %{customdata}" in writes.hovertemplate
    assert list(fig.layout.xaxis3.ticktext) == labels                   # 84 tokens: every token labelled
    sparse = slot_heatmap_figure(trace, tokens, index=1, max_labels=20).layout.xaxis3
    assert all(text.startswith(("SET", "ASK")) for text in sparse.ticktext)
    assert [tokens[1, p].item() for p in sparse.tickvals] == [LAYOUT.SET if t.startswith("SET") else LAYOUT.ASK
                                                              for t in sparse.ticktext]
    with pytest.raises(ValueError, match=r"index must be in \[0, 2\), got 2"):
        slot_heatmap_figure(trace, tokens, index=2)


def test_parameter_slider_steps_and_the_window_slider_is_a_thin_wrapper():
    curves = {2: fake_eval([0.2, 0.1, 0.05]), 4: fake_eval([0.5, 0.4, 0.3])}
    fig = parameter_slider_figure(curves, parameter="slots", chance=0.1, reference={"r": fake_eval([1.0, 1.0, 1.0])})
    slider = fig.layout.sliders[0]
    assert slider.currentvalue.prefix == "slots: " and [s.label for s in slider.steps] == ["2", "4"]
    assert slider.steps[1].args[0]["visible"] == [True, False, True]
    assert [d.visible for d in fig.data] == [True, True, False]
    assert [d.name for d in fig.data] == ["r", "slots 2", "slots 4"]
    window = {4: fake_eval([0.2, 0.1, 0.05]), "full": fake_eval([0.9, 0.9, 0.9])}
    for kwargs in ({}, {"chance": 0.1, "reach": {4: 5, "full": None}, "reference": {"r": fake_eval([1.0, 1.0, 1.0])}}):
        assert window_slider_figure(window, **kwargs).to_dict() == parameter_slider_figure(
            window, "window", title="Restricting attention to a window", **kwargs).to_dict()
    with pytest.raises(ValueError, match="at least one slots"):
        parameter_slider_figure({}, parameter="slots")


def test_capacity_and_ablation_figures_show_the_numbers_they_are_given():
    curves = {8: fake_eval([0.8, 0.8, 0.8], ci=(0.7, 0.85)), 2: fake_eval([0.3, 0.3, 0.3], ci=(0.2, 0.4))}
    line = capacity_figure({"m": curves}).data[0]
    assert list(line.x) == [2, 8] and list(line.y) == [0.3, 0.8]
    assert list(line.error_y.array) == [0.1, 0.05] and list(line.error_y.arrayminus) == [0.1, 0.1]
    rows = [{"model": "a", "seed": s, "accuracy": acc, "stale_rate": None} for s, acc in enumerate([0.2, 0.4, 0.6])]
    fig = ablation_figure(rows, metrics=("accuracy",))
    bar, dots = fig.data
    assert bar.y == (0.4,) and bar.error_y.array == (0.2,) and list(dots.y) == [0.2, 0.4, 0.6]
    with pytest.raises(ValueError, match="no row has a value for \\['stale_rate'\\]"):
        ablation_figure(rows)
    with pytest.raises(ValueError, match="at least one result"):
        ablation_figure([])


def test_training_and_survival_figures():
    with pytest.raises(ValueError, match="monitor=slot_monitor"):
        slot_training_figure({"x": {"history": {"step": [0], "loss": [1.0], "accuracy": [0.0]}}})
    fig = slot_training_figure({"x": fake_history(0)})
    assert [d.y[-1] for d in fig.data] == [0.7, 0.2, 0.3, 12.5]
    res = {"delta": [0, 3, 6], "bin_width": 3,
           "live": {"p": [1.0, 0.5, 0.0], "n": [4, 2, 0], "ci_low": [0.5, 0.1, 0.0], "ci_high": [1.0, 0.9, 0.0]},
           "overwritten": {"p": [0.0, 0.0, 0.25], "n": [0, 0, 4], "ci_low": [0.0, 0.0, 0.05],
                           "ci_high": [0.0, 0.0, 0.7]}}
    live, over = survival_figure({"m": res}).data
    assert list(live.x) == [0, 3] and list(live.y) == [1.0, 0.5] and live.line.dash == "solid"
    assert list(over.x) == [6] and over.line.dash == "dash" and list(over.error_y.array) == [0.45]


# --- widgets --------------------------------------------------------------------------------


def test_memory_size_restores_the_number_of_slots(model):
    with memory_size(model, 2):
        assert model.num_slots == 2
    assert model.num_slots == 6
    with pytest.raises(RuntimeError):
        with memory_size(model, 3):
            raise RuntimeError("inside")
    assert model.num_slots == 6
    with pytest.raises(ValueError, match="num_slots must be an int >= 1, got 0"):
        with memory_size(model, 0):
            pass


def test_widgets_build_a_vbox_and_redraw_through_the_pure_function(model, changing):
    pytest.importorskip("ipywidgets")
    res = ablation_curve(model, changing, 3, num_examples=4)
    assert res["num_examples"] == 4 and model.num_slots == 6
    box = memory_size_explorer(model, changing, sizes=(2, 6), num_examples=4)
    slider, out = box.children
    assert [type(c).__name__ for c in box.children] == ["SelectionSlider", "Output"]
    assert slider.options == ("2", "6") and slider.value == "6" and slider.description == "slots"
    slider.value = "2"                                   # redraws: evaluates with 2 slots
    assert model.num_slots == 6
    other = small_model(fixed_erase=0.0)
    box = ablation_explorer({"learned erase": model, "no erase": other}, changing, sizes=(2, 6), num_examples=4)
    buttons, slider, out = box.children
    assert [type(c).__name__ for c in box.children] == ["ToggleButtons", "SelectionSlider", "Output"]
    assert buttons.options == ("learned erase", "no erase") and slider.value == "6"
    buttons.value, slider.value = "no erase", "2"
    assert other.num_slots == 6 and model.num_slots == 6
    with pytest.raises(ValueError, match="at least one trained model"):
        ablation_explorer({}, changing)


def test_live_output_draws_on_change_and_first_only_outside_book_mode(monkeypatch):
    w = pytest.importorskip("ipywidgets")
    from memorylib.widgets import live_output

    calls = []
    slider = w.IntSlider(value=1)
    monkeypatch.setenv("MEMORYLIB_BOOK", "1")             # producing the book: no first drawing
    out = live_output(lambda x: calls.append(x), {"x": slider})
    assert calls == []
    # ... but a note where the drawing would be (never an empty box), over disabled controls
    (note,) = out.outputs
    assert "live in Jupyter or Colab" in note["data"]["text/plain"] and "<p" in note["data"]["text/html"]
    assert slider.disabled
    slider.value = 3                                     # a moved control always redraws
    assert calls == [3]
    monkeypatch.setenv("MEMORYLIB_BOOK", "0")             # Jupyter / Colab: drawn at once
    monkeypatch.delenv("MEMORYLIB_HEADLESS", raising=False)
    other = w.IntSlider(value=3)
    live_output(lambda x: calls.append(x), {"x": other})
    assert calls == [3, 3] and not other.disabled
