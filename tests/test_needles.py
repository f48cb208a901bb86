"""The needle family: any split of a stream gives the same tokens, the haystack is what it says,
the answers are those a plain reading of the tokens gives, and the keyless floor is what the
variant implies (1 for one needle, 1/N among N keys)."""

import numpy as np
import pytest
import torch

from memorylib.needles import NeedleFamilyStream
from memorylib.tasks import CELL, TokenLayout, markov_table, reference_labels

LAY = TokenLayout()


def whole(gen):
    return gen.piece(0, gen.seq_len)


@pytest.mark.parametrize("haystack", ["random", "markov"])
def test_any_split_gives_the_same_stream(haystack):
    gen = NeedleFamilyStream("multi_key", 9000, 3, num_needles=4, haystack=haystack, seed=5)
    one = whole(gen)
    again = NeedleFamilyStream("multi_key", 9000, 3, num_needles=4, haystack=haystack, seed=5)
    cuts = [0, 1, 100, 4095, 4097, 8192, 8999, 9000]
    assert torch.equal(torch.cat([again.piece(a, b) for a, b in zip(cuts, cuts[1:])], 1), one)
    assert not torch.equal(one, whole(NeedleFamilyStream("multi_key", 9000, 3, num_needles=4, haystack=haystack,
                                                         seed=6)))


def test_the_markov_haystack_follows_its_table_across_blocks():
    gen = NeedleFamilyStream("single", 10000, 2, haystack="markov")
    t = whole(gen)
    table = markov_table(LAY)
    both = LAY.is_filler(t[:, :-1]) & LAY.is_filler(t[:, 1:])
    prev, nxt = t[:, :-1][both] - LAY.filler_start, t[:, 1:][both]
    assert bool(((nxt == table[prev, 0]) | (nxt == table[prev, 1])).all())


@pytest.mark.parametrize("variant,kwargs", [("single", {}), ("multi_key", {"num_needles": 8}),
                                            ("multi_query", {"num_needles": 8, "num_queries": 4}),
                                            ("update", {"num_needles": 4})])
def test_answers_are_what_the_tokens_say(variant, kwargs):
    gen = NeedleFamilyStream(variant, 600, 16, haystack="random", min_distance=48, seed=1, **kwargs)
    tokens = whole(gen)
    labels, _ = reference_labels(tokens, LAY)
    assert torch.equal(labels[:, gen.query_positions], gen.targets)
    assert bool((tokens[:, gen.query_positions] == gen.asked_keys).all())
    assert bool((tokens[:, gen.query_positions - 1] == LAY.ASK).all())
    if variant == "update":       # every key stated early and again late; the stale value is the asked key's first
        n = gen.num_needles
        assert bool((gen.cells[:, :n].max(1).values < gen.cells[:, n:].min(1).values).all())
        assert bool((gen.stale != gen.targets).all())
        firsts = gen.values[:, :n][gen.keys[:, :n] == gen.asked_keys]
        assert torch.equal(firsts, gen.stale.squeeze(1))


def test_multi_value_asks_the_values_of_one_key_in_the_order_stated():
    gen = NeedleFamilyStream("multi_value", 900, 8, num_needles=3, num_distractors=4, haystack="random", seed=2)
    tokens = whole(gen)
    assert bool((gen.asked_keys == gen.asked_keys[:, :1]).all())
    for b in range(8):
        key = int(gen.asked_keys[b, 0])
        cells = sorted(c for c, k in zip(gen.cells[b].tolist(), gen.keys[b].tolist()) if k == key)
        assert len(cells) == 3 and [int(tokens[b, c * CELL + 2]) for c in cells] == gen.targets[b].tolist()
        assert len(set(gen.keys[b].tolist())) == 1 + 4 and len(set(gen.values[b].tolist())) == 15


