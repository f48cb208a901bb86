"""The surprise sidecar: equals a naive token-by-token cache with eviction by surprise (ties keep
the older token), streams in pieces, is causal (strictly: a token is not read at its own
position), keeps a constant-size state, and passes gradients to keys, values and queries only."""

import pytest
import torch

from memorylib.sidecar import sidecar_attention, sidecar_attention_reference

DT = torch.float64
B, T, D, DV, K = 2, 23, 4, 3, 5


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, D, generator=g, dtype=DT), torch.randn(B, T, D, generator=g, dtype=DT)
    v = torch.randn(B, T, DV, generator=g, dtype=DT)
    s = torch.randint(0, 6, (B, T), generator=g).to(DT)                 # few values: ties on purpose
    return q, k, v, s


@pytest.mark.parametrize("capacity", [1, 5, 30])
def test_equals_a_naive_cache_with_eviction_by_surprise(capacity):
    q, k, v, s = inputs()
    fast, reference = sidecar_attention(q, k, v, s, capacity), sidecar_attention_reference(q, k, v, s, capacity)
    assert (fast - reference).abs().max() < 1e-12


def test_streaming_in_pieces_equals_one_call_with_constant_state():
    q, k, v, s = inputs(1)
    whole, whole_state = sidecar_attention(q, k, v, s, K, return_state=True)
    outs, state, sizes = [], None, set()
    for lo, hi in [(0, 4), (4, 5), (5, 17), (17, 23)]:
        o, state = sidecar_attention(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], s[:, lo:hi], K, state=state,
                                     return_state=True)
        outs.append(o)
        sizes.add(state.nbytes())
    assert (torch.cat(outs, 1) - whole).abs().max() < 1e-12
    assert torch.equal(state.position, whole_state.position) and state.seen == T and len(sizes) == 1
    # the kept positions are the top-K by surprise, older first on ties
    for b in range(B):
        ranked = sorted(range(T), key=lambda t: (-s[b, t].item(), t))[:K]
        assert sorted(ranked) == state.position[b].tolist()


def test_causal_a_token_is_read_only_after_it():
    q, k, v, s = inputs(2)
    base = sidecar_attention(q, k, v, s, K)
    for t in (0, 7, 22):
        k2, v2, s2 = k.clone(), v.clone(), s.clone()
        k2[:, t:] += 1.0
        v2[:, t:] -= 2.0
        s2[:, t:] = 100.0                                              # the most surprising tokens there are
        out = sidecar_attention(q, k2, v2, s2, K)
        assert torch.allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-12)     # position t included
        if t < T - 1:
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:], atol=1e-6)


def test_gradients_reach_queries_keys_values_not_the_selection():
    q, k, v, s = (x.clone().requires_grad_() for x in inputs(3))
    sidecar_attention(q, k, v, s, K).pow(2).sum().backward()
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    assert s.grad is None or s.grad.abs().sum() == 0


@pytest.mark.parametrize("capacity", [1, 5, 30])
def test_a_read_bias_equals_the_naive_cache_read_with_it_streamed_or_not(capacity):
    q, k, v, s = inputs(4)
    bias = torch.randn(B, T, generator=torch.Generator().manual_seed(9), dtype=DT)
    fast = sidecar_attention(q, k, v, s, capacity, bias=bias)
    assert (fast - sidecar_attention_reference(q, k, v, s, capacity, bias=bias)).abs().max() < 1e-12
    assert (fast - sidecar_attention(q, k, v, s, capacity)).abs().max() > 1e-3          # the bias is read
    outs, state = [], None
    for lo, hi in [(0, 6), (6, 7), (7, 23)]:
        o, state = sidecar_attention(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], s[:, lo:hi], capacity, state=state,
                                     return_state=True, bias=bias[:, lo:hi])
        outs.append(o)
    assert (torch.cat(outs, 1) - fast).abs().max() < 1e-12
    kept = state.position >= 0
    assert torch.equal(state.bias[kept], bias.gather(1, state.position.clamp(min=0))[kept])
    from memorylib.sidecar import sidecar_weights
    w, empty = sidecar_weights(q, k, v, s, capacity, bias=bias)
    assert (w @ v - fast).abs().max() < 1e-12 and torch.allclose(w.sum(-1) + empty, torch.ones(B, T, dtype=DT))
    b = bias.clone().requires_grad_()
    sidecar_attention(q, k, v, s, capacity, bias=b).pow(2).sum().backward()
    assert b.grad.abs().sum() > 0 and b.grad[:, -1].abs().sum() == 0            # the last token is never read
    with pytest.raises(ValueError, match="carried with a read bias"):
        sidecar_attention(q[:, :3], k[:, :3], v[:, :3], s[:, :3], capacity, state=state)


