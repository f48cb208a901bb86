"""A sparse exact-attention sidecar: the few most surprising tokens, kept verbatim. Groundwork for
chapter 7 (the models that use it come with that chapter).

A learned memory compresses; a sidecar does not. It keeps the keys and values of at most
``capacity`` tokens, those with the highest surprise seen so far, and a query reads them by exact
softmax attention. When a token more surprising than the least surprising kept one arrives, that
one is evicted. Ties keep the older token. Which tokens are kept is a hard choice that gradients
do not flow through; the keys, values and queries are differentiable.

Causality: the cache a query at position ``t`` reads holds the top-``capacity`` tokens among
positions ``< t`` (strictly before: a token is never read by its own position), so the read at
``t`` depends only on tokens before it.

Shapes, for a batch of ``B`` sequences::

    q, k: (B, T, key_dim)   v: (B, T, value_dim)   surprise: (B, T)   out: (B, T, value_dim)

Three forms compute the same thing:

* :func:`sidecar_attention_reference`: the definition, token by token: keep a list of the cached
  tokens, read it by softmax attention (an empty slot first), then add the token and drop the
  least surprising if the list is longer than ``capacity``. Slow, and the test of the others;
* :func:`sidecar_attention`: a whole sequence at once. ``allowed[t, j]`` (``j < t`` and fewer than
  ``capacity`` tokens before ``t`` beat ``j``) is built from a running count (a cumulative sum over
  the pairwise comparisons, O((K + T)^2) time and memory per sequence), then one call of
  ``scaled_dot_product_attention`` with that mask (plus an always-visible empty slot, so that a
  query with nothing cached reads zeros);
* the same function with ``state``: the cache carried between calls (:class:`SidecarState`,
  ``capacity`` entries, constant in the length of the stream), so a long stream processed in
  pieces gives the outputs of one call. Tested equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .checks import check_int, check_qkv, check_tensor


@dataclass
class SidecarState:
    """The cache between calls: ``keys (B, K, key_dim)``, ``values (B, K, value_dim)``,
    ``surprise (B, K)`` and ``position (B, K)`` (absolute positions; -1 marks an empty entry),
    plus ``seen``, the number of tokens processed so far, and ``bias (B, K)``, each entry's
    read bias (None when the sidecar is read without one)."""

    keys: torch.Tensor
    values: torch.Tensor
    surprise: torch.Tensor
    position: torch.Tensor
    seen: int = 0
    bias: torch.Tensor | None = None

    def nbytes(self) -> int:
        held = (self.keys, self.values, self.surprise, self.position) + (() if self.bias is None else (self.bias,))
        return sum(t.numel() * t.element_size() for t in held)


def beats(surprise: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """``(B, N, N)`` bool: does token ``i`` rank above token ``j`` (higher surprise; on a tie, the
    older one)? ``surprise, position: (B, N)``."""
    si, sj = surprise[:, :, None], surprise[:, None, :]
    pi, pj = position[:, :, None], position[:, None, :]
    return (si > sj) | ((si == sj) & (pi < pj))


class Prepared(NamedTuple):
    """The candidates of one call: the cache then the new tokens (``keys``, ``values`` behind the
    empty slot; ``surprise``, ``position``, ``filled``, ``bias`` without it), ``beats[i, j]``
    among them, and ``mask (B, T, 1 + K + T)``: which candidate each query may read (bool; with a
    read bias, float: the bias where allowed, -inf elsewhere)."""

    state: SidecarState
    keys: torch.Tensor
    values: torch.Tensor
    surprise: torch.Tensor
    position: torch.Tensor
    filled: torch.Tensor
    beats: torch.Tensor
    mask: torch.Tensor
    bias: torch.Tensor | None


def _prepare(q, k, v, surprise, capacity, state, bias=None) -> Prepared:
    """Validate the inputs; build the candidates (the cache, then the new tokens, behind an always
    visible empty slot) and the mask of which candidate each query may read."""
    check_qkv(q, k, v, layout="(batch, seq_len, dim)")
    B, T, Dk = k.shape
    check_tensor("surprise", surprise, (B, T))
    check_int("capacity", capacity, 1)
    if bias is not None:
        check_tensor("bias", bias, (B, T))
    if state is not None and state.keys.shape[:2] != (B, capacity):
        raise ValueError(f"state holds {tuple(state.keys.shape[:2])} (batch, capacity), expected ({B}, {capacity})")
    if state is not None and (state.bias is None) != (bias is None):
        raise ValueError("the state was carried " + ("with" if bias is None else "without") + " a read bias; give "
                         "bias in every call of one stream or in none")
    if state is None:
        state = SidecarState(k.new_zeros(B, capacity, Dk), v.new_zeros(B, capacity, v.shape[-1]),
                             surprise.new_full((B, capacity), float("-inf")),
                             torch.full((B, capacity), -1, dtype=torch.long, device=k.device),
                             bias=None if bias is None else bias.new_zeros(B, capacity))
    K = capacity
    pos = torch.arange(state.seen, state.seen + T, device=k.device).expand(B, T)
    # candidates: the cache (empty entries rank below everything and are never allowed), then the new tokens
    keys, values = torch.cat([state.keys, k], 1), torch.cat([state.values, v], 1)
    s_all = torch.cat([state.surprise, surprise.detach()], 1)
    p_all = torch.cat([state.position, pos], 1)
    filled = torch.cat([state.position >= 0, torch.ones(B, T, dtype=torch.bool, device=k.device)], 1)
    b = beats(s_all, p_all) & filled[:, :, None]                          # (B, K+T, K+T): i beats j
    # rank[t, j]: how many candidates before query t beat j (every cache entry comes before t, token
    # i iff i < t): the cache's count plus an exclusive running count over the new tokens
    bi = b.to(torch.int32)
    rank = bi[:, :K].sum(1, keepdim=True) + bi[:, K:].cumsum(1) - bi[:, K:]   # (B, T, K+T)
    before = torch.cat([torch.ones(T, K, dtype=torch.bool, device=k.device),
                        torch.ones(T, T, dtype=torch.bool, device=k.device).tril(-1)], 1)   # (T, K+T)
    allowed = before[None] & filled[:, None, :] & (rank < K)
    # an always-visible empty slot (zero key, zero value) so that a query with nothing cached reads zeros
    keys = torch.cat([keys.new_zeros(B, 1, Dk), keys], 1)
    values = torch.cat([values.new_zeros(B, 1, values.shape[-1]), values], 1)
    mask = torch.cat([torch.ones(B, T, 1, dtype=torch.bool, device=k.device), allowed], 2)
    b_all = None
    if bias is not None:                  # a float mask: the entry's bias where allowed (0 for the empty slot)
        b_all = torch.cat([state.bias, bias], 1)
        full = torch.cat([b_all.new_zeros(B, 1), b_all], 1)[:, None, :].expand(B, T, -1)
        mask = torch.where(mask, full, full.new_full((), float("-inf")))
    return Prepared(state, keys, values, s_all, p_all, filled, b, mask, b_all)


def sidecar_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, surprise: torch.Tensor,
                                capacity: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The sidecar token by token (module docstring), for one whole sequence: the definition the
    fast form is tested against. Shapes as :func:`sidecar_attention`; returns ``out``."""
    check_qkv(q, k, v, layout="(batch, seq_len, dim)")
    B, T, Dk = k.shape
    check_tensor("surprise", surprise, (B, T))
    check_int("capacity", capacity, 1)
    if bias is None:
        bias = surprise.new_zeros(B, T)
    check_tensor("bias", bias, (B, T))
    out = v.new_zeros(B, T, v.shape[-1])
    for b in range(B):
        cache = []                                                # (surprise, position), best first
        for t in range(T):
            kept = [p for _, p in cache]
            keys = torch.cat([k.new_zeros(1, Dk), k[b, kept]])     # the empty slot, then the cache
            values = torch.cat([v.new_zeros(1, v.shape[-1]), v[b, kept]])
            read_bias = torch.cat([bias.new_zeros(1), bias[b, kept]])
            out[b, t] = torch.softmax(keys @ q[b, t] / Dk ** 0.5 + read_bias, 0) @ values
            # add token t; keep the most surprising, the older one on a tie
            cache = sorted(cache + [(float(surprise[b, t]), t)], key=lambda c: (-c[0], c[1]))[:capacity]
    return out