def test_the_keyless_floor_of_each_variant():
    def floor(gen):
        return float((gen.keyless == gen.targets).float().mean())
    assert floor(NeedleFamilyStream("single", 300, 64, haystack="random")) == 1.0
    assert abs(floor(NeedleFamilyStream("multi_key", 600, 512, num_needles=8, haystack="random")) - 1 / 8) < 0.05
    assert abs(floor(NeedleFamilyStream("update", 600, 512, num_needles=4, haystack="random")) - 1 / 4) < 0.06
    mq = NeedleFamilyStream("multi_query", 600, 512, num_needles=4, num_queries=4, haystack="random")
    assert abs(floor(mq) - sum(1 / n for n in (4, 3, 2, 1)) / 4) < 0.05
    mv = NeedleFamilyStream("multi_value", 900, 512, num_needles=3, num_distractors=3, haystack="random")
    first = float((mv.keyless[:, 0] == mv.targets[:, 0]).float().mean())
    assert abs(first - 1 / 4) < 0.06 and bool((mv.keyless[:, 1:] == mv.targets[:, 1:]).all())


def test_depths_put_the_asked_needle_where_asked():
    gen = NeedleFamilyStream("multi_key", 3000, 5, num_needles=8, depths=[0, 0.25, 0.5, 0.75, 1.0],
                             haystack="random")
    assert torch.allclose(gen.depth, torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64), atol=0.01)


@pytest.mark.parametrize("kwargs,match", [
    ({"variant": "haystack"}, "variant must be one of"),
    ({"variant": "single", "num_needles": 2}, "the single needle has num_needles=1"),
    ({"variant": "multi_key", "num_needles": 1}, "needs num_needles >= 2"),
    ({"variant": "multi_key", "num_needles": 4, "haystack": "predictable"}, "haystack must be one of"),
    ({"variant": "multi_key", "num_needles": 4, "num_distractors": 2}, "num_distractors applies to multi_value"),
    ({"variant": "multi_key", "num_needles": 40, "seq_len": 120}, "too short for 40 needles"),
    ({"variant": "multi_query", "num_needles": 4, "num_queries": 5}, "num_queries must be an int in"),
])
def test_bad_family_arguments(kwargs, match):
    args = {"seq_len": 600, "batch_size": 2, **kwargs}
    variant = args.pop("variant")
    with pytest.raises(ValueError, match=match):
        NeedleFamilyStream(variant, **args)


@pytest.mark.parametrize("variant,kwargs", [("multi_key", {"num_needles": 6}), ("update", {"num_needles": 3}),
                                            ("multi_query", {"num_needles": 4, "num_queries": 2})])
def test_the_family_as_a_training_task(variant, kwargs):
    from memorylib.registry import build_model, build_task
    from memorylib.training import evaluate, train

    task = build_task("needle_family", variant=variant, seq_len=240, min_distance=18, **kwargs)
    b = task.sample(16, seed=4)
    assert torch.equal(b.targets[b.answer_mask], reference_labels(b.tokens, LAY)[0][b.answer_mask])
    assert int(b.distance[b.answer_mask].min()) >= 18 and torch.equal(b.tokens, task.sample(16, seed=4).tokens)
    assert (b.stale[b.answer_mask] >= 0).all() == (variant == "update")
    assert task.config()["variant"] == variant
    model = build_model("local_transformer", d_model=16, num_heads=2)
    train(model, task, steps=2, batch_size=4, progress=False)
    assert evaluate(model, task, num_examples=8)["num_answers"] == 8 * task.sample(1).num_answers
    with pytest.raises(ValueError, match="variant must be one of"):
        build_task("needle_family", variant="everything")
    from memorylib.floors import keyless_floor
    if variant != "multi_value":
        assert abs(keyless_floor(task, num_examples=256)["accuracy"] - float((task._stream(256, 1).keyless ==
                                                                              task._stream(256, 1).targets)
                                                                             .float().mean())) < 0.12
    with pytest.raises(ValueError, match="not the floor of multi-value"):
        keyless_floor(build_task("needle_family", variant="multi_value", num_needles=2, num_distractors=1,
                                 seq_len=300, min_distance=18))


SMALL = dict(d_model=16, num_heads=2, key_dim=8, value_dim=8, window=8, sidecar_dim=8)


@pytest.mark.parametrize("variant, kwargs", [("multi_key", dict(num_needles=4)),
                                             ("multi_query", dict(num_needles=3, num_queries=3)),
                                             ("update", dict(num_needles=2))])
