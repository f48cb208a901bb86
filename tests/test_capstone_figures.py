"""Chapter 8's figures and the capstone summary table."""

import pytest
import torch

from memorylib.capstone import summary_table
from memorylib.figures import capstone_figure, forgetting_figure
from memorylib.registry import build_model


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
    assert t["n"] == {"needle_recall": {"mean": 0.25, "std": 0.0, "min": 0.25, "max": 0.25, "n": 1, "values": [0.25],
                                        "diverged": 0}}


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
    # the joint-training reference: a dotted line per task at its accuracy, in the task's colour
    fig = forgetting_figure({"x": curve, "y": curve}, reference={"y": {"a": 0.75}})
    dotted = [t for t in fig.data if t.line.dash == "dot"]
    assert len(dotted) == 1 and list(dotted[0].y) == [0.75, 0.75] and list(dotted[0].x) == [0, 20]
    assert dotted[0].line.color == fig.data[0].line.color and dotted[0].xaxis == fig.data[2].xaxis
    with pytest.raises(ValueError, match=r"reference names models without curves: \['z'\]"):
        forgetting_figure({"x": curve}, reference={"z": {"a": 0.5}})


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
    monkeypatch.setattr(figures, "dashboard_figure",
                        lambda results, title="": drawn.append((results, title)) or go.Figure())
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
    assert (len(drawn) == n
            and "no model was trained with erase=True, surprise=False, sidecar=False" in capsys.readouterr().out)
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
    monkeypatch.setattr(figures, "sidecar_recall_figure",
                        lambda n, curves, title="": drawn.append((n, curves)) or go.Figure())
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
    assert kaplan_meier(durations, censored, [0, 2, 4, 5, 10]) == [1.0, 0.8, 0.8, round(0.8 * 2 / 3, 4),
                                                                   round(0.8 * 2 / 3, 4)]
    assert kaplan_meier([1, 1], [True, True], [5]) == [1.0]          # nothing died
    with pytest.raises(ValueError, match="1-d of one length"):
        kaplan_meier([1, 2], [True], [1])


def test_dashboard_results_takes_a_model_per_task():
    import torch

    from memorylib.registry import build_model, build_task
    from memorylib.widgets import dashboard_results

    torch.manual_seed(0)
    small = dict(d_model=16, num_heads=2, key_dim=8, value_dim=8, sidecar_dim=8)
    a, b = build_model("full_memory", **small).eval(), build_model("full_memory", **small).eval()
    tasks = {"needle": build_task("needle_recall", seq_len=96, filler="predictable"),
             "lookup": build_task("associative_lookup", seq_len=48, num_pairs=4, num_queries=4, min_distance=18)}
    per_task = dashboard_results({"full": {"needle": a, "lookup": b}}, tasks, capacities=(4,), num_examples=8)
    alone = {name: dashboard_results({"full": m}, {name: tasks[name]}, capacities=(4,), num_examples=8)["full"][4][name]
             for name, m in (("needle", a), ("lookup", b))}
    assert per_task["full"][4] == alone                          # each task evaluated with its own model
    with pytest.raises(ValueError, match=r"models\['full'\] has no model for tasks \['lookup'\]"):
        dashboard_results({"full": {"needle": a}}, tasks, capacities=(4,), num_examples=8)


def test_load_model_reads_a_sweep_checkpoint_and_names_a_bad_file(tmp_path):
    import torch

    from memorylib.checkpoint import load_model
    from memorylib.registry import build_model

    torch.manual_seed(0)
    net = build_model("full_memory", d_model=16, num_heads=2)
    path = tmp_path / "m.pt"
    torch.save({"format_version": 1, "model": "full_memory", "model_kwargs": {"d_model": 16, "num_heads": 2},
                "task": "needle_recall", "task_kwargs": {}, "seed": 0, "state_dict": net.state_dict()}, path)
    model, ckpt = load_model(path)
    assert not model.training and ckpt["task"] == "needle_recall"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items())
    assert load_model(path, sidecar=4)[0].sidecar == 4
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a memorylib checkpoint"):
        load_model(tmp_path / "junk.pt")


def test_token_roles_label_every_cell_by_hand():
    import torch

    from memorylib.analysis import ROLES, token_roles
    from memorylib.tasks import TokenLayout

    lay = TokenLayout()
    k, v, f = lay.key_start + 5, lay.value_start + 7, lay.filler_start + 1
    tokens = torch.tensor([[lay.SET, k, v, f, f, f, lay.ASK, k, v, lay.PAD, f]])
    names = [ROLES[i] if i >= 0 else None for i in token_roles(tokens, lay)[0].tolist()]
    assert names == ["fact: SET", "fact: key", "fact: value", "filler", "filler", "filler",
                     "question: ASK", "question: key", "question: answer", None, "filler"]
    with pytest.raises(ValueError, match=r"shape \(batch, seq_len\)"):
        token_roles(tokens[0], lay)


