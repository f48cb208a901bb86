"""Slot-memory measurements, figures, widgets and the experiment runner (chapters 2-3)."""

import json

import pytest
import torch

from memorylib.analysis import slot_monitor, slot_statistics, survival
from memorylib.experiments import run, summarize
from memorylib.figures import (ablation_figure, capacity_figure, parameter_slider_figure, slot_heatmap_figure,
                               slot_training_figure, survival_figure, window_slider_figure)
from memorylib.registry import build_model, build_task
from memorylib.tasks import TokenLayout

LAYOUT = TokenLayout()
CHANGING = dict(seq_len=84, num_active_keys=3, updates_per_phase=6, queries_per_phase=2, num_phases=2,
                min_distance=18)


def small_model(**kwargs):
    torch.manual_seed(0)
    return build_model("slot_memory", d_model=32, slot_dim=16, num_slots=6, **kwargs).eval()


def hand_trace(write, read=None, gate=None):
    """A trace with given write mass (T, S); ages computed as the memory would (writes only)."""
    T, S = write.shape
    read = torch.zeros(T, S) if read is None else read
    age, ages = torch.zeros(S), []
    for t in range(T):
        ages.append(age)
        age = (age + 1) * (1 - write[t]) * (1 - read[t])
    gate = torch.ones(T) if gate is None else gate
    return {"write": write[None], "read": read[None], "age_before": torch.stack(ages)[None],
            "write_gate": write.sum(-1)[None], "erase": torch.ones(1, T), "read_gate": gate[None]}


