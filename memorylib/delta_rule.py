"""A linear memory written by the delta rule. Introduced in chapter 5 (the chunked form in chapter 6).

The memory of one head is a matrix ``M`` (value_dim x key_dim); reading with a query is
``o = M q``. Writing the pair ``(k_t, v_t)`` is one gradient step, with learning rate ``beta_t``,
on the loss ``1/2 ||M k_t - v_t||^2`` (whose gradient is ``(M k_t - v_t) k_t^T``), taken after
the old memory is multiplied by a retention factor ``a_t`` in (0, 1]::

    M'  = a_t M_{t-1}                                   (forget: a_t = 1 keeps everything)
    M_t = M' - beta_t (M' k_t - v_t) k_t^T              (write)
        = M' (I - beta_t k_t k_t^T) + beta_t v_t k_t^T  (erase along k_t, then add v_t k_t^T)
    o_t = M_t q_t                                       (read; token t's own write included)

The second line is chapter 3's erase-then-write with the key as the address: with a unit key and
``beta_t = 1`` the old value stored under ``k_t`` is replaced by ``v_t``. ``erase=False`` drops the
erase term, ``M_t = a_t M_{t-1} + beta_t v_t k_t^T``: the additive (Hebbian) write, which is
causal linear attention (Katharopoulos et al. 2020; Schlag et al. 2021).

Shapes, for a batch of ``B`` sequences and ``H`` heads::

    q, k: (B, H, T, key_dim)   v: (B, H, T, value_dim)   beta, retain: (B, H, T)
    state M: (B, H, value_dim, key_dim)                  out: (B, H, T, value_dim)

Two forms compute the same thing:

* :func:`delta_rule_reference`: the recurrence above, one token at a time;
* :func:`delta_rule`: the exact chunked form. Inside a chunk of ``C`` tokens that starts from
  ``M_0``, the recurrence is solved with the UT transform (Yang et al. 2024): the "new values"
  ``u_t = beta_t (v_t - a_{1..t} M_0 k_t - sum_{i<t} (a_{i+1..t}) (k_i . k_t) u_i)`` satisfy the
  unit-lower-triangular system ``(I + diag(beta) tril(K K^T * G, -1)) U = diag(beta) (V - g * K M_0^T)``
  (``G[t, i] = a_{i+1} ... a_t``, ``g[t] = a_1 ... a_t``), solved by one triangular solve; then
  ``O = g * Q M_0^T + tril(Q K^T * G) U`` and ``M_C = g_C M_0 + U^T (K * G[C, :])``. Only the
  chunks run one after another. Tests hold both forms equal to < 1e-10 in float64 at every
  chunk size, and their gradients equal.

  ``fast=True`` runs the chunks' recurrence with the least work per step (chapter 6, issue 20):
  a chunk maps the state ``M`` to ``M A_n + B_n`` with ``A_n = g_C I - W_n^T (K_n * G[C, :])``
  and ``B_n = U0_n^T (K_n * G[C, :])`` (``U = U0 - W M_0^T`` above), both computed for all chunks
  at once; the loop over chunks is then one fused multiply-add (``baddbmm``) per chunk, and the
  outputs are read from the stacked chunk-start states in a few batched products. The same
  numbers in exact arithmetic (tested in float64, gradients included); in float32 they differ in
  the last bits, so the book's models keep the default until their records are remade.

Both take and return the state, so a long stream processed in pieces gives exactly the outputs of
one call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import check_int, check_qkv, check_tensor, check_values


def _check_inputs(q, k, v, beta, retain, state):
    check_qkv(q, k, v)
    B, H, T, Dk = k.shape
    check_tensor("beta", beta, (B, H, T), allow_none=True)
    check_tensor("retain", retain, (B, H, T), allow_none=True)
    check_values("retain", retain, 0, 1)
    check_tensor("state", state, (B, H, v.shape[-1], Dk), allow_none=True)


def initial_state(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """An empty memory ``(B, H, value_dim, key_dim)`` for keys ``k`` and values ``v``."""
    return k.new_zeros(k.shape[0], k.shape[1], v.shape[-1], k.shape[-1])


def delta_rule_reference(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, retain: Tensor | None = None,
                         state: Tensor | None = None, erase: bool = True) -> tuple[Tensor, Tensor]:
    """The delta rule one token at a time (the definition). Returns ``(out, state)``."""
    _check_inputs(q, k, v, beta, retain, state)
    M = initial_state(k, v) if state is None else state
    outs = []
    for t in range(k.shape[2]):
        kt, vt, bt = k[:, :, t], v[:, :, t], beta[:, :, t, None, None]
        if retain is not None:
            M = retain[:, :, t, None, None] * M
        if erase:
            err = (M @ kt[..., None]) - vt[..., None]                  # (B, H, Dv, 1): M k - v
            M = M - bt * err @ kt[..., None, :]
        else:
            M = M + bt * vt[..., None] @ kt[..., None, :]
        outs.append((M @ q[:, :, t, :, None])[..., 0])
    out = torch.stack(outs, dim=2) if outs else v.new_zeros(v.shape)
    return out, M


def decay_products(a: torch.Tensor) -> torch.Tensor:
    """``G[..., t, i] = a[..., i+1] * ... * a[..., t]`` for ``i <= t`` (1 on the diagonal) and 0
    above it, for ``a: (..., C)``. Built from products, not from differences of logarithms, so
    ``a = 0`` (forget everything) is exact."""
    C = a.shape[-1]
    strict_upper = torch.ones(C, C, dtype=torch.bool, device=a.device).triu(1)
    # X[..., i, j] = a[j] for j > i, else 1; its running product along j is a[i+1] ... a[j]
    X = torch.where(strict_upper, a[..., None, :], torch.ones((), dtype=a.dtype, device=a.device))
    return X.cumprod(-1).transpose(-1, -2).tril()


def _solve_unit_lower(A: Tensor, rhs: Tensor) -> Tensor:
    """``A^{-1} rhs`` for unit lower-triangular ``A`` (batched); half precision is solved in float32,
    which CPU torch has no triangular solve for."""
    if A.dtype in (torch.float16, torch.bfloat16):
        return torch.linalg.solve_triangular(A.float(), rhs.float(), upper=False, unitriangular=True).to(A.dtype)
    return torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)


def _chunks(chunk_size: int, T: int, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, retain: Tensor | None):
    """``(C, N, (q, k, v, beta, retain))``: the chunk size, the number of chunks, and the inputs
    padded to ``N * C`` tokens. Padded tokens write nothing (beta 0) and forget nothing (retain 1),
    so the state is unchanged by them."""
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    if pad:
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        beta = torch.nn.functional.pad(beta, (0, pad))
        if retain is not None:
            retain = torch.nn.functional.pad(retain, (0, pad), value=1.0)
    return C, N, (q, k, v, beta, retain)


def delta_rule(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, retain: Tensor | None = None,
               state: Tensor | None = None, chunk_size: int = 64, erase: bool = True,
               fast: bool = False) -> tuple[Tensor, Tensor]:
    """The exact chunked delta rule (UT transform inside each chunk). Returns ``(out, state)``;
    equal to :func:`delta_rule_reference` at every ``chunk_size`` and sequence length.
    ``fast=True``: the state-transition form of the recurrence across chunks (module docstring)."""
    _check_inputs(q, k, v, beta, retain, state)
    check_int("chunk_size", chunk_size, 1)
    if fast:
        return _delta_rule_transitions(q, k, v, beta, retain, state, chunk_size, erase)
    B, H, T, Dk = k.shape
    M = initial_state(k, v) if state is None else state
    if T == 0:
        return v.new_zeros(v.shape), M
    if retain is None:
        retain = beta.new_ones(beta.shape)
    C, N, (q, k, v, beta, retain) = _chunks(chunk_size, T, q, k, v, beta, retain)
    q, k, v = (x.reshape(B, H, N, C, -1) for x in (q, k, v))
    beta, retain = beta.reshape(B, H, N, C), retain.reshape(B, H, N, C)
    G = decay_products(retain)                                         # (B, H, N, C, C)
    g = retain.cumprod(-1)                                             # (B, H, N, C): a_1 ... a_t
    eye = torch.eye(C, dtype=k.dtype, device=k.device)
    strict = torch.ones(C, C, dtype=torch.bool, device=k.device).tril(-1)
    # everything that does not depend on M_0, for all chunks at once
    if erase:
        A = eye + beta[..., None] * (k @ k.transpose(-1, -2) * G).masked_fill(~strict, 0.0)
        rhs = beta[..., None] * torch.cat([v, g[..., None] * k], dim=-1)
        sol = _solve_unit_lower(A, rhs)
        U0, W = sol[..., :v.shape[-1]], sol[..., v.shape[-1]:]        # U = U0 - W M_0^T
    else:
        U0, W = beta[..., None] * v, None
    QK = q @ k.transpose(-1, -2) * G                                   # G is lower triangular
    last = G[..., -1, :]                                               # (B, H, N, C): a_{i+1} ... a_C
    outs = []
    # each chunk's inputs taken apart once (unbind), not indexed in the loop: the backward of
    # x[:, :, n] pads its gradient to all N chunks, N times over; the values are the same
    Ws = [None] * N if W is None else W.unbind(2)
    for U0_n, W_n, g_n, q_n, QK_n, k_n, last_n in zip(U0.unbind(2), Ws, g.unbind(2), q.unbind(2),
                                                      QK.unbind(2), k.unbind(2), last.unbind(2)):
        Mt = M.transpose(-1, -2)                                       # (B, H, Dk, Dv)
        U = U0_n if W_n is None else U0_n - W_n @ Mt
        outs.append(g_n[..., None] * (q_n @ Mt) + QK_n @ U)
        M = g_n[..., -1, None, None] * M + U.transpose(-1, -2) @ (k_n * last_n[..., None])
    out = torch.stack(outs, dim=2).reshape(B, H, N * C, -1)[:, :, :T]
    return out, M


def _delta_rule_transitions(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, retain: Tensor | None,
                            state: Tensor | None, chunk_size: int, erase: bool) -> tuple[Tensor, Tensor]:
    """:func:`delta_rule` with ``fast=True``: the chunks' recurrence as ``M <- M A_n + B_n``."""
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    M = initial_state(k, v) if state is None else state
    if T == 0:
        return v.new_zeros(v.shape), M
    C, N, (q, k, v, beta, retain) = _chunks(chunk_size, T, q, k, v, beta, retain)
    q, k, v = (x.reshape(B, H, N, C, -1) for x in (q, k, v))
    b = beta.reshape(B, H, N, C, 1)
    G = g = None                                      # no forgetting: every decay product is 1
    if retain is not None:
        retain = retain.reshape(B, H, N, C)
        G = decay_products(retain)                                     # (B, H, N, C, C)
        g = retain.cumprod(-1)[..., None]                              # (B, H, N, C, 1)
    kl = k if G is None else k * G[..., -1, :, None]                   # K_n * G[C, :]
    causal = (lambda x: x.tril()) if G is None else (lambda x: x * G)
    if erase:
        strict = torch.ones(C, C, dtype=torch.bool, device=k.device).tril(-1)
        A = (b * causal(k @ k.transpose(-1, -2))).masked_fill(~strict, 0.0)
        A = A + torch.eye(C, dtype=k.dtype, device=k.device)
        rhs = torch.cat([b * v, b * (k if g is None else g * k)], dim=-1)
        sol = _solve_unit_lower(A, rhs)
        U0, W = sol[..., :Dv], sol[..., Dv:]
        both = sol.transpose(-1, -2) @ kl                              # [U0^T kl; W^T kl]: (B, H, N, Dv + Dk, Dk)
        Bn, WK = both[..., :Dv, :], both[..., Dv:, :]
        decay = torch.ones(B, H, N, 1, dtype=k.dtype, device=k.device) if g is None else g[..., -1, :]
        An = torch.diag_embed(decay.expand(B, H, N, Dk)) - WK           # g_C I - W^T kl
    else:
        U0, W = b * v, None
        Bn, An = U0.transpose(-1, -2) @ kl, None
    starts = [M]
    for n in range(N):
        if An is None:
            M = Bn[:, :, n] + (M if g is None else g[:, :, n, -1, :, None] * M)
        else:
            M = torch.baddbmm(Bn[:, :, n].reshape(B * H, Dv, Dk), M.reshape(B * H, Dv, Dk),
                              An[:, :, n].reshape(B * H, Dk, Dk)).view(B, H, Dv, Dk)
        starts.append(M)
    Mt = torch.stack(starts[:-1], dim=2).transpose(-1, -2)             # (B, H, N, Dk, Dv): M_n^T
    read = q @ Mt
    U = U0 if W is None else U0 - W @ Mt
    out = (read if g is None else g * read) + causal(q @ k.transpose(-1, -2)) @ U
    return out.reshape(B, H, N * C, Dv)[:, :, :T], M


def state_bytes(state: torch.Tensor) -> int:
    """Bytes held by a delta-rule state (constant in sequence length)."""
    return state.numel() * state.element_size()
