"""Chapter 8's figures and the capstone summary table."""

import pytest

from memorylib.capstone import summary_table
from memorylib.figures import capstone_figure, forgetting_figure


def rows():
    out = []
    for seed, (a, b) in enumerate([(0.5, 0.9), (0.7, 0.8), (0.6, 1.0)]):
        out.append({"model": "m", "task": "associative_lookup", "seed": seed,
                    "eval": {"train": {"accuracy": 1.0}, "default": {"accuracy": a}, "x1": {"accuracy": b},
                             "x8": {"accuracy": b / 2}}})
    out.append({"model": "n", "task": "needle_recall", "seed": 0, "eval": {"default": {"accuracy": 0.25}}})
    return out


def test_summary_table_means_and_sample_spread_over_seeds():
    t = summary_table(rows())
    lookup = t["m"]["associative_lookup"]
    assert (lookup["mean"], lookup["std"], lookup["n"], lookup["values"]) == (0.6, 0.1, 3, [0.5, 0.7, 0.6])
    assert t["m"]["length_extrapolation x8"]["mean"] == 0.45 and "train" not in t["m"]
    assert t["n"] == {"needle_recall": {"mean": 0.25, "std": 0.0, "min": 0.25, "max": 0.25, "n": 1, "values": [0.25]}}


def test_capstone_figure_marks_missing_cells_and_lists_seeds():
    fig = capstone_figure(summary_table(rows()), ["m", "n"], ["associative_lookup", "needle_recall"],
                          labels={"associative_lookup": "lookup"})
    heat = fig.data[0]
    assert list(heat.x) == ["lookup", "needle_recall"] and heat.z[0][1] is None and heat.z[1][1] == 0.25
    assert heat.text[0][0] == "0.60<br>± 0.10" and "0.500, 0.700, 0.600" in heat.customdata[0][0]
    assert heat.customdata[0][1] == "not run"


def test_forgetting_figure_one_panel_per_model():
    curve = {"phases": ["a", "b"], "step": [0, 10, 20], "accuracy": {"a": [0.0, 1.0, 0.5], "b": [0.0, 0.1, 0.9]}}
    fig = forgetting_figure({"x": curve, "y": curve})
    assert len(fig.data) == 4 and [t.showlegend for t in fig.data] == [True, True, False, False]
    assert len(fig.layout.shapes) == 2            # the second phase shaded in each panel
    with pytest.raises(ValueError, match="at least one model"):
        forgetting_figure({})


def test_dashboard_results_and_figure():
    import torch

    from memorylib.figures import dashboard_figure
    from memorylib.registry import build_model, build_task
    from memorylib.widgets import dashboard_results, sidecar_capacity, variant_switches

    torch.manual_seed(0)
    small = dict(d_model=16, num_heads=2, key_dim=8, value_dim=8, sidecar_dim=8)
    models = {name: build_model(name, **small).eval() for name in ("full_memory", "no_sidecar", "full_no_erase")}
    assert variant_switches(models["full_no_erase"]) == {"erase": False, "surprise": True, "sidecar": True}
    tasks = {"needle": build_task("needle_recall", seq_len=96, filler="predictable")}
    res = dashboard_results(models, tasks, capacities=(0, 4), num_examples=8)
    assert set(res) == set(models) and set(res["full_memory"]) == {0, 4}
    assert res["no_sidecar"][0] is res["no_sidecar"][4]                # evaluated once
    with sidecar_capacity(models["full_memory"], 2):
        assert models["full_memory"].sidecar == 2
    assert models["full_memory"].sidecar == 16
    fig = dashboard_figure(res, active=4)
    assert len(fig.data) == 6 and [t.visible for t in fig.data] == [False] * 3 + [True] * 3
    with pytest.raises(ValueError, match="capacity must be an int >= 0, got -1"):
        with sidecar_capacity(models["full_memory"], -1):
            pass


def test_ablation_dashboard_picks_the_trained_variant_and_says_when_there_is_none(monkeypatch, capsys):
    pytest.importorskip("ipywidgets")
    import plotly.graph_objects as go
    import torch

    import memorylib.figures as figures
    from memorylib.registry import build_model, build_task
    from memorylib.widgets import ablation_dashboard

    drawn = []
    monkeypatch.setattr(figures, "dashboard_figure", lambda results, title="": drawn.append((results, title)) or go.Figure())
    torch.manual_seed(0)
    small = dict(d_model=16, num_heads=2, key_dim=8, value_dim=8, sidecar_dim=8)
    models = {name: build_model(name, **small).eval() for name in ("full_memory", "no_sidecar", "full_no_surprise")}
    tasks = {"needle": build_task("needle_recall", seq_len=96, filler="predictable")}
    box = ablation_dashboard(models, tasks, capacities=(0, 4), capacity=4, num_examples=4)
    *toggles, size = box.children[0].children
    erase, surprise, sidecar = toggles
    assert drawn == []                                  # book mode: no first drawing
    size.value = "0"
    assert set(drawn[-1][0]) == {"full_memory"} and 0 in drawn[-1][0]["full_memory"]
    sidecar.value = False
    assert set(drawn[-1][0]) == {"no_sidecar"} and "K=0" in drawn[-1][1]
    n = len(drawn)
    surprise.value = False                              # sidecar and surprise both off: never trained
    assert len(drawn) == n and "no model was trained with erase=True, surprise=False, sidecar=False" in capsys.readouterr().out
    sidecar.value = True
    assert set(drawn[-1][0]) == {"full_no_surprise"}
    with pytest.raises(ValueError, match="capacity must be one of"):
        ablation_dashboard(models, tasks, capacities=(0, 4), capacity=16)


def test_sidecar_explorer_redraws_the_chosen_memory_and_capacity(monkeypatch):
    pytest.importorskip("ipywidgets")
    import plotly.graph_objects as go

    import memorylib.figures as figures
    from memorylib.widgets import sidecar_explorer

    drawn = []
    monkeypatch.setattr(figures, "sidecar_recall_figure", lambda n, curves, title="": drawn.append((n, curves)) or go.Figure())
    box = sidecar_explorer(capacities=(0, 4), num_pairs=(8, 16), capacity=4, trials=2)
    size, memory = box.children[0].children
    memory.value = "additive"
    n, curves = drawn[-1]
    assert n == [8, 16] and list(curves) == [4] and list(curves[4]) == ["additive"]
    assert curves[4]["additive"]["bound: memory + K/N"][0] == 1.0
    size.value = "0"
    assert curves is not drawn[-1][1] and list(drawn[-1][1]) == [0]


def test_kaplan_meier_matches_a_hand_count():
    from memorylib.stats import kaplan_meier

    # five items: deaths at 2 and 5, one censored at 3, two still alive (censored) at 10
    durations, censored = [2, 3, 5, 10, 10], [False, True, False, True, True]
    assert kaplan_meier(durations, censored, [0, 2, 4, 5, 10]) == [1.0, 0.8, 0.8, round(0.8 * 2 / 3, 4), round(0.8 * 2 / 3, 4)]
    assert kaplan_meier([1, 1], [True, True], [5]) == [1.0]          # nothing died
    with pytest.raises(ValueError, match="1-d of one length"):
        kaplan_meier([1, 2], [True], [1])