def test_slot_statistics_on_hand_made_traces():
    T, S = 48, 4
    collapsed = torch.zeros(T, S)
    collapsed[:, 0] = 1.0                                     # every token writes slot 0
    stats = slot_statistics(hand_trace(collapsed))
    assert stats["write_entropy"] == 0.0 and stats["write_share"] == [1.0, 0.0, 0.0, 0.0]
    assert stats["mean_lifetime"] == pytest.approx(1.0)       # each content lives one token
    every_4 = torch.zeros(T, S)
    every_4[torch.arange(0, T, 4), (torch.arange(0, T, 4) // 4) % S] = 1.0   # round robin, one write per 4 tokens
    stats = slot_statistics(hand_trace(every_4))
    assert stats["write_entropy"] == pytest.approx(1.0)
    assert stats["writes_per_token"] == pytest.approx(0.25)
    # the first round fills empty slots (not counted); after it each slot is rewritten 16 tokens on
    assert stats["mean_lifetime"] == pytest.approx(16.0)
    peaked = hand_trace(every_4, read=torch.eye(S)[torch.arange(T) % S])
    spread = hand_trace(every_4, read=torch.full((T, S), 1 / S))
    assert slot_statistics(peaked)["read_entropy"] == pytest.approx(0.0, abs=1e-4)
    assert slot_statistics(spread)["read_entropy"] == pytest.approx(1.0, abs=1e-4)


def test_slot_monitor_restores_training_mode_and_returns_scalars():
    model = small_model().train()
    batch = build_task("associative_lookup", seq_len=48, num_pairs=4, num_queries=4, min_distance=18).sample(4)
    out = slot_monitor(model, batch)
    assert model.training and set(out) == {"write_entropy", "read_entropy", "mean_lifetime", "writes_per_token"}
    assert all(isinstance(v, float) for v in out.values())


class Oracle:
    """A fake model whose recall() reads the truth off the tokens: the latest value (``latest``)
    or the first value ever set (``first``) of each probed key, as of each position."""

    def __init__(self, mode):
        self.mode = mode

    def recall(self, tokens, probe_keys, layout=None):
        B, T = tokens.shape
        out = torch.zeros(B, T, probe_keys.shape[1], dtype=torch.long)
        for b in range(B):
            seen = {}
            row = tokens[b].tolist()
            for t in range(T):
                if t % 3 == 2 and row[t - 2] == LAYOUT.SET:
                    k, v = row[t - 1], row[t]
                    if self.mode == "latest" or k not in seen:
                        seen[k] = v
                for j, k in enumerate(probe_keys[b].tolist()):
                    out[b, t, j] = seen.get(k, -1)
        return out


def test_survival_bookkeeping_with_oracles():
    task = build_task("changing_facts", **CHANGING)
    latest = survival(Oracle("latest"), task, num_examples=16)
    assert all(p == 1.0 for p, n in zip(latest["live"]["p"], latest["live"]["n"]) if n)
    assert all(p == 0.0 for p, n in zip(latest["overwritten"]["p"], latest["overwritten"]["n"]) if n)
    assert latest["num_facts"] == 16 * 12 and sum(latest["overwritten"]["n"]) > 0
    first = survival(Oracle("first"), task, num_examples=16)
    # remembering only the first value of each key: every first fact stays retrievable after it was
    # overwritten (later facts do not), so a good share of overwritten probes hit
    part = first["overwritten"]
    share = sum(p * n for p, n in zip(part["p"], part["n"])) / sum(part["n"])
    assert 0.2 < share < 1.0
    json.dumps(latest)


def test_survival_of_a_real_model_is_a_probability_per_bin():
    res = survival(small_model(), build_task("changing_facts", **CHANGING), num_examples=8, batch_size=4)
    for status in ("live", "overwritten"):
        part = res[status]
        assert len(part["p"]) == len(res["delta"]) == len(part["n"])
        assert all(0.0 <= lo <= p <= hi <= 1.0 for lo, p, hi, n in zip(part["ci_low"], part["p"], part["ci_high"], part["n"]) if n)


def test_run_reproduces_itself_and_records_what_it_did():
    task = build_task("associative_lookup", seq_len=30, num_pairs=2, num_queries=2, min_distance=6)
    kwargs = {"d_model": 32, "slot_dim": 16, "num_slots": 4}
    a = run("slot_memory", task, seed=3, steps=6, batch_size=8, model_kwargs=kwargs, num_examples=16,
            pretrain={"task": task, "steps": 4, "lr": 1e-2})
    b = run("slot_memory", task, seed=3, steps=6, batch_size=8, model_kwargs=kwargs, num_examples=16,
            pretrain={"task": task, "steps": 4, "lr": 1e-2})
    assert a["eval"] == b["eval"] and a["history"] == b["history"]
    assert a["pretrain_history"]["step"][-1] == 3 and a["history"]["step"][-1] == 5
    json.dumps(a)
    s = summarize([a, b], "accuracy", "train")
    assert s["n"] == 2 and s["std"] == 0.0 and s["mean"] == a["eval"]["train"]["accuracy"]
    with pytest.raises(ValueError, match="at least one row"):
        summarize([], "accuracy", "train")


def test_figures_are_deterministic_and_serialisable():
    model = small_model()
    task = build_task("associative_lookup", seq_len=48, num_pairs=4, num_queries=4, min_distance=18)
    batch = task.sample(2, seed=1)
    with torch.no_grad():
        _, trace = model(batch.tokens, return_trace=True)
    from memorylib.training import evaluate, train
    hist = train(model, task, steps=2, batch_size=4, log_every=1, progress=False, monitor=slot_monitor)
    res = {n: evaluate(model, task, num_examples=8) for n in (2, 6)}
    surv = survival(model, build_task("changing_facts", **CHANGING), num_examples=4)
    rows = [{"model": m, "seed": s, "accuracy": 0.1 * s, "stale_rate": 0.05} for m in "ab" for s in range(3)]
    builders = {
        "heatmap": (lambda: slot_heatmap_figure(trace, batch.tokens, index=1), 5),
        "training": (lambda: slot_training_figure({"x": hist}), 4),
        "slider": (lambda: parameter_slider_figure(res, parameter="slots", chance=0.1, reference={"r": res[6]}), 3),
        "capacity": (lambda: capacity_figure({"x": res}, chance=0.1), 1),
        "ablation": (lambda: ablation_figure(rows), 8),
        "survival": (lambda: survival_figure({"x": surv}), 2),
    }
    for name, (make, traces) in builders.items():
        one, two = make().to_dict(), make().to_dict()
        assert len(one["data"]) == traces, name
        assert json.dumps(one, sort_keys=True, default=str) == json.dumps(two, sort_keys=True, default=str), name
    slider = builders["slider"][0]()
    assert slider.layout.sliders[0].currentvalue.prefix == "slots: "
    assert window_slider_figure(res).layout.sliders[0].currentvalue.prefix == "window: "
    with pytest.raises(ValueError, match="monitor=slot_monitor"):
        slot_training_figure({"x": {"history": {"step": [0], "loss": [1.0], "accuracy": [0.0]}}})


def test_widgets_build_and_restore_the_memory_size():
    pytest.importorskip("ipywidgets")
    from memorylib.widgets import ablation_curve, ablation_explorer, memory_size, memory_size_explorer

    model = small_model()
    task = build_task("changing_facts", **CHANGING)
    with memory_size(model, 2):
        assert model.num_slots == 2
    assert model.num_slots == 6
    with pytest.raises(ValueError, match="num_slots must be an int >= 1, got 0"):
        with memory_size(model, 0):
            pass
    assert ablation_curve(model, task, 3, num_examples=4)["num_examples"] == 4 and model.num_slots == 6
    box = memory_size_explorer(model, task, sizes=(2, 6), num_examples=4)
    assert [type(c).__name__ for c in box.children] == ["SelectionSlider", "Output"]
    box = ablation_explorer({"a": model, "b": small_model(fixed_erase=0.0)}, task, sizes=(2, 6), num_examples=4)
    assert [type(c).__name__ for c in box.children] == ["ToggleButtons", "SelectionSlider", "Output"]
