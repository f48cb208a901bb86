"""An MLP memory written by gradient steps at test time (TTT). Introduced in chapter 5 (the
chunked mini-batch form in chapter 6).

The memory of one head is a two-layer network ``f(x) = W2 silu(W1 x)`` (``W1``: hidden x key_dim,
``W2``: value_dim x hidden). Reading with a query is a forward pass, ``o_t = f_t(q_t)``. Writing
the pair ``(k_t, v_t)`` is one gradient step on ``l_t(W) = 1/2 ||f_W(k_t) - v_t||^2`` with a
per-token learning rate ``theta_t``, carried by momentum ``eta_t`` and applied after a retention
factor ``a_t`` (the Titans form, Behrouz et al. 2024: the momentum ``S`` is the "past surprise",
``1 - a_t`` is weight decay, i.e. forgetting)::

    S_t = eta_t S_{t-1} - theta_t grad l_t(W_{t-1})
    W_t = a_t W_{t-1} + S_t
    o_t = f_{W_t}(q_t)                                  (token t's own write included)

``eta = 0`` (no momentum) and ``a = 1`` (no forgetting) give plain online gradient descent.
For one token the gradient of each layer is rank one: with ``z = W1 k``, ``h = silu(z)``,
``e = W2 h - v`` and ``d = (W2^T e) * silu'(z)``, ``grad_W2 = e h^T`` and ``grad_W1 = d k^T``
(:func:`token_gradients`, checked against autograd in the tests).

Shapes, for a batch of ``B`` sequences and ``H`` heads::

    q, k: (B, H, T, key_dim)   v: (B, H, T, value_dim)   lr, momentum, retain: (B, H, T)
    out: (B, H, T, value_dim)  state: :class:`MLPMemoryState`

Two forms:

* :func:`mlp_memory_reference`: the recurrence above, one token at a time (every gradient at the
  weights the previous token left);
* :func:`mlp_memory`: the chunked mini-batch form (Sun et al. 2024; Behrouz et al. 2024). Inside a
  chunk of ``C`` tokens every gradient is taken at the chunk-start weights ``W_0`` (so they can be
  computed together); the momentum and retention recurrences are linear, so the weights after
  token ``t`` are ``W_t = A_t W_0 + b_t S_0 - sum_{s<=t} c_{ts} grad l_s(W_0)`` with scalar
  coefficients (products of ``a`` and ``eta``), and reads never build ``W_t``: each layer's
  read is a masked product, like attention. The state is carried from chunk to chunk. At
  ``chunk_size=1`` it is the reference (tested: < 1e-10 in float64); at larger chunks it is an
  approximation of it, whose size chapter 6 measures.

Both take and return the state, so a long stream can be processed in pieces. For the chunked
form the chunks are counted from the start of the stream: the state keeps the weights at the last
chunk boundary plus the inputs of the unfinished chunk (at most ``C - 1`` tokens), which the next
call finishes; so pieces of any length give exactly the outputs of one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_int, check_qkv, check_tensor, check_values
from .delta_rule import decay_products


@dataclass
class MLPMemoryState:
    """The memory between calls: weights ``w1: (B, H, hidden, key_dim)``, ``w2: (B, H, value_dim,
    hidden)``, momenta ``s1, s2`` of the same shapes, and (chunked form only) ``pending``: the
    inputs ``k, v, lr, momentum, retain`` of an unfinished chunk, with its ``chunk_size``."""

    w1: torch.Tensor
    w2: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    pending: dict | None = None
    chunk_size: int | None = None

    @classmethod
    def initial(cls, w1: torch.Tensor, w2: torch.Tensor, batch_size: int) -> "MLPMemoryState":
        """Start every sequence of a batch from the weights ``w1: (H, hidden, key_dim)`` and
        ``w2: (H, value_dim, hidden)`` (the outer model's parameters), with zero momentum."""
        w1 = w1.expand(batch_size, *w1.shape)
        w2 = w2.expand(batch_size, *w2.shape)
        return cls(w1, w2, torch.zeros_like(w1), torch.zeros_like(w2))

    def tensors(self) -> list[torch.Tensor]:
        pend = list(self.pending.values()) if self.pending else []
        return [self.w1, self.w2, self.s1, self.s2, *pend]

    def nbytes(self) -> int:
        """Bytes held (constant in the length of the stream: at most ``chunk_size - 1`` pending tokens)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())


def silu_grad(z: torch.Tensor) -> torch.Tensor:
    """d silu(z) / dz = sigmoid(z) (1 + z (1 - sigmoid(z)))."""
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def mlp_apply(w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``f(x) = W2 silu(W1 x)`` for ``x: (B, H, T, key_dim)`` and per-sequence weights."""
    return F.silu(x @ w1.transpose(-1, -2)) @ w2.transpose(-1, -2)


def token_gradients(w1: Tensor, w2: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token gradients of ``1/2 ||f(k_t) - v_t||^2`` at weights ``(w1, w2)``, as rank-one
    factors: ``grad_W1[t] = d_t k_t^T`` and ``grad_W2[t] = e_t h_t^T``. Returns ``(d, e, h)``
    with ``d: (B, H, T, hidden)``, ``e: (B, H, T, value_dim)``, ``h: (B, H, T, hidden)``."""
    z = k @ w1.transpose(-1, -2)
    h = F.silu(z)
    e = h @ w2.transpose(-1, -2) - v
    d = (e @ w2) * silu_grad(z)
    return d, e, h


def _check(q, k, v, lr, momentum, retain, state):
    check_qkv(q, k, v)
    B, H, T, Dk = k.shape
    check_tensor("lr", lr, (B, H, T))
    check_values("lr", lr, 0)
    for name, x in (("momentum", momentum), ("retain", retain)):
        check_tensor(name, x, (B, H, T), allow_none=True)
        check_values(name, x, 0, 1)
    if not isinstance(state, MLPMemoryState):
        raise ValueError(f"state must be an MLPMemoryState (MLPMemoryState.initial(w1, w2, batch_size)), "
                         f"got {type(state).__name__}")
    hidden = state.w1.shape[-2]
    if state.w1.shape != (B, H, hidden, Dk) or state.w2.shape != (B, H, v.shape[-1], hidden):
        raise ValueError(f"state weights of shapes {tuple(state.w1.shape)}, {tuple(state.w2.shape)} do not fit "
                         f"keys {tuple(k.shape)} and values {tuple(v.shape)}")


def _defaults(lr, momentum, retain):
    return (torch.zeros_like(lr) if momentum is None else momentum,
            torch.ones_like(lr) if retain is None else retain)


def mlp_memory_reference(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, momentum: Tensor | None = None,
                         retain: Tensor | None = None, *, state: MLPMemoryState) -> tuple[Tensor, MLPMemoryState]:
    """The MLP memory one token at a time (the definition). Returns ``(out, state)``."""
    _check(q, k, v, lr, momentum, retain, state)
    if state.pending:
        raise ValueError(f"this state holds an unfinished chunk of a chunked call (chunk_size={state.chunk_size}); "
                         f"continue it with mlp_memory(..., chunk_size={state.chunk_size})")
    momentum, retain = _defaults(lr, momentum, retain)
    w1, w2, s1, s2 = state.w1, state.w2, state.s1, state.s2
    outs = []
    for t in range(k.shape[2]):
        kt, vt = k[:, :, t:t + 1], v[:, :, t:t + 1]
        d, e, h = token_gradients(w1, w2, kt, vt)                       # (B, H, 1, .)
        eta, theta, a = (x[:, :, t, None, None] for x in (momentum, lr, retain))
        s1 = eta * s1 - theta * d.transpose(-1, -2) @ kt
        s2 = eta * s2 - theta * e.transpose(-1, -2) @ h
        w1, w2 = a * w1 + s1, a * w2 + s2
        outs.append(mlp_apply(w1, w2, q[:, :, t:t + 1]))
    out = torch.cat(outs, dim=2) if outs else v.new_zeros(v.shape)
    return out, MLPMemoryState(w1, w2, s1, s2)


def _gates(lr, momentum, retain) -> dict:
    """The scalar algebra of a chunk, for inputs ``(..., C)`` (momentum, retain: None = off).

    ``coef[t, s]``: the weight of token ``s``'s gradient in ``W_t``; ``A[t]``: of ``W_0``;
    ``b[t]``: of the momentum ``S_0``; ``m_last[s]`` and ``p_last``: the same for ``S`` after the
    chunk. Depends on the gates only, so it is computed for all chunks at once."""
    C = lr.shape[-1]
    ones = torch.ones(C, C, dtype=lr.dtype, device=lr.device).tril()
    RA = ones if retain is None else decay_products(retain)             # a_{j+1} ... a_t
    RP = torch.eye(C, dtype=lr.dtype, device=lr.device) if momentum is None else decay_products(momentum)
    if momentum is None:
        coef = RA * lr[..., None, :]
    elif retain is None:
        coef = RP.cumsum(-2) * lr[..., None, :]                          # RA @ RP with RA all ones
    else:
        coef = (RA @ RP) * lr[..., None, :]
    g = {"coef": coef, "c_last": coef[..., -1, :, None], "m_last": (RP[..., -1, :] * lr)[..., None],
         "A": None if retain is None else retain.cumprod(-1)[..., None], "b": None, "p_last": None}
    if momentum is not None:
        p = momentum.cumprod(-1)[..., None]
        g["b"] = p.cumsum(-2) if retain is None else RA @ p
        g["p_last"] = p[..., -1:, :]
    return g


def _scaled(g: dict, name: str, x: torch.Tensor, last: bool = False) -> torch.Tensor:
    """``g[name] * x`` (its last row only with ``last``), or ``x`` where the factor is all ones."""
    f = g[name]
    return x if f is None else (f[..., -1:, :] if last else f) * x


def _chunk(q, k, v, g: dict, coef_qk, w1, w2, s1, s2, update: bool):
    """One chunk of the mini-batch form: reads for its tokens, and (``update``) the state after
    it. ``g``: :func:`_gates` of the chunk; ``coef_qk = g["coef"] * (q @ k^T)``."""
    d, e, h = token_gradients(w1, w2, k, v)                             # all at the chunk-start weights
    z = _scaled(g, "A", q @ w1.transpose(-1, -2)) - coef_qk @ d
    if g["b"] is not None:
        z = z + g["b"] * (q @ s1.transpose(-1, -2))
    hq = F.silu(z)
    out = _scaled(g, "A", hq @ w2.transpose(-1, -2)) - (g["coef"] * (hq @ h.transpose(-1, -2))) @ e
    if g["b"] is not None:
        out = out + g["b"] * (hq @ s2.transpose(-1, -2))
    if not update:
        return out, None
    c_last, m_last = g["c_last"], g["m_last"]
    w1n = _scaled(g, "A", w1, last=True) - (d * c_last).transpose(-1, -2) @ k
    w2n = _scaled(g, "A", w2, last=True) - (e * c_last).transpose(-1, -2) @ h
    s1n = -(d * m_last).transpose(-1, -2) @ k
    s2n = -(e * m_last).transpose(-1, -2) @ h
    if g["b"] is not None:
        w1n, w2n = w1n + g["b"][..., -1:, :] * s1, w2n + g["b"][..., -1:, :] * s2
        s1n, s2n = s1n + g["p_last"] * s1, s2n + g["p_last"] * s2
    return out, (w1n, w2n, s1n, s2n)


_PENDING = ("k", "v", "lr", "momentum", "retain")


def _fast_chunks(qs, ks, vs, g: dict, coef_qk, w1, w2, s1, s2):
    """The loop over full chunks with the fewest operations per chunk (``mlp_memory(fast=True)``).

    Inputs are stacked over chunks, ``qs, ks: (B, H, N, C, key_dim)``, ``g`` is :func:`_gates` with
    every factor present. Each layer's weight and momentum are kept side by side, ``[W1 | S1]``
    (hidden x 2 key_dim) and ``[W2 | S2]`` (value_dim x 2 hidden), so one product reads both, and
    everything that depends on the gates and inputs only (``[A q | b q]``, ``-[c k | m k]``) is
    built for all chunks before the loop. Each chunk is then 10 batched products (``bmm``,
    ``baddbmm``) and a dozen element-wise operations, fused multiply-adds where they fit, on
    ``(B H, ., .)`` tensors. The same algebra as :func:`_chunk`."""
    B, H, N, C, Dk = ks.shape
    hidden = w1.shape[-2]

    def flat(x):                                                        # (B, H, N, ...) -> N of (B H, ...)
        return x.reshape(B * H, N, *x.shape[3:]).unbind(1)

    A, b = g["A"], g["b"]                                               # (B, H, N, C, 1)
    ab = torch.cat([A, b], dim=-1)[..., None]                           # (B, H, N, C, 2, 1)
    cm = torch.cat([g["c_last"], g["m_last"]], dim=-1).neg()[..., None]
    qab = flat((ab * qs[..., None, :]).flatten(-2))                     # [A q | b q]: (C, 2 Dk) per chunk
    kcm = flat((cm * ks[..., None, :]).flatten(-2))                     # -[c k | m k]
    keep_w = torch.cat([A[..., -1, :], g["p_last"][..., 0, :]], dim=-1)  # (B, H, N, 2): W's and S's factor
    scale1 = flat(keep_w.repeat_interleave(Dk, dim=-1)[..., None, :])    # (1, 2 Dk) per chunk
    scale2 = flat(keep_w.repeat_interleave(hidden, dim=-1)[..., None, :])  # (1, 2 hidden) per chunk
    ws1 = torch.cat([w1, s1], dim=-1).reshape(B * H, hidden, 2 * Dk)
    ws2 = torch.cat([w2, s2], dim=-1).reshape(B * H, -1, 2 * hidden)
    outs = []
    for k, v, coef, cqk, qab_n, kcm_n, ab_n, cm_n, sc1, sc2, b_last in zip(
            flat(ks), flat(vs), flat(g["coef"]), flat(coef_qk), qab, kcm, flat(ab), flat(cm), scale1, scale2,
            flat(b[..., -1:, :])):
        w1n, w2n = ws1[..., :Dk], ws2[..., :hidden]
        zk = torch.bmm(k, w1n.transpose(1, 2))
        sg = torch.sigmoid(zk)
        h = zk * sg
        sg = torch.addcmul(sg + h, h, sg, value=-1)                     # silu'(z) = s + h - h s
        e = torch.baddbmm(v, h, w2n.transpose(1, 2), beta=-1)            # f(k) - v
        d = torch.bmm(e, w2n) * sg
        hq = F.silu(torch.baddbmm(torch.bmm(qab_n, ws1.transpose(1, 2)), cqk, d, alpha=-1))
        out = torch.bmm((hq[:, :, None, :] * ab_n).reshape(B * H, C, 2 * hidden), ws2.transpose(1, 2))
        outs.append(torch.baddbmm(out, torch.bmm(hq, h.transpose(1, 2)) * coef, e, alpha=-1))
        new1 = torch.addcmul(torch.bmm(d.transpose(1, 2), kcm_n), ws1, sc1)
        new1[..., :Dk].addcmul_(b_last, ws1[..., Dk:])
        hcm = (h[:, :, None, :] * cm_n).reshape(B * H, C, 2 * hidden)
        new2 = torch.addcmul(torch.bmm(e.transpose(1, 2), hcm), ws2, sc2)
        new2[..., :hidden].addcmul_(b_last, ws2[..., hidden:])
        ws1, ws2 = new1, new2
    out = torch.cat(outs, dim=1).reshape(B, H, N * C, -1)
    ws1, ws2 = ws1.reshape(B, H, hidden, 2 * Dk), ws2.reshape(B, H, -1, 2 * hidden)
    return out, ws1[..., :Dk], ws2[..., :hidden], ws1[..., Dk:], ws2[..., hidden:]


def mlp_memory(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, momentum: Tensor | None = None,
               retain: Tensor | None = None, *, state: MLPMemoryState,
               chunk_size: int = 16, fast: bool = False) -> tuple[Tensor, MLPMemoryState]:
    """The chunked mini-batch MLP memory. Returns ``(out, state)``. ``chunk_size=1`` equals
    :func:`mlp_memory_reference`; streaming in pieces (state carried) equals one call.

    Everything that depends on the gates only (``momentum`` or ``retain`` None skips its part)
    and ``q @ k^T`` inside each chunk is computed for all chunks at once; the loop over chunks
    does only what needs the chunk-start weights. ``fast=True`` runs that loop with the fewest
    operations per chunk (:func:`_fast_chunks`: about 1.5x faster at chunk 16 on one CPU thread);
    the same numbers in exact arithmetic (tested in float64, gradients too), not the same last
    bits in float32, so it is opt-in while recorded runs use the default."""
    _check(q, k, v, lr, momentum, retain, state)
    check_int("chunk_size", chunk_size, 1)
    if state.pending and state.chunk_size != chunk_size:
        raise ValueError(f"this state holds an unfinished chunk of chunk_size={state.chunk_size}; "
                         f"continue with that chunk_size, got chunk_size={chunk_size}")
    offset = 0
    if state.pending:
        # finish the chunk the last call left open: its tokens again, outputs dropped
        momentum, retain = _defaults(lr, momentum, retain)
        p = state.pending
        offset = p["k"].shape[2]
        q = torch.cat([q.new_zeros(p["k"].shape), q], dim=2)
        k, v = torch.cat([p["k"], k], dim=2), torch.cat([p["v"], v], dim=2)
        lr, momentum, retain = (torch.cat([p[n], x], dim=2) for n, x in
                                (("lr", lr), ("momentum", momentum), ("retain", retain)))
    w1, w2, s1, s2 = state.w1, state.w2, state.s1, state.s2
    B, H, T, _ = k.shape
    C = chunk_size
    N = T // C                                                          # full chunks
    outs, pending = [], None
    if N:
        def split(x):
            return None if x is None else x[:, :, :N * C].reshape(B, H, N, C, *x.shape[3:])

        qs, ks, vs = split(q), split(k), split(v)
        if fast:                                                        # every factor present
            momentum, retain = _defaults(lr, momentum, retain)
        g_all = _gates(split(lr), split(momentum), split(retain))
        coef_qk = g_all["coef"] * (qs @ ks.transpose(-1, -2))           # (B, H, N, C, C)
        if fast:
            out, w1, w2, s1, s2 = _fast_chunks(qs, ks, vs, g_all, coef_qk, w1, w2, s1, s2)
            outs.append(out)
        for n in range(0 if fast else N):
            g = {name: None if x is None else x[:, :, n] for name, x in g_all.items()}
            out, (w1, w2, s1, s2) = _chunk(qs[:, :, n], ks[:, :, n], vs[:, :, n], g, coef_qk[:, :, n],
                                           w1, w2, s1, s2, update=True)
            outs.append(out)
    if N * C < T:                                                       # an unfinished chunk: read, keep
        sl = slice(N * C, T)
        mom, ret = _defaults(lr, momentum, retain)
        g = _gates(lr[:, :, sl], None if momentum is None else mom[:, :, sl], None if retain is None else ret[:, :, sl])
        scores = g["coef"] * (q[:, :, sl] @ k[:, :, sl].transpose(-1, -2))
        out, _ = _chunk(q[:, :, sl], k[:, :, sl], v[:, :, sl], g, scores, w1, w2, s1, s2, update=False)
        outs.append(out)
        pending = {n: x[:, :, sl] for n, x in zip(_PENDING, (k, v, lr, mom, ret))}
    out = torch.cat(outs, dim=2)[:, :, offset:] if outs else v.new_zeros(v.shape)
    return out, MLPMemoryState(w1, w2, s1, s2, pending, chunk_size if pending else None)