def sidecar_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, surprise: torch.Tensor, capacity: int,
                      state: SidecarState | None = None,
                      return_state: bool = False, bias: torch.Tensor | None = None):
    """Exact attention over the ``capacity`` most surprising earlier tokens (module docstring).
    Returns ``out``, or ``(out, state)`` with ``return_state=True`` or when a state is given.

    ``bias`` (optional, ``(B, T)``): a number added to every query's attention logit on that token
    while it is cached (a learned log-weight: chapter 7's learned keep score reads its cache
    through ``log sigmoid(score)``, so that the score gets a gradient); the state carries it."""
    keep_state = return_state or state is not None
    prep = _prepare(q, k, v, surprise, capacity, state, bias)
    state, keys, values, s_all, p_all, filled, b = prep[:7]
    out = F.scaled_dot_product_attention(q[:, None], keys[:, None], values[:, None],
                                         attn_mask=prep.mask[:, None])[:, 0]
    if not keep_state:
        return out
    K, T = capacity, k.shape[1]
    # the cache after the last token: the top-K of every candidate
    total = b.sum(1)                                                      # how many candidates beat j
    top = (total < K) & filled
    order = torch.where(top, p_all, torch.full_like(p_all, torch.iinfo(torch.long).max)).argsort(1)[:, :K]
    take = lambda x: x.gather(1, order if x.dim() == 2 else order[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
    kept = take(top)
    new = SidecarState(take(keys[:, 1:]), take(values[:, 1:]),
                       torch.where(kept, take(s_all), s_all.new_full((), float("-inf"))),
                       torch.where(kept, take(p_all), torch.full_like(take(p_all), -1)), state.seen + T,
                       None if prep.bias is None else torch.where(kept, take(prep.bias), 0.0))
    return out, new


def sidecar_weights(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, surprise: torch.Tensor,
                    capacity: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What each position of one whole sequence read from the sidecar: ``(weights, empty)`` where
    ``weights: (B, T, T)`` is the attention weight of query ``t`` on earlier token ``j`` (zero for
    tokens not in its cache) and ``empty: (B, T)`` the weight left on the empty slot. Explicit
    softmax, for inspection (the traces of chapter 7's model); :func:`sidecar_attention` computes
    the same reads without forming the weights."""
    prep = _prepare(q, k, v, surprise, capacity, None, bias)
    scores = (q @ prep.keys.transpose(1, 2)) / q.shape[-1] ** 0.5
    if bias is None:
        w = torch.softmax(scores.masked_fill(~prep.mask, float("-inf")), -1)
    else:
        w = torch.softmax(scores + prep.mask, -1)      # (B, T, 1 + K + T); the cache is empty
    return w[:, :, 1 + capacity:], w[:, :, 0]
