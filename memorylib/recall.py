"""Store key -> value pairs in a memory by writing them, then ask for them back. Introduced in
chapter 5 (capacity at equal state size; retention as forgetting).

No outer model and no training: random unit keys and values, written in order by the memory's
own write rule, then every key is read back. A read counts as recalled when the stored value
nearest to it (by cosine) is its own, so chance is ``1 / num_pairs``. Each trial is one
independent stream (a batch element); results carry a Wilson interval over all queries.

Memories (``kind``), with state sizes for ``dim = d`` and ``hidden = h``:

* ``"delta"``: a ``d x d`` matrix written by the delta rule (:mod:`memorylib.delta_rule`);
* ``"additive"``: the same matrix, additive write ``M += lr v k^T`` (linear attention);
* ``"mlp"``: ``f(x) = W2 silu(W1 x)`` with ``W1: h x d``, ``W2: d x h`` (``2 d h`` numbers),
  written by one gradient step per pair (:mod:`memorylib.ttt`), starting from fixed random
  weights. ``h = d / 2`` gives the matrix's state size.

``chunk_size`` (chapter 6) writes the pairs in chunks: exactly for the two matrices (the chunked
delta rule computes the same memory), with the mini-batch approximation for the MLP (every
gradient of a chunk taken at the weights the chunk started from).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_int
from .delta_rule import delta_rule
from .sidecar import sidecar_attention
from .stats import wilson_interval
from .ttt import MLPMemoryState, mlp_apply, mlp_memory, mlp_memory_reference

RECALL_KINDS = ("delta", "additive", "mlp")


def random_pairs(trials: int, num_pairs: int, dim: int, seed: int):
    """Unit keys and values ``(trials, 1, num_pairs, dim)`` from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(trials, 1, num_pairs, dim, generator=g), dim=-1)
    values = F.normalize(torch.randn(trials, 1, num_pairs, dim, generator=g), dim=-1)
    return keys, values


def write_pairs(kind: str, keys: torch.Tensor, values: torch.Tensor, lr: float = 1.0, passes: int = 1,
                retain: float = 1.0, hidden: int | None = None, seed: int = 0, chunk_size: int | None = None):
    """Write the pairs ``passes`` times in order; returns ``read(queries) -> outputs``, a function
    reading the final memory. ``retain`` multiplies the memory before every write (1: never
    forget). ``hidden`` (MLP only, default ``dim // 2``). ``chunk_size`` (chapter 6): pairs per
    chunk; for the matrices it changes nothing but the order of the work (default 64); for the MLP
    (default None: token by token) it is the mini-batch form and must divide the number of pairs,
    so that every write is finished when the memory is read."""
    if kind not in RECALL_KINDS:
        raise ValueError(f"kind must be one of {RECALL_KINDS}, got {kind!r}")
    check_int("passes", passes, 1)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not 0 < retain <= 1:
        raise ValueError(f"retain must be in (0, 1], got {retain!r}")
    B, _, N, D = keys.shape
    if chunk_size is not None:
        check_int("chunk_size", chunk_size, 1)
        if kind == "mlp" and N % chunk_size:
            raise ValueError(f"chunk_size must divide the number of pairs ({N}) for the MLP memory, got {chunk_size}")
    rate = torch.full((B, 1, N), float(lr))
    keep = None if retain == 1 else torch.full((B, 1, N), float(retain))
    if kind == "mlp":
        hidden = D // 2 if hidden is None else hidden
        g = torch.Generator().manual_seed(10_000 + seed)
        w1 = torch.randn(1, hidden, D, generator=g) / D ** 0.5
        w2 = torch.randn(1, D, hidden, generator=g) / hidden ** 0.5
        state = MLPMemoryState.initial(w1, w2, B)
        for _ in range(passes):
            if chunk_size is None:
                _, state = mlp_memory_reference(keys, keys, values, rate, retain=keep, state=state)
            else:
                _, state = mlp_memory(keys, keys, values, rate, retain=keep, state=state, chunk_size=chunk_size)
        return lambda q: mlp_apply(state.w1, state.w2, q)
    M = None
    for _ in range(passes):
        _, M = delta_rule(keys, keys, values, rate, keep, state=M, chunk_size=chunk_size or 64, erase=kind == "delta")
    return lambda q: q @ M.transpose(-1, -2)


