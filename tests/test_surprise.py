"""Surprise signals (memorylib.surprise) and the surprise-gated memory model (chapter 4)."""

import math

import pytest
import torch

from memorylib.registry import build_model, build_task
from memorylib.surprise import momentum_surprise, surprise_gate, token_surprise

V = 7


def confident_logits(tokens: torch.Tensor, vocab: int = V, margin: float = 60.0) -> torch.Tensor:
    """Logits whose prediction at t puts (almost) all mass on tokens[t + 1]."""
    B, T = tokens.shape
    nxt = torch.cat([tokens[:, 1:], tokens[:, :1]], dim=1)
    return margin * torch.nn.functional.one_hot(nxt, vocab).double()


def test_perfectly_predicted_tokens_have_zero_surprise():
    tokens = torch.randint(0, V, (3, 9), generator=torch.Generator().manual_seed(0))
    logits = confident_logits(tokens)
    for kind in ("prob", "nll"):
        s = token_surprise(logits, tokens, kind)
        assert s.shape == tokens.shape
        assert torch.all(s[:, 1:].abs() < 1e-12), kind


def test_first_token_and_uniform_prediction_have_the_surprise_of_a_guess():
    tokens = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(1))
    logits = torch.zeros(2, 5, V, dtype=torch.float64)
    assert torch.allclose(token_surprise(logits, tokens, "prob"), torch.full((2, 5), 1 - 1 / V, dtype=torch.float64))
    assert torch.allclose(token_surprise(logits, tokens, "nll"), torch.full((2, 5), math.log(V), dtype=torch.float64))
    # a confident wrong prediction: surprise 1 (prob), large (nll)
    wrong = confident_logits((tokens + 1) % V)
    assert torch.all(token_surprise(wrong, tokens, "prob")[:, 1:] > 1 - 1e-12)
    assert torch.all(token_surprise(wrong, tokens, "nll")[:, 1:] > 50)


def test_token_surprise_uses_only_the_previous_prediction():
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, V, (2, 8), generator=g)
    logits = torch.randn(2, 8, V, generator=g)
    s = token_surprise(logits, tokens)
    t = 4
    later = logits.clone()
    later[:, t:] = torch.randn(2, 8 - t, V, generator=g)     # predictions made at t and after
    tokens2 = tokens.clone()
    tokens2[:, t + 1:] = (tokens2[:, t + 1:] + 3) % V         # tokens after t
    assert torch.equal(token_surprise(later, tokens2)[:, :t + 1], s[:, :t + 1])


def test_momentum_zero_is_the_plain_form_and_the_recurrence_holds():
    s = torch.rand(3, 10, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(momentum_surprise(s, 0.0), s)
    eta = 0.7
    out = momentum_surprise(s, eta)
    expected = torch.zeros_like(s)
    for t in range(10):
        expected[:, t] = s[:, t] + (eta * expected[:, t - 1] if t else 0)
    assert torch.allclose(out, expected, atol=1e-12)
    # a single spike decays geometrically
    spike = torch.zeros(1, 6, dtype=torch.float64)
    spike[0, 1] = 1.0
    assert torch.allclose(momentum_surprise(spike, 0.5)[0],
                          torch.tensor([0, 1, .5, .25, .125, .0625], dtype=torch.float64))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.5"])
def test_momentum_out_of_range_is_rejected(bad):
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\)"):
        momentum_surprise(torch.zeros(1, 3), bad)


def test_surprise_gate_values_and_errors():
    s = torch.tensor([0.0, 0.5, 1.0])
    gate = surprise_gate(s, threshold=0.5, temperature=0.1)
    assert gate[1] == 0.5 and gate[0] < 0.01 and gate[2] > 0.99
    with pytest.raises(ValueError, match="temperature must be a number > 0, got 0"):
        surprise_gate(s, 0.5, 0)
    with pytest.raises(ValueError, match="surprise kind must be one of"):
        token_surprise(torch.zeros(1, 2, V), torch.zeros(1, 2, dtype=torch.long), "entropy")


@pytest.mark.parametrize("name", ["surprise_memory", "momentum_surprise", "surprise_only"])
def test_model_surprise_is_causal_and_not_from_a_state_that_saw_the_token(name):
    torch.manual_seed(0)
    model = build_model(name, num_slots=4).eval()
    task = build_task("needle_recall", seq_len=48, min_distance=18)
    tokens = task.sample(2, seed=0).tokens
    with torch.no_grad():
        _, trace = model(tokens, return_trace=True)
        s = trace["surprise"]
        for t in (5, 20, 40):
            # not from tokens after t
            changed = tokens.clone()
            changed[:, t + 1:] = torch.flip(changed[:, t + 1:], dims=[1])
            _, tr2 = model(changed, return_trace=True)
            assert torch.allclose(tr2["surprise"][:, :t + 1], s[:, :t + 1], atol=1e-6)
            assert torch.allclose(tr2["surprise_gate"][:, :t + 1], trace["surprise_gate"][:, :t + 1], atol=1e-6)
            # from the prediction made on tokens < t: the prefix without x_t gives the same number
            h = model.features(tokens[:, :t])
            p = torch.softmax(model.predictor(h)[:, -1], dim=-1)
            expected = 1 - p.gather(1, tokens[:, t:t + 1]).squeeze(1)
            assert torch.allclose(s[:, t], expected, atol=1e-5)


def test_no_surprise_has_the_same_parameters_and_ignores_the_gate():
    torch.manual_seed(0)
    a = build_model("surprise_memory", num_slots=4)
    torch.manual_seed(0)
    b = build_model("no_surprise", num_slots=4)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    b.load_state_dict(a.state_dict())
    tokens = build_task("needle_recall", seq_len=48, min_distance=18).sample(2, seed=1).tokens
    with torch.no_grad():
        _, ta = a(tokens, return_trace=True)
        _, tb = b(tokens, return_trace=True)
    # the same surprise is measured, but only surprise_memory multiplies its write gate by it
    assert torch.allclose(ta["surprise"], tb["surprise"])
    assert torch.allclose(ta["write_gate"], tb["write_gate"] * ta["surprise_gate"], atol=1e-6)


