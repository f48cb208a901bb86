"""The surprise sidecar: equals a naive token-by-token cache with eviction by surprise (ties keep
the older token), streams in pieces, is causal (strictly: a token is not read at its own
position), keeps a constant-size state, and passes gradients to keys, values and queries only."""

import pytest
import torch

from memorylib.sidecar import sidecar_attention

DT = torch.float64
B, T, D, DV, K = 2, 23, 4, 3, 5


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, T, D, generator=g, dtype=DT), torch.randn(B, T, D, generator=g, dtype=DT)
    v = torch.randn(B, T, DV, generator=g, dtype=DT)
    s = torch.randint(0, 6, (B, T), generator=g).to(DT)                 # few values: ties on purpose
    return q, k, v, s


def naive(q, k, v, s, capacity):
    out = torch.zeros(B, T, DV, dtype=DT)
    for b in range(B):
        cache = []                                                      # (surprise, position)
        for t in range(T):
            idx = [p for _, p in cache]
            keys = torch.cat([torch.zeros(1, D, dtype=DT), k[b, idx]])
            vals = torch.cat([torch.zeros(1, DV, dtype=DT), v[b, idx]])
            out[b, t] = torch.softmax(keys @ q[b, t] / D ** 0.5, 0) @ vals
            cache = sorted(cache + [(s[b, t].item(), t)], key=lambda x: (-x[0], x[1]))[:capacity]
    return out


@pytest.mark.parametrize("capacity", [1, 5, 30])
def test_equals_a_naive_cache_with_eviction_by_surprise(capacity):
    q, k, v, s = inputs()
    assert (sidecar_attention(q, k, v, s, capacity) - naive(q, k, v, s, capacity)).abs().max() < 1e-12


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


def test_bad_inputs_name_the_value():
    q, k, v, s = inputs()
    with pytest.raises(ValueError, match="capacity must be >= 1, got 0"):
        sidecar_attention(q, k, v, s, 0)
    with pytest.raises(ValueError, match=r"surprise: \(B, T\)"):
        sidecar_attention(q, k, v, s[:, :5], K)
    _, state = sidecar_attention(q, k, v, s, K, return_state=True)
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        sidecar_attention(q, k, v, s, 3, state=state)