def recalled(reads: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``(trials, num_pairs)`` bool: is the stored value nearest (cosine) to each read its own?"""
    sims = F.normalize(reads, dim=-1) @ values.transpose(-1, -2)     # (B, 1, N, N)
    return (sims.argmax(-1) == torch.arange(values.shape[2]))[:, 0]


def store_and_recall(kind: str, num_pairs: int, dim: int = 32, trials: int = 32, seed: int = 0, **write_kwargs) -> dict:
    """Write ``num_pairs`` random pairs (``trials`` independent streams) and query every key.

    Returns ``{"accuracy", "ci", "n", "by_age"}``; ``by_age[j]`` is the accuracy for the pair
    written ``j`` pairs before the last (0: the most recent)."""
    check_int("num_pairs", num_pairs, 1)
    check_int("dim", dim, 1)
    check_int("trials", trials, 1)
    keys, values = random_pairs(trials, num_pairs, dim, seed)
    read = write_pairs(kind, keys, values, seed=seed, **write_kwargs)
    with torch.no_grad():
        hits = recalled(read(keys), values)
    n, k = hits.numel(), int(hits.sum())
    lo, hi = wilson_interval(k, n)
    return {"accuracy": round(k / n, 4), "ci": [round(lo, 4), round(hi, 4)], "n": n,
            "by_age": [round(float(x), 4) for x in hits.float().mean(0).flip(0)]}


SIDECAR_RANKS = ("surprise", "random")


def prediction_errors(kind: str, keys: torch.Tensor, values: torch.Tensor, lr: float = 1.0,
                      retain: float = 1.0) -> torch.Tensor:
    """``(trials, num_pairs)``: how far each value is from what the memory predicted for its key
    just before writing it, ``||v_i - M_{i-1} k_i||`` (pairs written in order by the matrix
    memory ``kind``, "delta" or "additive"; ``M_0 = 0``). The surprise of a pair to the memory."""
    if kind not in ("delta", "additive"):
        raise ValueError(f"kind must be 'delta' or 'additive' for prediction errors, got {kind!r}")
    B, _, N, _ = keys.shape
    keep = None if retain == 1 else torch.full((B, 1, N), float(retain))
    # the same writes, read with the next pair's key: out_i = M_i k_{i+1}, the prediction for pair i + 1
    nxt = torch.cat([keys[:, :, 1:], torch.zeros_like(keys[:, :, :1])], 2)
    ahead, _ = delta_rule(nxt, keys, values, torch.full((B, 1, N), float(lr)), keep, chunk_size=64,
                          erase=kind == "delta")
    pred = torch.cat([torch.zeros_like(values[:, :, :1]), ahead[:, :, :-1]], 2)
    return (values - pred).norm(dim=-1)[:, 0]


def store_and_recall_with_sidecar(kind: str, num_pairs: int, capacity: int, dim: int = 32, trials: int = 32,
                                  seed: int = 0, rank: str = "surprise", match: float = 0.99, **write_kwargs) -> dict:
    """:func:`store_and_recall` with a sidecar of ``capacity`` pairs beside the memory (chapter 7).

    Every pair is written to the memory as before; the sidecar (:func:`~memorylib.sidecar.sidecar_attention`)
    keeps the ``capacity`` pairs that surprised the memory most, where the surprise of pair ``i`` is
    its prediction error ``||v_i - M_{i-1} k_i||`` just before its write (``rank="random"``: a
    random score instead, the control). The fused read of a query is the sidecar's exact
    attention read when a cached key matches it (cosine >= ``match``), else the memory's read.
    Returns :func:`store_and_recall`'s dict plus ``from_sidecar`` (fraction of queries the sidecar
    answered) and ``memory_only`` (accuracy of the memory alone on the same pairs)."""
    check_int("num_pairs", num_pairs, 1)
    check_int("capacity", capacity, 0)
    if rank not in SIDECAR_RANKS:
        raise ValueError(f"rank must be one of {SIDECAR_RANKS}, got {rank!r}")
    if kind == "mlp":
        raise ValueError("the sidecar recall experiment uses a matrix memory: kind 'delta' or 'additive'")
    keys, values = random_pairs(trials, num_pairs, dim, seed)
    read = write_pairs(kind, keys, values, seed=seed, **write_kwargs)
    with torch.no_grad():
        mem_reads = read(keys)
        if rank == "surprise":
            score = prediction_errors(kind, keys, values, lr=float(write_kwargs.get("lr", 1.0)),
                                      retain=write_kwargs.get("retain", 1.0))
        else:
            score = torch.rand(trials, num_pairs, generator=torch.Generator().manual_seed(20_000 + seed))
        mem_hits = recalled(mem_reads, values)
        if capacity == 0:
            hits, answered = mem_hits, torch.zeros_like(mem_hits)
        else:
            k2, v2 = keys[:, 0], values[:, 0]
            _, state = sidecar_attention(k2, k2, v2, score, capacity, return_state=True)
            cached = state.position >= 0
            cos = k2 @ state.keys.transpose(1, 2)                              # (B, N, K)
            cos = cos.masked_fill(~cached[:, None, :], -2.0)
            attn = torch.softmax(cos * 30.0, -1) @ state.values                # exact attention, sharp
            answered = cos.max(-1).values >= match
            fused = torch.where(answered[..., None], attn, mem_reads[:, 0])
            hits = recalled(fused[:, None], values)
    n, k = hits.numel(), int(hits.sum())
    lo, hi = wilson_interval(k, n)
    return {"accuracy": round(k / n, 4), "ci": [round(lo, 4), round(hi, 4)], "n": n,
            "by_age": [round(float(x), 4) for x in hits.float().mean(0).flip(0)],
            "from_sidecar": round(float(answered.float().mean()), 4),
            "memory_only": round(float(mem_hits.float().mean()), 4)}
