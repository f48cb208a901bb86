"""The MLP memory (TTT): analytic per-token gradients equal autograd; the chunked mini-batch form
equals the sequential reference at chunk size 1 and an independent mini-batch loop at every chunk
size, in float64; streaming in pieces equals one call; gradients of the outer model agree. Every
test of the chunked form runs both of its loops: the default and ``fast=True`` (the fewest
operations per chunk)."""

import pytest
import torch
import torch.nn.functional as F

from memorylib.ttt import MLPMemoryState, mlp_apply, mlp_memory, mlp_memory_reference, token_gradients

DT = torch.float64
B, H, Dk, Dv, HID = 2, 3, 8, 5, 6


def inputs(T=37, seed=0, momentum=True, retain=True):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, H, T, Dk, generator=g, dtype=DT), dim=-1)
    k = F.normalize(torch.randn(B, H, T, Dk, generator=g, dtype=DT), dim=-1)
    v = torch.randn(B, H, T, Dv, generator=g, dtype=DT)
    lr = 0.5 * torch.rand(B, H, T, generator=g, dtype=DT)
    mom = 0.9 * torch.rand(B, H, T, generator=g, dtype=DT) if momentum else None
    ret = 0.8 + 0.2 * torch.rand(B, H, T, generator=g, dtype=DT) if retain else None
    w1 = torch.randn(H, HID, Dk, generator=g, dtype=DT) / Dk ** 0.5
    w2 = torch.randn(H, Dv, HID, generator=g, dtype=DT) / HID ** 0.5
    return q, k, v, lr, mom, ret, w1, w2


def minibatch_loop(q, k, v, lr, mom, ret, w1, w2, chunk_size):
    """An independent, naive statement of the mini-batch form: autograd gradients at the
    chunk-start weights, then the momentum and retention recurrences token by token."""
    T = k.shape[2]
    mom = torch.zeros_like(lr) if mom is None else mom
    ret = torch.ones_like(lr) if ret is None else ret
    W1, W2 = w1.expand(B, *w1.shape).clone(), w2.expand(B, *w2.shape).clone()
    S1, S2 = torch.zeros_like(W1), torch.zeros_like(W2)
    outs = []
    for start in range(0, T, chunk_size):
        W1_0, W2_0 = W1.detach().requires_grad_(), W2.detach().requires_grad_()
        for t in range(start, min(start + chunk_size, T)):
            loss = 0.5 * (mlp_apply(W1_0, W2_0, k[:, :, t:t + 1]) - v[:, :, t:t + 1]).pow(2).sum()
            g1, g2 = torch.autograd.grad(loss, [W1_0, W2_0])
            e, th, a = (x[:, :, t, None, None] for x in (mom, lr, ret))
            S1, S2 = e * S1 - th * g1, e * S2 - th * g2
            W1, W2 = a * W1 + S1, a * W2 + S2
            outs.append(mlp_apply(W1, W2, q[:, :, t:t + 1]).detach())
    return torch.cat(outs, dim=2), W1.detach(), W2.detach()


def test_token_gradients_equal_autograd():
    q, k, v, lr, mom, ret, w1, w2 = inputs(T=4)
    W1 = w1.expand(B, *w1.shape).clone().requires_grad_()
    W2 = w2.expand(B, *w2.shape).clone().requires_grad_()
    for t in range(4):
        loss = 0.5 * (mlp_apply(W1, W2, k[:, :, t:t + 1]) - v[:, :, t:t + 1]).pow(2).sum()
        g1, g2 = torch.autograd.grad(loss, [W1, W2])
        d, e, h = token_gradients(W1, W2, k[:, :, t:t + 1], v[:, :, t:t + 1])
        assert (g1 - d.transpose(-1, -2) @ k[:, :, t:t + 1]).abs().max() < 1e-12
        assert (g2 - e.transpose(-1, -2) @ h).abs().max() < 1e-12


FAST = pytest.mark.parametrize("fast", [False, True], ids=["default", "fast"])


@FAST
@pytest.mark.parametrize("momentum,retain", [(False, False), (True, False), (False, True), (True, True)])
def test_chunk_size_one_equals_the_sequential_reference(momentum, retain, fast):
    q, k, v, lr, mom, ret, w1, w2 = inputs(momentum=momentum, retain=retain)
    state = MLPMemoryState.initial(w1, w2, B)
    ref, ref_state = mlp_memory_reference(q, k, v, lr, mom, ret, state=state)
    out, out_state = mlp_memory(q, k, v, lr, mom, ret, state=state, chunk_size=1, fast=fast)
    assert (out - ref).abs().max() < 1e-10
    for a, b in zip(out_state.tensors(), ref_state.tensors()):
        assert (a - b).abs().max() < 1e-10