def test_streaming_the_family_scores_what_one_call_predicts(variant, kwargs):
    from memorylib.needles import stream_family
    from memorylib.registry import build_model
    torch.manual_seed(0)
    model = build_model("full_memory", **SMALL, sidecar=4).eval()
    res = stream_family(model, variant, 700, 6, piece=64, batch_size=4, seed=3, num_depths=3, **kwargs)
    # the same streams, each read in one call: trial i is in batch i // 4, generated from seed 3 * 100003 + i // 4
    outcomes, hits, n = [], 0, 0
    for b_i, (lo, hi) in enumerate(((0, 4), (4, 6))):
        gen = NeedleFamilyStream(variant, 700, hi - lo, seed=3 * 100003 + b_i, **kwargs)
        with torch.no_grad():
            pred = model(gen.piece(0, gen.answer_end))[:, gen.query_positions].argmax(-1)
        right = pred == gen.targets
        outcomes += ["1" if c else "0" for c in right[:, 0].tolist()]
        hits, n = hits + int(right.sum()), n + right.numel()
    assert res["outcomes"] == "".join(outcomes)
    assert res["accuracy"] == round(hits / n, 4) and res["num_queries"] == kwargs.get("num_queries", 1)
    assert res["state_bytes"] > 0 and res["value_cached"] is not None and 0 <= res["value_cached"] <= 1
    assert sum(res["by_depth"]["n"]) == 6 and all(0 < d < 1 for d in res["by_depth"]["depth"])


def test_where_a_needle_sits_does_not_tell_which_one_is_asked():
    """Streamed cells place every needle uniformly: the asked needle's rank among the needles in
    stream order is uniform, so the keyless floor is 1/N (a grid of depths for the asked needle
    would give it away by its position)."""
    from memorylib.needles import stream_family

    class Constant(torch.nn.Module):                  # answers nothing: only the floor matters here
        def stream(self, tokens, state=None, last_only=False):
            class S:
                def nbytes(self):
                    return 8
            return torch.zeros(tokens.shape[0], 1 if last_only else tokens.shape[1], 200), S()

    res = stream_family(Constant(), "multi_key", 600, 800, num_needles=8, haystack="random", piece=600,
                        batch_size=200)
    se = (0.125 * 0.875 / 800) ** 0.5
    assert abs(res["floor"]["accuracy"] - 0.125) < 3.5 * se
    ranks = []
    for b in range(4):
        gen = NeedleFamilyStream("multi_key", 600, 200, num_needles=8, seed=b, haystack="random")
        order = gen.cells.argsort(1)                     # needles in stream order
        ranks += (order == gen.asked_index[:, :1]).float().argmax(1).tolist()
    counts = np.bincount(ranks, minlength=8)
    assert counts.min() > 60 and counts.max() < 140      # 100 each expected of 800


def test_the_cache_check_sees_what_the_sidecar_holds():
    from memorylib.needles import cached_needles, stream_family
    from memorylib.registry import build_model
    torch.manual_seed(0)
    big = build_model("full_memory", **SMALL, sidecar=512).eval()      # holds every token of the stream
    assert stream_family(big, "multi_key", 500, 4, num_needles=2, piece=100, batch_size=4)["value_cached"] == 1.0
    gone = stream_family(big, "multi_key", 500, 4, num_needles=2, piece=100, control="removed")
    assert gone["value_cached"] is None and gone["control"] == "removed" and gone["stored_value_rate"] is None
    swapped = stream_family(big, "multi_key", 500, 4, num_needles=2, piece=100, control="shuffled")
    assert swapped["value_cached"] == 1.0 and 0 <= swapped["stored_value_rate"] <= 1
    none = build_model("no_sidecar", **SMALL).eval()
    assert stream_family(none, "multi_key", 500, 2, num_needles=2, piece=100)["value_cached"] is None
    # by hand: a cache that holds exactly the asked needle's value position
    gen = NeedleFamilyStream("multi_key", 300, 2, num_needles=3, seed=1)

    class Side:
        position = gen.cells.gather(1, gen.asked_index[:, :1]) * CELL + 2

    class State:
        sidecar = Side

    assert cached_needles(State, gen).tolist() == [True, True]
    Side.position = Side.position + 1
    assert cached_needles(State, gen).tolist() == [False, False]