def test_gate_extremes_decide_what_is_written():
    torch.manual_seed(0)
    model = build_model("surprise_only", num_slots=4).eval()
    tokens = build_task("needle_recall", seq_len=48, min_distance=18).sample(2, seed=2).tokens
    with torch.no_grad():
        model.threshold = 1e6                      # nothing is surprising enough: nothing is written
        h = model.features(tokens)
        _, state, _ = model.memory(h, write_scale=model.write_scale(tokens, h))
        assert state.values.abs().max() < 1e-6 and state.keys.abs().max() < 1e-6
        model.threshold = -1e6                     # everything is: every token writes at full strength
        _, trace = model(tokens, return_trace=True)
        assert torch.allclose(trace["write_gate"], torch.ones_like(trace["write_gate"]))


def test_auxiliary_loss_trains_the_prediction_head_only_with_gradients_on():
    torch.manual_seed(0)
    model = build_model("surprise_memory", num_slots=4)
    tokens = build_task("needle_recall", seq_len=48, min_distance=18).sample(4, seed=3).tokens
    model(tokens)
    aux = model.auxiliary_loss()
    log_vocab = math.log(model.vocab_size)
    assert aux.requires_grad and 0.05 * log_vocab < float(aux.detach()) < 0.2 * log_vocab
    aux.backward()
    assert model.predictor[1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        model(tokens)
    assert float(model.auxiliary_loss()) == 0.0


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "entropy"}, "kind must be one of"),
    ({"momentum": 1.0}, r"momentum must be a number in \[0, 1\)"),
    ({"temperature": -1.0}, "temperature must be a number > 0"),
    ({"aux_weight": -1}, "aux_weight must be a number >= 0"),
    ({"fixed_write": 2.0}, r"fixed_write must be None \(learned\) or a number in \[0, 1\], got 2.0"),
])
def test_bad_surprise_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("surprise_memory", **kwargs)


# --- chapter 4's figures and controls ---------------------------------------------------------


def _traced(name="surprise_only"):
    torch.manual_seed(0)
    model = build_model(name, num_slots=4).eval()
    tokens = build_task("needle_recall", seq_len=48, min_distance=18).sample(2, seed=4).tokens
    with torch.no_grad():
        _, trace = model(tokens, return_trace=True)
    return model, tokens, trace


def test_surprise_trace_figure_draws_surprise_and_writes_per_panel():
    from memorylib.figures import surprise_trace_figure

    _, tokens, trace = _traced("momentum_surprise")
    fig = surprise_trace_figure({"a": trace, "b": trace}, {"a": tokens, "b": tokens}, threshold=0.5)
    names = [t.name for t in fig.data]
    # momentum: the carried surprise differs from the momentary one and gets its own line
    assert names == ["surprise s_t", "carried surprise S_t", "write strength"] * 2
    assert fig.data[2].y == tuple(round(float(v), 3) for v in trace["write_gate"][0])
    _, _, plain = _traced("surprise_only")
    assert len(surprise_trace_figure({"a": plain}, {"a": tokens}).data) == 2
    with pytest.raises(ValueError, match="same names"):
        surprise_trace_figure({"a": trace}, {"b": tokens})
    with pytest.raises(ValueError, match=r"index must be in \[0, 2\), got 5"):
        surprise_trace_figure({"a": plain}, {"a": tokens}, index=5)


def test_threshold_slider_figure_has_one_step_per_threshold():
    from memorylib.figures import threshold_slider_figure

    s = {"p": [0.1, 0.9, 0.2], "r": [0.9, 0.9, 0.9]}
    gates = {0.3: {"p": [0.0, 1.0, 0.0], "r": [1.0, 1.0, 1.0]}, 0.95: {"p": [0.0, 0.1, 0.0], "r": [0.1, 0.1, 0.1]}}
    fig = threshold_slider_figure(s, gates, {0.3: "acc 1.0", 0.95: "acc 0.0"})
    steps = fig.layout.sliders[0].steps
    assert [st.label for st in steps] == ["0.3", "0.95"]
    # 2 fixed surprise lines, then 2 gate lines per threshold; each step shows its own pair
    assert steps[1].args[0]["visible"] == [True, True, False, False, True, True]
    assert "acc 0.0" in steps[1].args[1]["title.text"] and steps[1].args[1]["shapes"][0]["y0"] == 0.95
    with pytest.raises(ValueError, match="at least one threshold"):
        threshold_slider_figure(s, {})


def test_surprise_scatter_rejects_ragged_points():
    from memorylib.figures import surprise_scatter_figure

    fig = surprise_scatter_figure({"m": {"surprise": [0.1, 0.9], "write": [0.0, 1.0], "role": ["filler", "needle"]}})
    assert {t.name for t in fig.data} == {"filler", "needle"}
    with pytest.raises(ValueError, match="same length"):
        surprise_scatter_figure({"m": {"surprise": [0.1], "write": [0.0, 1.0], "role": ["filler"]}})


def test_surprise_settings_restore_and_threshold_changes_what_is_written():
    from memorylib.widgets import surprise_settings

    model, tokens, trace = _traced()
    with surprise_settings(model, threshold=0.99, temperature=0.01), torch.no_grad():
        _, high = model(tokens, return_trace=True)
    assert model.threshold == 0.5 and model.temperature == 0.1
    assert float(high["write_gate"].sum()) < float(trace["write_gate"].sum())