def test_bad_inputs_name_the_value():
    q, k, v, s = inputs()
    with pytest.raises(ValueError, match="capacity must be an int >= 1, got 0"):
        sidecar_attention(q, k, v, s, 0)
    with pytest.raises(ValueError, match=r"surprise must be a tensor of shape \(2, \d+\), got \(2, 5\)"):
        sidecar_attention(q, k, v, s[:, :5], K)
    _, state = sidecar_attention(q, k, v, s, K, return_state=True)
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        sidecar_attention(q, k, v, s, 3, state=state)


# --- recall beyond capacity with a sidecar (memorylib.recall) ----------------------------------

from memorylib.delta_rule import delta_rule_reference  # noqa: E402
from memorylib.figures import sidecar_recall_figure  # noqa: E402
from memorylib.recall import prediction_errors, random_pairs, store_and_recall, store_and_recall_with_sidecar  # noqa: E402


@pytest.mark.parametrize("kind", ["delta", "additive"])
def test_prediction_errors_are_the_memorys_error_just_before_each_write(kind):
    keys, values = random_pairs(3, 10, 6, seed=1)
    errs = prediction_errors(kind, keys, values, lr=0.7, retain=0.9)
    M = torch.zeros(3, 1, 6, 6)
    for i in range(10):
        pred = (M @ keys[:, :, i, :, None])[..., 0]
        assert torch.allclose(errs[:, i], (values[:, 0, i] - pred[:, 0]).norm(dim=-1), atol=1e-5)
        _, M = delta_rule_reference(keys[:, :, i:i + 1], keys[:, :, i:i + 1], values[:, :, i:i + 1],
                                    torch.full((3, 1, 1), 0.7), torch.full((3, 1, 1), 0.9), state=M,
                                    erase=kind == "delta")


@pytest.mark.parametrize("kind", ["delta", "additive"])
def test_sidecar_answers_exactly_its_k_pairs_and_never_beats_the_bound(kind):
    alone = store_and_recall(kind, 64, trials=8, seed=2)
    for K, rank in ((0, "surprise"), (16, "surprise"), (16, "random"), (64, "surprise")):
        r = store_and_recall_with_sidecar(kind, 64, K, trials=8, seed=2, rank=rank)
        assert r["memory_only"] == alone["accuracy"]
        assert r["from_sidecar"] == K / 64                       # each cached pair matches its own key only
        assert r["accuracy"] <= r["memory_only"] + K / 64 + 1e-9
        assert r["accuracy"] >= r["memory_only"] - 1e-9          # a cached pair is always recalled
        if K == 64:
            assert r["accuracy"] == 1.0
    with pytest.raises(ValueError, match="rank must be one of"):
        store_and_recall_with_sidecar(kind, 8, 2, rank="oldest")


def test_sidecar_recall_figure_has_a_step_per_capacity():
    curves = {K: {"delta": {"a": [0.1, 0.2], "bound": [0.3, 0.4]}, "additive": {"a": [0.5, 0.6], "bound": [0.7, 0.8]}}
              for K in (0, 4, 16)}
    fig = sidecar_recall_figure([8, 16], curves, active=4)
    assert len(fig.data) == 12 and len(fig.layout.sliders[0].steps) == 3 and fig.layout.sliders[0].active == 1
    assert [t.visible for t in fig.data] == [False] * 4 + [True] * 4 + [False] * 4
    curves[4]["delta"]["a"] = [0.1]
    with pytest.raises(ValueError, match="has 1 values for 2 numbers of pairs"):
        sidecar_recall_figure([8, 16], curves)


def test_explicit_weights_give_the_same_reads():
    from memorylib.sidecar import sidecar_weights

    q, k, v, s = inputs(3)
    w, empty = sidecar_weights(q, k, v, s, K)
    assert torch.allclose(w.sum(-1) + empty, torch.ones(B, T, dtype=DT))
    assert (w.triu() == 0).all()                                   # only earlier tokens
    assert ((w > 0).sum(-1) <= K).all() and (empty[:, 0] == 1).all()
    assert (w @ v - sidecar_attention(q, k, v, s, K)).abs().max() < 1e-12