# --- the recall–state frontier (experiments/frontier.py's record) ------------------------------------------

def _frontier_row(family, size, seed, state, acc_random, acc_markov=0.5):
    cells = {f"multi_key N={n}, {h}": {"accuracy": a, "ci": [0.0, 1.0]}
             for n in (2, 8) for h, a in (("random", acc_random), ("markov", acc_markov))}
    return {"model": f"{family} {size}", "family": family, "size": size, "seed": seed, "state_bytes": state,
            "cells": cells}


def _frontier_record(rows):
    floors = {f"multi_key N={n}, {h}": {"accuracy": round(1 / n, 4)} for n in (2, 8) for h in ("random", "markov")}
    return {"eval": {"needles": [2, 8], "haystacks": ["random", "markov"]}, "floors": floors, "points": rows}


def test_frontier_points_average_over_seeds_and_sort_by_state():
    from memorylib.analysis import frontier_points

    rows = [_frontier_row("slots", 64, 0, 30000, 0.9), _frontier_row("slots", 4, 0, 9000, 0.1),
            _frontier_row("slots", 4, 1, 9000, 0.3), _frontier_row("delta", 32, 0, 12000, 0.5)]
    out = frontier_points(rows, "multi_key N=8, random")
    assert [p["size"] for p in out["slots"]] == [4, 64]
    assert out["slots"][0] == {"size": 4, "state_bytes": 9000, "seeds": [0, 1], "mean": 0.2, "low": 0.1, "high": 0.3}
    assert out["delta"][0]["seeds"] == [0]


def test_frontier_points_refuse_a_missing_cell_and_mixed_state_sizes():
    from memorylib.analysis import frontier_points

    rows = [_frontier_row("slots", 4, 0, 9000, 0.1)]
    with pytest.raises(ValueError, match="no cell 'multi_key N=16, random'"):
        frontier_points(rows, "multi_key N=16, random")
    rows.append(_frontier_row("slots", 4, 1, 9100, 0.1))
    with pytest.raises(ValueError, match=r"different state sizes \[9000, 9100\]"):
        frontier_points(rows, "multi_key N=2, random")


def test_frontier_figure_has_one_slider_step_per_number_of_needles_with_the_floor():
    from memorylib.analysis import frontier_curves
    from memorylib.figures import frontier_figure

    rows = [_frontier_row("slots", 4, 0, 9000, 0.1), _frontier_row("slots", 64, 0, 30000, 0.9),
            _frontier_row("full attention", None, 0, 524288, 1.0)]
    curves, floors = frontier_curves(_frontier_record(rows))
    assert floors[8]["random"] == 0.125
    fig = frontier_figure(curves, floors, active=8)
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["2", "8"] and fig.layout.sliders[0].active == 1
    visible = [t.visible for t in fig.data]
    assert visible == list(steps[1].args[0]["visible"])            # the active step is what is shown
    shown = [t for t in fig.data if t.visible]
    floor = [t for t in shown if t.name == "keyless floor"]
    assert len(floor) == 2 and all(t.y == (0.125, 0.125) for t in floor)
    slots = [t for t in shown if t.name == "slots"][0]
    assert slots.x == (9000, 30000) and slots.y == (0.1, 0.9)
    star = [t for t in shown if t.name == "full attention"][0]
    assert star.mode == "markers" and star.marker.symbol == "star"


# --- the needle family's table (experiments/needle_family.py's record) -------------------------------------

def _family_cell(model, seed, cell, acc, floor=0.125, cached=None):
    return {"model": model, "seed": seed, "cell": cell, "accuracy": acc,
            "ci": [round(acc - 0.05, 4), round(acc + 0.05, 4)],
            "floor": {"accuracy": floor}, "other_needle_rate": 1 - acc, "stale_rate": None, "value_cached": cached,
            "trials": 200}


