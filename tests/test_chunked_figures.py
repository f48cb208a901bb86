"""Chapter 6's measurements (memorylib.chunk_study, memorylib.recall's chunk_size), figures and live
control: streams with the stated statistics, drift against an independent statement of the
reference, a trained model run at another chunk size and restored, chunked recall (exact for the
matrices), the benchmark loader against the committed record and malformed files, crossovers of
known power laws, and every figure deterministic and JSON-ready."""

import json
import math
import pathlib

import plotly.graph_objects as go
import pytest
import torch

from memorylib.chunk_study import (
    BENCHMARK_SECTIONS,
    chunk_size_curve,
    chunking,
    crossover,
    describe_error,
    drift_profile,
    error_removed_by_one_write,
    load_chunked_benchmark,
    minibatch_drift,
    model_memory_drift,
    relative_error,
    run_mlp_memory,
    time_call,
    unit_stream,
)
from memorylib.figures import chunk_slider_figure, chunk_tradeoff_figure, drift_figure, scaling_figure
from memorylib.recall import random_pairs, store_and_recall, write_pairs
from memorylib.registry import build_model, build_task
from memorylib.ttt import MLPMemoryState, mlp_apply, mlp_memory_reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "book" / "results" / "ch06_benchmark.json"


@pytest.fixture(scope="module")
def stream():
    return unit_stream(2, 64, 8, seed=3)


# --- streams ----------------------------------------------------------------------------------


def test_unit_stream_has_unit_vectors_the_model_init_and_is_seeded(stream):
    assert stream["q"].shape == stream["k"].shape == stream["v"].shape == (2, 1, 64, 8)
    assert stream["w1"].shape == (1, 8, 8) and stream["w2"].shape == (1, 8, 8)
    for name in ("q", "k", "v"):
        assert torch.allclose(stream[name].norm(dim=-1), torch.ones(2, 1, 64, dtype=torch.float64))
    again = unit_stream(2, 64, 8, seed=3)
    assert all(torch.equal(stream[n], again[n]) for n in stream)
    assert not torch.equal(unit_stream(2, 64, 8, seed=4)["k"], stream["k"])
    assert unit_stream(1, 4, 8, hidden=5)["w1"].shape == (1, 5, 8)


def mean_cosine(k):
    k = k[0, 0]
    return float((k @ k.T).fill_diagonal_(0).sum() / (k.shape[0] * (k.shape[0] - 1)))


def test_shared_direction_correlates_queries_and_keys_but_not_values():
    plain, shared = unit_stream(1, 400, 32, seed=0), unit_stream(1, 400, 32, shared=1.0, seed=0)
    assert abs(mean_cosine(plain["k"])) < 0.02
    assert 0.4 < mean_cosine(shared["k"]) < 0.6 and 0.4 < mean_cosine(shared["q"]) < 0.6
    assert abs(mean_cosine(shared["v"])) < 0.02


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0, seq_len=4, dim=4), "batch_size"), (dict(batch_size=1, seq_len=4, dim=4, shared=-1.0), "shared"),
    (dict(batch_size=1, seq_len=0, dim=4), "seq_len"), (dict(batch_size=1, seq_len=4, dim=4, hidden=0), "hidden")])
def test_unit_stream_names_a_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        unit_stream(**kwargs)


# --- running the memory and its drift -----------------------------------------------------------


def test_run_mlp_memory_is_the_reference_and_chunk_one_equals_it(stream):
    lr = 0.3
    state = MLPMemoryState.initial(stream["w1"], stream["w2"], 2)
    direct, _ = mlp_memory_reference(stream["q"], stream["k"], stream["v"],
                                     torch.full((2, 1, 64), lr, dtype=torch.float64), state=state)
    assert torch.equal(run_mlp_memory(stream, lr), direct)
    assert (run_mlp_memory(stream, lr, chunk_size=1) - direct).abs().max() < 1e-10
    assert (run_mlp_memory(stream, lr, chunk_size=8) - direct).abs().max() > 1e-4
    per_token = torch.full((2, 1, 64), lr, dtype=torch.float64)       # a tensor rate is the same as a number
    assert torch.equal(run_mlp_memory(stream, per_token, chunk_size=8), run_mlp_memory(stream, lr, chunk_size=8))