@pytest.mark.parametrize("momentum,retain", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("chunk_size", [2, 5, 16, 37, 64])
@FAST
def test_chunked_form_equals_a_naive_minibatch_loop(chunk_size, momentum, retain, fast):
    q, k, v, lr, mom, ret, w1, w2 = inputs(momentum=momentum, retain=retain)
    out, state = mlp_memory(q, k, v, lr, mom, ret, state=MLPMemoryState.initial(w1, w2, B), chunk_size=chunk_size,
                            fast=fast)
    loop, W1, W2 = minibatch_loop(q, k, v, lr, mom, ret, w1, w2, chunk_size)
    assert (out - loop).abs().max() < 1e-10
    if 37 % chunk_size == 0:
        assert (state.w1 - W1).abs().max() < 1e-10 and (state.w2 - W2).abs().max() < 1e-10
    # and a chunk is an approximation: it differs from the sequential reference
    ref, _ = mlp_memory_reference(q, k, v, lr, mom, ret, state=MLPMemoryState.initial(w1, w2, B))
    assert (out - ref).abs().max() > 1e-4


@pytest.mark.parametrize("gates", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 4, 16])
@FAST
def test_streaming_in_pieces_equals_one_call(chunk_size, gates, fast):
    q, k, v, lr, mom, ret, w1, w2 = inputs(T=50, momentum=gates, retain=gates)
    state0 = MLPMemoryState.initial(w1, w2, B)
    whole, whole_state = mlp_memory(q, k, v, lr, mom, ret, state=state0, chunk_size=chunk_size, fast=fast)
    outs, state = [], state0
    for lo, hi in [(0, 3), (3, 4), (4, 21), (21, 22), (22, 50)]:
        sl = slice(lo, hi)
        def part(x, sl=sl):
            return None if x is None else x[:, :, sl]

        o, state = mlp_memory(q[:, :, sl], k[:, :, sl], v[:, :, sl], lr[:, :, sl], part(mom), part(ret),
                              state=state, chunk_size=chunk_size, fast=fast)
        outs.append(o)
    assert (torch.cat(outs, dim=2) - whole).abs().max() < 1e-12
    for a, b in zip(state.tensors(), whole_state.tensors()):
        assert (a - b).abs().max() < 1e-12
    assert state.nbytes() <= state0.nbytes() + (chunk_size - 1) * B * H * (Dk + Dv + 3) * 8


def test_reference_streams_too():
    q, k, v, lr, mom, ret, w1, w2 = inputs(T=20)
    state0 = MLPMemoryState.initial(w1, w2, B)
    whole, _ = mlp_memory_reference(q, k, v, lr, mom, ret, state=state0)
    a, s = mlp_memory_reference(q[:, :, :7], k[:, :, :7], v[:, :, :7], lr[:, :, :7], mom[:, :, :7], ret[:, :, :7],
                                state=state0)
    b, _ = mlp_memory_reference(q[:, :, 7:], k[:, :, 7:], v[:, :, 7:], lr[:, :, 7:], mom[:, :, 7:], ret[:, :, 7:],
                                state=s)
    assert (torch.cat([a, b], dim=2) - whole).abs().max() < 1e-12


@FAST
def test_outer_gradients_agree_between_forms(fast):
    q, k, v, lr, mom, ret, w1, w2 = inputs(T=13)
    grads = []
    for fn in (lambda *x, state: mlp_memory(*x, state=state, chunk_size=1, fast=fast), mlp_memory_reference):
        leaves = [x.clone().requires_grad_() for x in (q, k, v, lr, mom, ret, w1, w2)]
        out, state = fn(*leaves[:6], state=MLPMemoryState.initial(leaves[6], leaves[7], B))
        (out.pow(2).sum() + state.w1.sin().sum()).backward()
        grads.append([x.grad for x in leaves])
    for g_chunk, g_ref in zip(*grads):
        assert g_ref.abs().max() > 0
        assert (g_chunk - g_ref).abs().max() < 1e-10


def test_writing_a_pair_moves_the_memory_toward_it():
    q, k, v, lr, _, _, w1, w2 = inputs(T=1)
    state = MLPMemoryState.initial(w1, w2, B)
    before = (mlp_apply(state.w1, state.w2, k) - v).pow(2).sum()
    _, after_state = mlp_memory(k, k, v, torch.full_like(lr, 0.1), state=state, chunk_size=1)
    after = (mlp_apply(after_state.w1, after_state.w2, k) - v).pow(2).sum()
    assert after < before


def test_bad_inputs_name_the_value():
    q, k, v, lr, mom, ret, w1, w2 = inputs(T=5)
    state = MLPMemoryState.initial(w1, w2, B)
    with pytest.raises(ValueError, match=r"lr must be >= 0, got values in \[-0.97"):
        mlp_memory(q, k, v, lr - 1, state=state)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        mlp_memory(q, k, v, lr, mom + 1, state=state)
    with pytest.raises(ValueError, match="state must be an MLPMemoryState"):
        mlp_memory(q, k, v, lr, state=None)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got 0"):
        mlp_memory(q, k, v, lr, state=state, chunk_size=0)
    _, open_state = mlp_memory(q, k, v, lr, state=state, chunk_size=4)       # 5 tokens: one left open
    with pytest.raises(ValueError, match="unfinished chunk of chunk_size=4"):
        mlp_memory(q, k, v, lr, state=open_state, chunk_size=8)
    with pytest.raises(ValueError, match="continue it with mlp_memory"):
        mlp_memory_reference(q, k, v, lr, state=open_state)


@pytest.mark.parametrize("momentum,retain", [(False, False), (True, True)])
def test_fast_form_has_the_default_forms_gradients_at_every_chunk_size(momentum, retain):
    """Gradients of every input through both chunked loops, at a chunk size that leaves an
    unfinished chunk (the fast loop hands it to the default one)."""
    q, k, v, lr, mom, ret, w1, w2 = inputs(T=29, momentum=momentum, retain=retain)
    grads = []
    for fast in (False, True):
        leaves = [None if x is None else x.clone().requires_grad_() for x in (q, k, v, lr, mom, ret, w1, w2)]
        out, state = mlp_memory(*leaves[:6], state=MLPMemoryState.initial(leaves[6], leaves[7], B), chunk_size=8,
                                fast=fast)
        (out.sin().sum() + state.w2.pow(2).sum() + state.s1.sum()).backward()
        grads.append([None if x is None else x.grad for x in leaves])
    for g_default, g_fast in zip(*grads):
        if g_default is not None:
            assert g_default.abs().max() > 0
            assert (g_fast - g_default).abs().max() < 1e-10