def test_family_summary_groups_by_length_haystack_variant_and_model():
    from memorylib.analysis import family_summary

    rows = [_family_cell("keep", 0, "multi_key N=8, random, 16384", 0.9, cached=1.0),
            _family_cell("keep", 1, "multi_key N=8, random, 16384", 0.7, cached=0.5),
            _family_cell("keep", 0, "multi_key N=8, random, 262144", 0.8),
            _family_cell("none", 0, "single, markov, 16384", 0.2, floor=1.0)]
    s = family_summary(rows)
    assert list(s) == [16384, 262144]
    e = s[16384]["random"]["multi_key N=8"]["keep"]
    assert (e["seeds"], e["mean"], e["low"], e["high"]) == ([0, 1], 0.8, 0.7, 0.9)
    assert e["intervals"] == [[0.85, 0.95], [0.65, 0.75]] and e["value_cached"] == 0.75 and e["floor"] == 0.125
    assert e["other_needle_rate"] == 0.2 and e["stale_rate"] is None and e["streams"] == 200
    assert s[16384]["markov"]["single"]["none"]["floor"] == 1.0
    with pytest.raises(ValueError, match="in the record twice"):
        family_summary(rows + [rows[0]])


def test_family_figure_switches_the_variants_shown_with_the_length():
    from memorylib.analysis import family_summary
    from memorylib.figures import family_figure

    rows = [_family_cell(m, 0, f"{v}, {h}, 16384", 0.5) for m in ("keep", "none") for v in ("single", "multi_key N=8")
            for h in ("random", "markov")]
    rows += [_family_cell("keep", 0, f"multi_key N=8, {h}, 262144", 0.4) for h in ("random", "markov")]
    fig = family_figure(family_summary(rows), ["keep", "none"], active=262144, labels={"single": "one needle"})
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["16,384", "262,144"] and fig.layout.sliders[0].active == 1
    assert steps[0].args[1]["xaxis.categoryarray"] == ["one needle", "multi_key N=8"]
    assert steps[1].args[1]["xaxis2.categoryarray"] == ["multi_key N=8"]
    shown = [t for t in fig.data if t.visible]
    assert sorted(t.name for t in shown) == ["keep", "keep", "keyless floor", "keyless floor"]
    assert all(t.x == ("multi_key N=8",) for t in shown)


@pytest.mark.parametrize("variant,kw", [("single", {}), ("multi_key", {"num_needles": 8}),
                                        ("multi_value", {"num_needles": 3, "num_distractors": 2}),
                                        ("update", {"num_needles": 4}),
                                        ("multi_query", {"num_needles": 4, "num_queries": 3})])
@pytest.mark.parametrize("control", ["removed", "shuffled"])
def test_a_control_hides_the_first_answer_and_changes_nothing_else(variant, kw, control):
    from memorylib.needles import NeedleFamilyStream

    args = dict(seq_len=1024, batch_size=6, seed=3, haystack="random", **kw)
    plain, ctl = NeedleFamilyStream(variant, **args), NeedleFamilyStream(variant, control=control, **args)
    a, b = plain.piece(0, plain.answer_end), ctl.piece(0, ctl.answer_end)
    assert torch.equal(plain.targets, ctl.targets) and torch.equal(plain.cells, ctl.cells)
    q0 = int(plain.query_positions[0])
    for row in range(6):
        before = b[row, :q0].tolist()
        assert int(plain.targets[row, 0]) in a[row, :q0].tolist()          # the plain stream shows it
        assert int(ctl.targets[row, 0]) not in before                     # the control never does
    differ = (a != b).nonzero()
    value_pos = plain.cells.gather(1, plain.asked_index[:, :1]).squeeze(1) * CELL
    for row, col in differ.tolist():                                   # only the first asked needle's cell changed
        assert value_pos[row] <= col < value_pos[row] + CELL
    if control == "shuffled":
        assert (ctl.stored_value != ctl.targets[:, 0]).all()
        assert torch.equal(b[torch.arange(6), value_pos + 2], ctl.stored_value)
        others = [set(plain.values[r].tolist()) for r in range(6)]
        assert all(int(ctl.stored_value[r]) not in others[r] for r in range(6))
    else:
        assert ctl.stored_value is None