def test_drift_is_the_relative_error_of_the_reads_and_grows_with_the_chunk(stream):
    d = minibatch_drift(stream, 0.1, [1, 2, 8, 32])
    assert d["error"][1] < 1e-12
    for C in (2, 8, 32):
        by_hand = float((d["outputs"][C] - d["reference"]).norm() / d["reference"].norm())
        assert d["error"][C] == pytest.approx(by_hand, rel=1e-12)
    assert d["error"][2] < d["error"][8] < d["error"][32]
    assert minibatch_drift(stream, 0.01, [8])["error"][8] < d["error"][8]           # and with the rate
    again = minibatch_drift(stream, 0.1, [8], reference=d["reference"])
    assert again["error"][8] == d["error"][8]


def test_drift_refuses_a_reference_that_diverges():
    s = unit_stream(1, 256, 8, seed=0)
    with pytest.raises(ValueError, match="token-by-token memory itself diverges"):
        minibatch_drift(s, 30.0, [4], momentum=0.9)
    with pytest.raises(ValueError, match="at least one chunk size"):
        minibatch_drift(s, 0.1, [])


def test_relative_error_and_its_description():
    ref = torch.ones(3, 4)
    assert relative_error(ref * 1.1, ref) == pytest.approx(0.1)
    assert relative_error(torch.full((3, 4), float("nan")), ref) == math.inf
    assert describe_error(0.0312) == "3.12 %" and describe_error(math.inf) == "diverged"
    assert describe_error(11.0) == "diverged" and describe_error(9.0) == "900 %"


def test_drift_profile_averages_relative_errors_over_sequences_and_windows():
    ref = torch.ones(2, 1, 6, 3)
    out = ref.clone()
    out[0, 0, :3] *= 1.2                     # sequence 0: 20 % on its first three reads
    out[1, 0, 3:] *= 1.4                     # sequence 1: 40 % on its last three
    starts, values = drift_profile(out, ref, window=3)
    assert starts == [0, 3] and values == pytest.approx([10.0, 20.0])
    out[0, 0, 5] = float("inf")
    assert drift_profile(out, ref, window=3)[1][1] == math.inf
    with pytest.raises(ValueError, match="same shape"):
        drift_profile(out[:1], ref)


def test_error_removed_by_one_write_matches_a_write_done_by_hand(stream):
    assert error_removed_by_one_write(stream, 0.0) == pytest.approx(0.0, abs=1e-12)
    lr, t = 0.5, 5
    state = MLPMemoryState.initial(stream["w1"], stream["w2"], 2)
    k, v = stream["k"][:, :, t:t + 1], stream["v"][:, :, t:t + 1]
    _, after = mlp_memory_reference(k, k, v, torch.full((2, 1, 1), lr, dtype=torch.float64), state=state)
    removed = 1 - ((mlp_apply(after.w1, after.w2, k) - v).norm(dim=-1)
                   / (mlp_apply(state.w1, state.w2, k) - v).norm(dim=-1))
    one = error_removed_by_one_write(stream, lr, num_tokens=t + 1)
    first = error_removed_by_one_write(stream, lr, num_tokens=t)
    assert (t + 1) * one - t * first == pytest.approx(float(removed.mean()), abs=1e-10)   # the mean gains token t
    assert 0 < error_removed_by_one_write(stream, 0.1) < error_removed_by_one_write(stream, 1.0)


# --- a trained model at another chunk size, and chunked recall ------------------------------------


@pytest.fixture(scope="module")
def small_memory_model():
    torch.manual_seed(0)
    return build_model("titans_memory", d_model=32, key_dim=8, value_dim=8, hidden=8, max_lr=0.1).eval()


def test_chunking_sets_and_restores_the_memory_form(small_memory_model):
    m = small_memory_model
    with chunking(m, None):
        assert m.reference
    with chunking(m, 4):
        assert m.chunk_size == 4 and not m.reference
    assert m.chunk_size == 16 and not m.reference
    with pytest.raises(RuntimeError), chunking(m, 2):
        raise RuntimeError("inside")
    assert m.chunk_size == 16
    with pytest.raises(ValueError, match="chunk_size"), chunking(m, 0):
        pass