def test_write_by_role_averages_the_write_gate_of_each_role():
    import torch

    from memorylib.analysis import token_roles, write_by_role
    from memorylib.registry import build_model, build_task
    from memorylib.tasks import derive_seed, make_generator

    class Recorder(torch.nn.Module):      # writes each token with strength = its position / 100
        def forward(self, tokens, return_trace=False):
            gate = torch.arange(tokens.shape[1], dtype=torch.float32).expand(tokens.shape) / 100
            return None, {"write_gate": gate}

    task = build_task("changing_facts", seq_len=84, num_active_keys=3, updates_per_phase=6, queries_per_phase=2,
                      num_phases=2, min_distance=18)
    out = write_by_role(Recorder(), task, num_examples=8, batch_size=8)
    tokens = task.sample(8, make_generator(derive_seed(0, "eval"))).tokens   # the sequences write_by_role saw
    roles = token_roles(tokens)
    pos = torch.arange(84).expand(8, 84) / 100
    for i, name in enumerate(["fact: SET", "fact: key", "fact: value", "question: ASK"]):
        assert out[name]["n"] == int((roles == i).sum()) > 0
        assert out[name]["mean"] == pytest.approx(float(pos[roles == i].mean()), abs=1e-4)
    torch.manual_seed(0)
    full = build_model("full_memory", d_model=16, num_heads=2).train()
    res = write_by_role(full, task, num_examples=4)
    assert full.training and all(0 <= r["mean"] <= 1 for r in res.values())
    with pytest.raises(ValueError, match="no write gate or learning rate"):
        write_by_role(type("M", (torch.nn.Module,), {"forward": lambda self, t, return_trace=False: (None, {})})(),
                      task, num_examples=2)


def test_write_by_role_and_lifetime_figures():
    from memorylib.figures import lifetime_figure, write_by_role_figure

    fig = write_by_role_figure({"a": {"fact: key": {"mean": 0.5, "n": 3}, "filler": {"mean": 0.1, "n": 9}},
                                "b": {"fact: key": {"mean": 0.25, "n": 3}}})
    assert list(fig.data[0].x) == ["fact: key", "filler"] and list(fig.data[1].x) == ["fact: key"]
    assert fig.layout.barmode == "group"
    fig = lifetime_figure({"needle": {"time": [0, 10, 20], "alive": [1.0, 1.0, 0.5], "n": 4}})
    assert fig.data[0].line.shape == "hv" and fig.data[0].name == "needle (n=4)"
    with pytest.raises(ValueError, match="time and alive must have the same length"):
        lifetime_figure({"x": {"time": [0], "alive": [1, 0], "n": 1}})
    with pytest.raises(ValueError, match="at least one"):
        write_by_role_figure({})


def test_state_bytes_counts_what_a_stream_carries():
    from memorylib.analysis import num_parameters, state_bytes

    full = build_model("full_memory")
    tokens = torch.randint(3, 100, (1, 40))
    _, state = full.stream(tokens)
    carried = state.nbytes() - state.context.numel() * state.context.element_size()
    assert state_bytes(full)["memory"] == carried == 8384
    assert state_bytes(build_model("no_sidecar"))["memory"] == 4096
    assert state_bytes(build_model("delta_memory"))["memory"] == 4096
    assert state_bytes(build_model("delta_memory", memory_heads=2))["memory"] == 8192
    assert state_bytes(build_model("slot_memory", num_slots=32))["memory"] == 32 * (2 * 32 + 1) * 4
    assert state_bytes(build_model("tiny_transformer")) == {"memory": 0, "context": 0, "per_token": 2 * 2 * 64 * 4}
    assert state_bytes(build_model("local_transformer"))["context"] == 2 * 2 * 64 * 4 * 16
    assert num_parameters(full) > num_parameters(build_model("delta_memory"))


def test_compare_needs_every_seed_and_the_corrected_rank_test():
    from memorylib.capstone import compare
    from memorylib.stats import holm

    def rows(model, values, task="t"):
        return [{"model": model, "task": task, "seed": s, "lr": 1e-3, "selected": True,
                 "eval": {"default": {"accuracy": v}}} for s, v in enumerate(values)]
    record = {"rows": rows("A", [0.9, 0.92, 0.95, 0.91, 0.93]) + rows("B", [0.5, 0.6, 0.55, 0.52, 0.58])
              + rows("C", [0.5, 0.94, 0.55, 0.52, 0.58]) + rows("D", [0.89, 0.6, 0.99, 0.7, 0.96])
              + [{**r, "selected": False, "eval": {"default": {"accuracy": 0.0}}} for r in rows("B", [0] * 5)]}
    out = compare(record, [("A", "B"), ("A", "C"), ("A", "D")], "t")
    ab, ac, ad = out
    assert ab["every_seed"] == "a" and ab["p"] == pytest.approx(2 / 252) and ab["verdict"] == "A separated"
    assert ab["b_values"] == [0.5, 0.6, 0.55, 0.52, 0.58]                # the unselected rows are not read
    assert ac["every_seed"] is None and ac["verdict"] == "not separated"    # one seed of C beats two of A
    assert ad["verdict"] == "not separated" and ad["p_holm"] >= ad["p"]
    assert [r["p_holm"] for r in out] == pytest.approx(holm([r["p"] for r in out]))
    with pytest.raises(ValueError, match="no rows of 'E'"):
        compare(record, [("A", "E")], "t")


def test_capstone_figure_reads_every_cell_against_its_columns_floor():
    table = summary_table(rows())
    tasks = ["associative_lookup", "needle_recall"]
    fig = capstone_figure(table, ["m", "n"], tasks, floors={"associative_lookup": 0.6, "needle_recall": 0.5})
    heat = fig.data[0]
    # the mean's share of the way from the floor to 1: lookup 0.6 is at its floor, the needle's
    # 0.25 is half the floor's distance below it
    assert heat.z[0][0] == 0.0 and heat.z[1][1] == -0.5 and (heat.zmin, heat.zmax) == (-1, 1)
    assert "floor 0.60" in fig.layout.xaxis.ticktext[0] and "floor 0.50" in fig.layout.xaxis.ticktext[1]
    assert "floor 0.600: 1 of 3 seeds above it" in heat.customdata[0][0]    # seeds 0.5, 0.7, 0.6
    assert heat.text[0][0] == "0.60<br>± 0.10"                               # the cell still shows accuracy
    with pytest.raises(ValueError, match="floors given for tasks not shown"):
        capstone_figure(table, ["m"], ["associative_lookup"], floors={"multi_hop": 0.25})
