"""The delta rule: the chunked (UT transform) form equals the token-by-token recurrence in float64,
streams in pieces, has the same gradients, and is erase-then-write / linear attention."""

import pytest
import torch
import torch.nn.functional as F

from memorylib.delta_rule import decay_products, delta_rule, delta_rule_reference, state_bytes

DT = torch.float64


def inputs(B=2, H=3, T=37, Dk=8, Dv=5, seed=0, retain=True, zero_retain=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dk, generator=g, dtype=DT)
    k = F.normalize(torch.randn(B, H, T, Dk, generator=g, dtype=DT), dim=-1)
    v = torch.randn(B, H, T, Dv, generator=g, dtype=DT)
    beta = torch.rand(B, H, T, generator=g, dtype=DT)
    a = 0.5 + 0.5 * torch.rand(B, H, T, generator=g, dtype=DT) if retain else None
    if zero_retain:
        a[:, :, 10] = 0.0                       # forget everything at one position
    return q, k, v, beta, a


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("erase", [True, False])
@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 8, 16, 37, 100])
def test_chunked_equals_recurrence_in_float64(erase, retain, chunk_size, fast):
    q, k, v, beta, a = inputs(retain=retain, zero_retain=retain)
    ref, ref_state = delta_rule_reference(q, k, v, beta, a, erase=erase)
    out, state = delta_rule(q, k, v, beta, a, chunk_size=chunk_size, erase=erase, fast=fast)
    assert (out - ref).abs().max() < 1e-10          # T = 37 is not a multiple of most chunk sizes
    assert (state - ref_state).abs().max() < 1e-10
    assert ref.abs().max() > 0.1                    # not trivially zero


@pytest.mark.parametrize("fast", [False, True])
def test_the_check_can_fail(fast):
    q, k, v, beta, a = inputs()
    ref, _ = delta_rule_reference(q, k, v, beta, a)
    out, _ = delta_rule(q, k, v, beta * 1.001, a, chunk_size=8, fast=fast)
    assert (out - ref).abs().max() > 1e-6


@pytest.mark.parametrize("form", ["chunked", "fast", "reference"])
def test_streaming_in_pieces_equals_one_call(form):
    q, k, v, beta, a = inputs(T=50)
    call = (lambda *x, state=None: delta_rule(*x, state=state, chunk_size=8, fast=form == "fast")) \
        if form != "reference" else (lambda *x, state=None: delta_rule_reference(*x, state=state))
    whole, whole_state = call(q, k, v, beta, a)
    outs, state = [], None
    for lo, hi in [(0, 3), (3, 4), (4, 21), (21, 50)]:
        o, state = call(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], beta[:, :, lo:hi], a[:, :, lo:hi], state=state)
        outs.append(o)
    assert (torch.cat(outs, dim=2) - whole).abs().max() < 1e-12
    assert (state - whole_state).abs().max() < 1e-12


@pytest.mark.parametrize("fast", [False, True])
def test_gradients_of_both_forms_agree(fast):
    q, k, v, beta, a = inputs(T=21)
    m0 = torch.randn(2, 3, 5, 8, dtype=DT)
    grads = []
    for fn in (lambda *x: delta_rule(*x, chunk_size=4, fast=fast), delta_rule_reference):
        leaves = [x.clone().requires_grad_() for x in (q, k, v, beta, a, m0)]
        out, state = fn(*leaves)
        (out.pow(2).sum() + state.sin().sum()).backward()
        grads.append([x.grad for x in leaves])
    for g_chunk, g_ref in zip(*grads):
        assert (g_chunk - g_ref).abs().max() < 1e-10


def test_a_write_with_unit_key_and_rate_one_replaces_the_stored_value():
    # chapter 3's erase-then-write, with the key as the address
    q, k, v, _, _ = inputs(B=1, H=1, T=2, Dk=6, Dv=4)
    k[:, :, 1] = k[:, :, 0]                                  # the same key twice, two values
    beta = torch.ones(1, 1, 2, dtype=DT)
    _, M = delta_rule_reference(q, k, v, beta)
    assert torch.allclose(M @ k[0, 0, 0], v[0, 0, 1], atol=1e-12)          # the new value, the old one gone
    _, M_add = delta_rule_reference(q, k, v, beta, erase=False)
    assert torch.allclose(M_add @ k[0, 0, 0], v[0, 0, 0] + v[0, 0, 1], atol=1e-12)   # additive: the sum


def test_additive_write_is_causal_linear_attention():
    q, k, v, beta, _ = inputs(T=30)
    out, _ = delta_rule(q, k, v, beta, chunk_size=7, erase=False)
    scores = (q @ k.transpose(-1, -2)).tril() * beta[:, :, None, :]        # o_t = sum_{i<=t} beta_i (q_t.k_i) v_i
    assert (out - scores @ v).abs().max() < 1e-10


def test_orthogonal_keys_are_stored_exactly_up_to_key_dim():
    D = 8
    keys = torch.linalg.qr(torch.randn(D, D, dtype=DT))[0].T[None, None]   # (1, 1, D, D) orthonormal rows
    values = torch.randn(1, 1, D, 3, dtype=DT)
    _, M = delta_rule(keys, keys, values, torch.ones(1, 1, D, dtype=DT), chunk_size=3)
    assert torch.allclose(keys[0, 0] @ M[0, 0].T, values[0, 0], atol=1e-10)


def test_decay_products():
    a = torch.tensor([0.5, 0.0, 2.0, 3.0], dtype=DT)
    G = decay_products(a)
    assert G[3, 0] == 0.0 * 2.0 * 3.0 and G[3, 2] == 3.0 and G[2, 2] == 1.0 and G[0, 1] == 0.0
    assert G[3, 1] == 6.0


def test_state_is_constant_in_sequence_length():
    sizes = set()
    for T in (10, 100, 1000):
        q, k, v, beta, a = inputs(B=1, H=1, T=T)
        sizes.add(state_bytes(delta_rule(q, k, v, beta, a, chunk_size=64)[1]))
    assert sizes == {5 * 8 * 8}


def test_bad_inputs_name_the_value():
    q, k, v, beta, a = inputs(T=5)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got 0"):
        delta_rule(q, k, v, beta, chunk_size=0)
    with pytest.raises(ValueError, match=r"retain must be in \[0, 1\]"):
        delta_rule(q, k, v, beta, a * 3)
    with pytest.raises(ValueError, match=r"beta must be a tensor of shape \(2, 3, 5\)"):
        delta_rule(q, k, v, beta[:, :, :4])
    with pytest.raises(ValueError, match="q and k must have the same shape"):
        delta_rule(q[..., :4], k, v, beta)
    with pytest.raises(ValueError, match=r"state must be a tensor of shape \(2, 3, 5, 8\)"):
        delta_rule(q, k, v, beta, state=torch.zeros(2, 3, 8, 5, dtype=DT))