def test_chunk_size_curve_evaluates_each_form(small_memory_model):
    task = build_task("associative_lookup", seq_len=48, num_pairs=4, num_queries=4, min_distance=18)
    curve = chunk_size_curve(small_memory_model, task, [1, 4, 48], num_examples=8, seed=0)
    assert list(curve) == [1, 4, 48] and all(r["num_examples"] == 8 for r in curve.values())
    with torch.no_grad():
        tokens = task.sample(8, seed=1).tokens
        with chunking(small_memory_model, None):
            exact = small_memory_model(tokens)
        with chunking(small_memory_model, 1):
            one = small_memory_model(tokens)
        with chunking(small_memory_model, 16):
            sixteen = small_memory_model(tokens)
    assert (exact - one).abs().max() < 1e-4 < (exact - sixteen).abs().max()
    with pytest.raises(ValueError, match="at least one chunk size"):
        chunk_size_curve(small_memory_model, task, [])


def test_model_memory_drift_is_zero_at_chunk_one_and_names_the_inputs(small_memory_model):
    task = build_task("associative_lookup", seq_len=48, num_pairs=4, num_queries=4, min_distance=18)
    tokens = task.sample(4, seed=0).tokens
    d = model_memory_drift(small_memory_model, tokens, [1, 4, 16])
    assert d["error"][1] < 1e-10 and 0 < d["error"][4] < d["error"][16]
    inputs = d["inputs"]
    assert 0 < inputs["lr"] <= inputs["lr_max"] <= 0.1 and 0 < inputs["momentum"] < 1 and 0 < inputs["retain"] < 1
    assert -1 <= inputs["key_cosine"] <= 1
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="MLP memory"):
        model_memory_drift(build_model("delta_memory", d_model=32), tokens, [4])


def test_chunked_recall_is_exact_for_the_matrices_and_an_approximation_for_the_mlp():
    keys, values = random_pairs(4, 16, 16, seed=0)
    for kind in ("delta", "additive"):
        reads = [write_pairs(kind, keys, values, chunk_size=c)(keys) for c in (1, 3, 16, 64)]
        assert all((r - reads[0]).abs().max() < 1e-5 for r in reads)
    token_by_token = write_pairs("mlp", keys, values, hidden=16)(keys)
    assert (write_pairs("mlp", keys, values, hidden=16, chunk_size=1)(keys) - token_by_token).abs().max() < 1e-5
    assert (write_pairs("mlp", keys, values, hidden=16, chunk_size=16)(keys) - token_by_token).abs().max() > 1e-3
    with pytest.raises(ValueError, match="must divide the number of pairs"):
        write_pairs("mlp", keys, values, chunk_size=3)
    res = store_and_recall("mlp", 16, dim=16, trials=4, hidden=16, lr=1.0, chunk_size=4)
    assert res["n"] == 64 and 0 <= res["accuracy"] <= 1


# --- timing, the benchmark file, crossovers --------------------------------------------------------


def test_time_call_warms_up_and_takes_the_median():
    calls = []
    seconds = time_call(lambda: calls.append(1), repeats=4)
    assert len(calls) == 5 and 0 <= seconds < 0.1
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)


def test_the_committed_benchmark_loads_and_has_what_the_chapter_plots():
    bench = load_chunked_benchmark(BENCHMARK)
    assert bench["path"] == str(BENCHMARK) and bench["machine"]["cpu"] and "memory_speed.py" in bench["command"]
    fw, att, st = bench["forward"], bench["attention"], bench["state"]
    for name in ("delta rule, token by token", "delta rule, chunk 64", "MLP memory, token by token",
                 "MLP memory, chunk 16", "MLP memory, chunk 64"):
        assert len(fw["seconds"][name]) == len(fw["seq_lens"]) and all(x > 0 for x in fw["seconds"][name])
    assert {"linear memory, chunk 64", "delta rule, chunk 64", "causal attention (SDPA)"} <= set(att["seconds"])
    assert set(st["bytes"]) == {"KV cache (attention)", "delta rule state", "MLP memory state"}
    assert all(len(ys) == len(st["seq_lens"]) for ys in st["bytes"].values())
    assert {"delta rule, chunk 64, fast form", "MLP memory, chunk 16, fast form",
            "MLP memory, chunk 64, fast form"} <= set(fw["seconds"])
    assert {"linear memory, chunk 64, fast form", "delta rule, chunk 64, fast form"} <= set(att["seconds"])
    assert {"memorylib, chunk 16", "memorylib, chunk 16, fast form"} <= set(bench["training"]["tokens_per_s"])
    assert all({"target", "required", "verdict"} <= set(t) for t in bench["targets"])
    assert 0 < bench["rate"]["share_of_matmul_rate"] < 1 and bench["rate"]["matmul_gflop_per_s"] > 0
    assert bench["rate"]["size"] == 1024