def test_needle_explorer_redraws_every_model_at_the_chosen_number_of_needles(monkeypatch):
    pytest.importorskip("ipywidgets")
    import plotly.graph_objects as go

    import memorylib.figures as figures
    from memorylib.registry import build_model
    from memorylib.widgets import needle_curve, needle_explorer

    torch.manual_seed(0)
    models = {"a": build_model("no_sidecar", **SMALL).eval(), "b": build_model("local_transformer", d_model=16,
                                                                              num_heads=2).eval()}
    drawn = []
    monkeypatch.setattr(figures, "eval_figure",
                        lambda shown, title="", line="": drawn.append((shown, title, line)) or go.Figure())
    box = needle_explorer(models, needles=(1, 4), seq_len=256, num_needles=4, num_examples=8)
    toggle, slider, _ = box.children
    slider.value = "1"
    shown, title, line = drawn[-1]
    assert list(shown) == ["a", "b"] and line == "keyless floor" and title.startswith("1 needle, one asked, random")
    assert all(r["chance"] == r["floor"] == 1.0 for r in shown.values())      # one needle: copy it
    toggle.value = "markov"
    shown, title, _ = drawn[-1]
    assert "markov" in title and shown["a"]["accuracy"] == needle_curve(models["a"], 1, "markov", 256,
                                                                        num_examples=8)["accuracy"]
    with pytest.raises(ValueError, match="num_needles=3 must be one of"):
        needle_explorer(models, needles=(1, 4), num_needles=3)


def _sweep_record(seeds_of_linear=5):
    from memorylib.capstone import LOOKUP_SHORT

    task = {"train": list(LOOKUP_SHORT), "eval": {"train": None, "default": ["associative_lookup", {}]}}
    spec = {"models": {"linear_memory": ["linear_memory", {}], "slot_memory 32 slots": ["slot_memory",
                                                                                       {"num_slots": 32}],
                       "tiny_transformer": ["tiny_transformer", {}]},
            "tasks": {"associative_lookup": task}}
    rows = []
    for label, n, acc in (("linear_memory", seeds_of_linear, 0.5), ("slot_memory 32 slots", 5, 0.9),
                          ("tiny_transformer", 5, 0.6)):
        for seed in range(n):
            rows.append({"model": label, "task": "associative_lookup", "seed": seed, "lr": 3e-3, "selected": True,
                         "eval": {"default": {"accuracy": acc + seed / 100}}})
        rows.append({"model": label, "task": "associative_lookup", "seed": 0, "lr": 1e-2, "selected": False,
                     "eval": {"default": {"accuracy": 0.0}}})       # a rate the tuning did not choose
    return {"spec": spec, "rows": rows}


def test_matched_frontier_reads_the_chosen_rows_and_counts_the_kv_cache_at_the_eval_length():
    from memorylib.analysis import state_bytes
    from memorylib.capstone import matched_frontier
    from memorylib.registry import build_model, build_task

    families = {"linear_memory": ("linear memory", None), "slot_memory 32 slots": ("slot memory", 32),
                "tiny_transformer": ("full attention", None)}
    out = matched_frontier(_sweep_record(), families)
    assert out["linear memory"] == [{"size": None, "state_bytes": 12288, "seeds": [0, 1, 2, 3, 4], "mean": 0.52,
                                     "low": 0.5, "high": 0.54}]
    assert out["slot memory"][0]["size"] == 32 and out["slot memory"][0]["low"] == 0.9
    kv = state_bytes(build_model("tiny_transformer"))["per_token"]
    assert kv > 0 and out["full attention"][0]["state_bytes"] == kv * build_task("associative_lookup").seq_len


def test_matched_frontier_refuses_an_unfinished_model_and_an_unknown_one():
    from memorylib.capstone import matched_frontier

    with pytest.raises(ValueError, match="'linear_memory' has 3 seed"):
        matched_frontier(_sweep_record(seeds_of_linear=3), {"linear_memory": ("linear memory", None)})
    with pytest.raises(ValueError, match="'delta_memory' is not a model of the sweep"):
        matched_frontier(_sweep_record(), {"delta_memory": ("delta memory", None)})
    with pytest.raises(ValueError, match="task must be one of"):
        matched_frontier(_sweep_record(), {}, task="multi_hop")