def test_the_benchmark_loader_rejects_missing_sections(tmp_path):
    good = json.loads(BENCHMARK.read_text())
    with pytest.raises(FileNotFoundError, match="no benchmark file"):
        load_chunked_benchmark(tmp_path / "absent.json")
    for section in BENCHMARK_SECTIONS:
        bad = {k: v for k, v in good.items() if k != section}
        (tmp_path / "b.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=section):
            load_chunked_benchmark(tmp_path / "b.json")
    empty = json.loads(BENCHMARK.read_text())
    empty["loop_vs_chunked"]["rows"] = [r for r in empty["loop_vs_chunked"]["rows"] if r["method"] == "nothing"]
    (tmp_path / "e.json").write_text(json.dumps(empty))
    with pytest.raises(ValueError, match="loop_vs_chunked has no rows"):
        load_chunked_benchmark(tmp_path / "e.json")


def test_crossover_of_known_power_laws():
    xs = [2 ** i for i in range(4, 12)]
    quadratic, linear = [x * x for x in xs], [100 * x for x in xs]        # equal at x = 100
    assert crossover(xs, quadratic, linear) == pytest.approx(100.0)
    assert crossover(xs, linear, quadratic) is None                        # quadratic is cheaper first
    assert crossover(xs, quadratic, [1e9 * x for x in xs]) is None          # never catches up
    with pytest.raises(ValueError, match="same length"):
        crossover(xs, quadratic, linear[:-1])


# --- figures ---------------------------------------------------------------------------------------


def drift_errors():
    return {"a": {0.1: {2: 0.01, 8: 0.05, 32: math.inf}, 1.0: {2: 0.2, 8: 12.0, 32: 0.5}},
            "b": {0.1: {2: 0.02, 8: 0.1, 32: 0.3}}}


def test_drift_figure_draws_percent_on_log_axes_and_marks_divergence():
    fig = drift_figure(drift_errors(), notes={"b": "a note"})
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [list(t.y) for t in lines] == [[1.0, 5.0], [20.0, 50.0], [2.0, 10.0, 30.0]]
    crosses = [t for t in fig.data if t.name == "diverged" and t.x and t.x[0] is not None]
    assert [list(t.x) for t in crosses] == [[32], [8]]                  # inf, and 1200 % above the cap
    assert all(y >= 1000 for t in crosses for y in t.y)
    assert all(ax.type == "log" for ax in (fig.layout.yaxis, fig.layout.yaxis2, fig.layout.xaxis2))
    assert "a note" in fig.layout.annotations[1].text
    assert fig.to_plotly_json() == drift_figure(drift_errors(), notes={"b": "a note"}).to_plotly_json()
    with pytest.raises(ValueError, match="at least one panel"):
        drift_figure({})


def test_scaling_figure_rounds_labels_lengths_and_marks():
    fig = scaling_figure([512, 1024, 16384], {"a": [0.0123456, 0.1, 1.0], "b": [1e-4, None, 3.0]}, "seconds",
                         marks={"cross": 700.123})
    assert list(fig.data[0].y) == [0.01235, 0.1, 1.0] and fig.data[1].y[1] is None
    assert list(fig.layout.xaxis.ticktext) == ["512", "1K", "16K"] and fig.layout.xaxis.type == "log"
    assert list(fig.data[2].x) == [700.1, 700.1] and fig.data[2].text[1] == "cross"
    json.dumps(fig.to_plotly_json(), default=str)
    with pytest.raises(ValueError, match="has 2 values for 3"):
        scaling_figure([1, 2, 3], {"a": [1, 2]}, "s")


def trade_table():
    return {2: {"us_per_token": 40.0, "error": 0.004}, 16: {"us_per_token": 10.0, "error": 0.02},
            64: {"us_per_token": 4.0, "error": math.inf}}


def test_chunk_tradeoff_figure_highlights_one_chunk_size():
    fig = chunk_tradeoff_figure(trade_table(), 16, ([0, 16], [0.5, 2.0]), baseline_us=30.0)
    grey, red, profile = fig.data
    assert list(grey.x) == [40.0, 10.0, 4.0] and list(grey.y) == [0.4, 2.0, 1000.0]
    assert list(red.x) == [10.0] and list(profile.y) == [0.5, 2.0]
    # the title wraps for a phone's width (figures.wrap)
    assert fig.layout.title.text.replace("<br>", " ") == "chunk 16: 10 µs per token (3.0x token by token), drift 2 %"
    assert "diverged" in chunk_tradeoff_figure(trade_table(), 64).layout.title.text
    with pytest.raises(ValueError, match="not in the table"):
        chunk_tradeoff_figure(trade_table(), 8)


def test_chunk_slider_figure_has_one_step_per_chunk_size_and_consistent_visibility():
    profiles = {2: ([0], [0.1]), 16: ([0], [1.0]), 64: ([0], [50.0])}
    fig = chunk_slider_figure(trade_table(), profiles, baseline_us=30.0, active=16)
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["2", "16", "64"] and fig.layout.sliders[0].active == 1
    for j, step in enumerate(steps):
        visible = step.args[0]["visible"]
        assert len(visible) == len(fig.data) == 7 and visible[0]
        shown = [t.name for t, v in zip(fig.data[1:], visible[1:]) if v]
        assert shown == [f"chunk {[2, 16, 64][j]}"] * 2
    assert [bool(t.visible) for t in fig.data[1:]] == [False, False, True, True, False, False]
    assert fig.layout.title.text == steps[1].args[1]["title.text"]
    assert fig.to_plotly_json() == chunk_slider_figure(trade_table(), profiles, baseline_us=30.0,
                                                       active=16).to_plotly_json()
    with pytest.raises(ValueError, match="no row in the table"):
        chunk_slider_figure(trade_table(), {8: ([0], [1.0])})
    with pytest.raises(ValueError, match="active must be one of"):
        chunk_slider_figure(trade_table(), profiles, active=128)


# --- the live control -------------------------------------------------------------------------


def test_chunk_size_explorer_measures_live_and_redraws_through_the_pure_figure(monkeypatch):
    pytest.importorskip("ipywidgets")
    import memorylib.figures as figures
    from memorylib.widgets import chunk_size_explorer

    drawn = []
    monkeypatch.setattr(figures, "chunk_tradeoff_figure", lambda table, chunk, profile, baseline_us: drawn.append(
        (dict(table), chunk, profile, baseline_us)) or go.Figure())
    s = unit_stream(1, 32, 8, seed=0)
    box = chunk_size_explorer(s, learning_rates=(0.1, 0.3), lr=0.1, chunk_sizes=(2, 8), chunk_size=2, repeats=1)
    size, rate = box.children[0].children
    assert size.options == ("2", "8") and rate.value == "0.1" and drawn == []     # book mode: no first drawing
    size.value = "8"
    table, chunk, profile, baseline = drawn[-1]
    assert chunk == 8 and set(table) == {8} and baseline > 0 and profile is not None
    assert table[8]["error"] == pytest.approx(minibatch_drift(s, 0.1, [8])["error"][8], rel=1e-12)
    size.value = "2"
    assert set(drawn[-1][0]) == {2, 8}                                           # every size measured so far
    rate.value = "0.3"
    assert set(drawn[-1][0]) == {2}
    with pytest.raises(ValueError, match="chunk_size must be one of"):
        chunk_size_explorer(s, chunk_sizes=(2, 8), chunk_size=4)