def test_frontier_figure_of_one_step_has_no_slider_and_stars_every_reference():
    from memorylib.capstone import matched_frontier
    from memorylib.figures import frontier_figure

    families = {"linear_memory": ("linear memory", None), "slot_memory 32 slots": ("slot memory", 32),
                "tiny_transformer": ("full attention", None)}
    curves = matched_frontier(_sweep_record(), families)
    fig = frontier_figure({8: {"lookup": curves}}, {8: {"lookup": 0.37}}, reference=["full attention"],
                          panel="{}, 8 facts")
    assert not fig.layout.sliders
    assert fig.layout.annotations[0].text == "lookup, 8 facts"
    marks = {t.name: t.marker.symbol for t in fig.data if t.name != "keyless floor"}
    assert marks == {"linear memory": "circle", "slot memory": "circle", "full attention": "star"}


def test_matched_frontier_reads_two_sweeps_of_one_recipe_and_refuses_two_recipes():
    from memorylib.capstone import matched_frontier

    a, b = _sweep_record(), _sweep_record()
    b["spec"] = {**b["spec"], "models": {"delta_memory 16 wide": ["delta_memory", {"key_dim": 16,
                                                                                   "value_dim": 16}]}}
    b["rows"] = [{**r, "model": "delta_memory 16 wide"} for r in b["rows"] if r["model"] == "linear_memory"]
    out = matched_frontier([a, b], {"linear_memory": ("linear memory", None),
                                    "delta_memory 16 wide": ("delta memory", 16)})
    assert out["delta memory"][0]["state_bytes"] == 16 * 16 * 4 + 8192 and out["delta memory"][0]["mean"] == 0.52
    b["spec"] = {**b["spec"], "steps": 600}
    with pytest.raises(ValueError, match=r"differ in \['steps'\]"):
        matched_frontier([a, b], {"linear_memory": ("linear memory", None)})


def test_the_lookup_frontier_preset_is_the_matched_sweep_at_other_sizes():
    from memorylib.capstone import FRONTIER_LOOKUP, MATCHED, RECIPE_KEYS, models_of

    assert all(FRONTIER_LOOKUP[k] == MATCHED[k] for k in RECIPE_KEYS)
    assert FRONTIER_LOOKUP["tasks"]["associative_lookup"] == MATCHED["tasks"]["associative_lookup"]
    ours, theirs = models_of(FRONTIER_LOOKUP), models_of(MATCHED)
    assert not set(ours) & set(theirs)                            # no model trained twice
    assert not [v for v in ours.values() if v in theirs.values()]  # nor one size under two names


def test_a_tall_legend_under_a_slider_hangs_from_its_top_with_room_kept_for_its_rows():
    import plotly.graph_objects as go

    from memorylib.figures import LEGEND_BELOW, finish

    slider = [{"steps": [{"label": "1", "method": "update", "args": [{}]}]}]
    short = finish(go.Figure(), "t", 400, sliders=slider)
    tall = finish(go.Figure(), "t", 400, sliders=slider, legend_rows=7)
    assert short.layout.legend.yanchor == LEGEND_BELOW["yanchor"] == "bottom"
    assert tall.layout.legend.yanchor == "top" and tall.layout.height == short.layout.height + 5 * 30
    assert tall.layout.margin.b - short.layout.margin.b == 5 * 30
    # the legend's top leaves room for its seven rows and one to spare above the figure's foot
    assert abs(tall.layout.legend.y * tall.layout.height - 8 * 30) < 1


def test_frontier_colours_go_to_the_families_that_are_not_stars_and_never_repeat_unmarked():
    from memorylib.figures import PALETTE, frontier_figure

    fams = [f"family {i}" for i in range(len(PALETTE) + 1)]
    point = {"size": None, "state_bytes": 1000, "seeds": [0], "mean": 0.5, "low": 0.5, "high": 0.5}
    curves = {8: {"lookup": {"full attention": [dict(point, state_bytes=9000)], **{f: [point] for f in fams}}}}
    fig = frontier_figure(curves, {8: {"lookup": 0.3}})
    marks = {t.name: (t.marker.color, t.marker.symbol) for t in fig.data if t.name != "keyless floor"}
    assert marks["family 0"] == (PALETTE[0], "circle") and marks["full attention"][1] == "star"
    assert marks[f"family {len(PALETTE)}"] == (PALETTE[0], "diamond")   # the colour again, another mark
    assert len(set(marks.values())) == len(marks)
