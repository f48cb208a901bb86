"""Speed and memory of the memory modules of chapters 5 and 6, measured side by side in one run.

    python benchmarks/memory_speed.py            # full run, writes book/results/ch06_benchmark.json
    python benchmarks/memory_speed.py --quick    # smoke run (small sizes), writes runs/ch06_benchmark_quick.json
    make benchmark                               # the full run in .venv-bench, which has titans-pytorch

    python benchmarks/memory_speed.py --foreign  # the same in CI's other arithmetic (two threads)

What it measures (one head, key_dim = value_dim = 64, float32, batch 1 unless stated), in the
arithmetic the book's chapters use (:mod:`memorylib.reproducible`: one thread), or with
``--foreign`` in the one CI's second run of the chapters uses (two threads):

1. the MLP memory (:mod:`memorylib.ttt`): chunked forward at chunk 16 and 64 against the
   token-by-token reference, at T = 1K, 4K, 16K. Targets at T = 4096: chunk 16 >= 10x the loop,
   chunk 64 >= 20x;
2. the delta rule (:mod:`memorylib.delta_rule`): chunked (chunk 64; the default form and the
   ``fast=True`` form) against the loop, same T's. Target: the fast form >= 20x the loop at
   T = 4096;
3. linear memory (the delta rule, and the additive write ``erase=False``, both chunked, both forms)
   against full causal attention (``scaled_dot_product_attention``), T = 256 ... 32K; where the
   linear memory becomes the faster one (target: from T <= 2048), and the machine's matmul rate
   with the share of it the fast delta rule reaches at the longest T (target: >= 1/4);
4. bytes held after T tokens: the delta-rule state and the MLP memory state, measured on the
   states the modules return, and a KV cache (keys and values of T tokens);
5. training throughput (forward + backward) of the MLP memory at batch 8, T = 1024, chunk 16,
   against titans-pytorch's ``NeuralMemory`` updated chunk after chunk (16 tokens per call, its
   state passed on). Target: ours >= 3x titans in tokens/s. Also chunk 64 and our loop;
6. what the fast forms buy a whole model: one training step (forward, backward, AdamW) of the
   book's models with a learned memory, ``fast=True`` against the default, on chapter 7's
   training shape (the needle family, batch 32, 512 tokens). No target: it says whether the
   fast forms make the chapters' live training faster.

Speed targets live here, as ratios of timings taken in the same run, never in timed unit tests.
Every timing is the median of several calls after one warm-up call (``time.perf_counter``);
the JSON keeps every repeat. Loops over more than ``--max-loop-len`` tokens are timed on a prefix
and scaled linearly (flagged ``extrapolated`` in the JSON and the tables). The run uses torch's
default CPU code paths (the book pins none; :mod:`memorylib.reproducible` says what the old pins
cost). The JSON records the arithmetic, the CPU model and the load average at the start.
Without titans-pytorch everything else runs and the baseline is recorded as not measured.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memorylib import reproducible  # noqa: E402  (no torch import)

# Read when torch loads: the arithmetic the timings are taken in, the book's (one thread) or, with
# --foreign, CI's other one (two threads). The per-chunk operations of the chunked forms are small,
# and on two threads each pays for splitting and joining its work: the two arithmetics give
# different ratios, and the targets are stated in the book's.
FOREIGN = "--foreign" in sys.argv[1:]
reproducible.apply(variables=reproducible.FOREIGN_ENV if FOREIGN else None)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import memorylib  # noqa: E402
from memorylib.delta_rule import delta_rule, delta_rule_reference  # noqa: E402
from memorylib.files import atomic_write_text  # noqa: E402
from memorylib.ttt import MLPMemoryState, mlp_memory, mlp_memory_reference  # noqa: E402

DIM = 64                   # key_dim = value_dim
HIDDEN = 256               # titans-pytorch 0.5.5 NeuralMemory default: MemoryMLP(dim, depth=2, expansion_factor=4.)
HEADS = 1
DELTA_CHUNK = 64
TRAIN_CHUNK = 16
THREADS = int(os.environ["OMP_NUM_THREADS"])
# titans' learning rate is sigmoid(.) * max_lr; at its default max_lr = 1 a memory that really
# updates between chunks overflows on random inputs within 1024 tokens (NaN from chunk 56 on).
# 0.1 keeps it finite; the work done is the same.
TITANS_MAX_LR = 0.1

TARGETS = {                                      # issue 20's targets, each a ratio measured in one run
    "mlp_chunk16_vs_loop_speedup_at_4096": 10.0,
    "mlp_chunk64_vs_loop_speedup_at_4096": 20.0,
    "delta_fast_vs_loop_speedup_at_4096": 20.0,
    "delta_fast_share_of_matmul_rate_at_32768": 0.25,    # within 4x of the machine's matmul rate
    "linear_faster_than_attention_from_seq_len": 2048,   # at most
    "training_ours_vs_titans_tokens_per_s": 3.0,
}
MATMUL_SIZE = 1024          # the machine's matmul rate: one float32 (1024 x 1024) @ (1024 x 1024)

FULL = {
    "loop_seq_lens": [1024, 4096, 16384],
    "max_loop_len": 16384,
    "attention_seq_lens": [256, 512, 1024, 2048, 4096, 8192, 16384, 32768],
    "train_batch": 8,
    "train_seq_len": 1024,
    "model_batch": 32,
    "model_seq_len": 512,
    "out": "book/results/ch06_benchmark.json",
}
QUICK = {
    "loop_seq_lens": [1024, 4096],
    "max_loop_len": 1024,
    "attention_seq_lens": [256, 1024, 4096],
    "train_batch": 2,
    "train_seq_len": 256,
    "model_batch": 4,
    "model_seq_len": 128,
    "out": "runs/ch06_benchmark_quick.json",
}

# the gates of the inputs: constant, small enough that 32K tokens stay finite (the values do not
# change the work done, only whether it overflows)
MLP_GATES = {"lr": 0.01, "momentum": 0.9, "retain": 0.999}
DELTA_BETA = 0.5


# --- timing ---

def timed_call(fn, repeats: int | None = None):
    """Time ``fn()``: one untimed warm-up call, then ``repeats`` timed calls (5, or 3 when the
    warm-up took over a second). Returns ``(timing, result of the warm-up call)``, with
    ``timing = {"median_s", "repeats_s", "warmup_s"}``."""
    start = time.perf_counter()
    result = fn()
    warmup = time.perf_counter() - start
    if repeats is None:
        repeats = 5 if warmup < 1.0 else 3
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    timing = {"median_s": statistics.median(times), "repeats_s": times, "warmup_s": warmup}
    return timing, result


def time_rounds(fns: dict, rounds: int = 5) -> dict:
    """Time several closures side by side: one untimed warm-up call of each, then ``rounds``
    rounds of one timed call of each, so that a change in the machine's load hits them alike.
    Returns ``{name: (timing, result of its warm-up call)}`` with timings as :func:`timed_call`'s."""
    warmups, results, times = {}, {}, {name: [] for name in fns}
    for name, fn in fns.items():
        start = time.perf_counter()
        results[name] = fn()
        warmups[name] = time.perf_counter() - start
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: ({"median_s": statistics.median(times[name]), "repeats_s": times[name],
                    "warmup_s": warmups[name]}, results[name]) for name in fns}


def require_finite(name: str, tensors) -> None:
    """Refuse to report a timing of a computation that overflowed (NaN or inf)."""
    for t in tensors:
        if t is not None and not torch.isfinite(t).all():
            raise RuntimeError(f"{name}: non-finite values; the benchmark's inputs must keep the memory stable")


# --- inputs and forward passes ---

def mlp_inputs(batch: int, seq_len: int, seed: int = 0, requires_grad: bool = False) -> dict:
    """Inputs of the MLP memory: ``q, k: (batch, 1, seq_len, 64)`` of length about 1,
    ``v: (batch, 1, seq_len, 64)``, gates ``lr, momentum, retain: (batch, 1, seq_len)`` and initial
    weights ``w1: (1, 256, 64)``, ``w2: (1, 64, 256)``. With ``requires_grad`` all are leaves."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, HEADS, seq_len)
    x = {
        "q": torch.randn(*shape, DIM, generator=g) * DIM ** -0.5,
        "k": torch.randn(*shape, DIM, generator=g) * DIM ** -0.5,
        "v": torch.randn(*shape, DIM, generator=g),
        **{name: torch.full(shape, value) for name, value in MLP_GATES.items()},
        "w1": torch.randn(HEADS, HIDDEN, DIM, generator=g) * DIM ** -0.5,
        "w2": torch.randn(HEADS, DIM, HIDDEN, generator=g) * HIDDEN ** -0.5,
    }
    return {name: t.requires_grad_(requires_grad) for name, t in x.items()}


def mlp_forward(x: dict, chunk_size: int | None, seq_len: int | None = None, fast: bool = False):
    """The MLP memory over the first ``seq_len`` tokens of ``x`` (all by default): chunked at
    ``chunk_size`` (``fast``: the fewest operations per chunk), or the token-by-token reference
    when it is None. Returns ``(out, state)``."""
    seq = slice(0, seq_len)
    q, k, v, lr, momentum, retain = (x[n][:, :, seq] for n in ("q", "k", "v", "lr", "momentum", "retain"))
    state = MLPMemoryState.initial(x["w1"], x["w2"], q.shape[0])
    if chunk_size is None:
        return mlp_memory_reference(q, k, v, lr, momentum, retain, state=state)
    return mlp_memory(q, k, v, lr, momentum, retain, state=state, chunk_size=chunk_size, fast=fast)


def delta_inputs(seq_len: int, seed: int = 0) -> dict:
    """Inputs of the delta rule, batch 1: ``q, k: (1, 1, seq_len, 64)`` of unit length (the write is
    stable for ``beta |k|^2 < 2``), ``v: (1, 1, seq_len, 64)``, ``beta: (1, 1, seq_len)``. The same
    ``q, k, v`` are the inputs of full attention."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, HEADS, seq_len)
    return {
        "q": F.normalize(torch.randn(*shape, DIM, generator=g), dim=-1),
        "k": F.normalize(torch.randn(*shape, DIM, generator=g), dim=-1),
        "v": torch.randn(*shape, DIM, generator=g),
        "beta": torch.full(shape, DELTA_BETA),
    }


def delta_forward(x: dict, chunk_size: int | None, erase: bool = True, seq_len: int | None = None,
                  fast: bool = False):
    """The delta rule (``erase=False``: the additive write) over the first ``seq_len`` tokens:
    chunked at ``chunk_size`` (``fast``: the state-transition form across chunks), or the
    token-by-token reference when it is None. Returns ``(out, state)``."""
    seq = slice(0, seq_len)
    q, k, v, beta = (x[n][:, :, seq] for n in ("q", "k", "v", "beta"))
    if chunk_size is None:
        return delta_rule_reference(q, k, v, beta, erase=erase)
    return delta_rule(q, k, v, beta, chunk_size=chunk_size, erase=erase, fast=fast)


def delta_flops(seq_len: int, chunk_size: int = DELTA_CHUNK, dim: int = DIM) -> int:
    """Floating-point operations of the chunked delta rule's products (one head, key_dim = value_dim
    = ``dim``), counting a multiply-add as two: per chunk of ``C`` tokens, ``K K^T`` and ``Q K^T``
    (C^2 d each), the triangular solve for two right-hand sides (C^2 d), the chunk's transition and
    write (2 C d^2), the reads ``Q M^T`` and ``W M^T`` (2 C d^2), ``(Q K^T) U`` (C^2 d) and the
    state update (d^3)."""
    C, d = chunk_size, dim
    chunks = -(-seq_len // C)
    return 2 * chunks * (4 * C * C * d + 4 * C * d * d + d ** 3)


def matmul_rate(size: int = MATMUL_SIZE) -> dict:
    """The machine's float32 matmul rate: ``(size x size) @ (size x size)``, median of 5 calls."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    timing, _ = timed_call(lambda: a @ b, repeats=5)
    return {"size": size, "gflop_per_s": 2 * size ** 3 / timing["median_s"] / 1e9, **timing}


def attention_forward(x: dict) -> torch.Tensor:
    """Full causal softmax attention over ``q, k, v: (1, 1, T, 64)``; returns ``(1, 1, T, 64)``."""
    return F.scaled_dot_product_attention(x["q"], x["k"], x["v"], is_causal=True)


# --- 1 and 2: token-by-token loop against chunked form ---

def timing_row(name: str, seq_len: int, timing: dict, timed_seq_len: int | None = None, **extra) -> dict:
    """One JSON row. A loop timed on a prefix of ``timed_seq_len`` tokens is scaled to ``seq_len``:
    ``median_s`` is the estimate, ``repeats_s`` the measured prefix times."""
    timed_seq_len = timed_seq_len or seq_len
    scale = seq_len / timed_seq_len
    return {"method": name, "seq_len": seq_len, **extra, "median_s": timing["median_s"] * scale,
            "repeats_s": timing["repeats_s"], "warmup_s": timing["warmup_s"],
            "timed_seq_len": timed_seq_len, "extrapolated": timed_seq_len != seq_len}


@torch.no_grad()
def loop_vs_chunked(seq_lens: list[int], max_loop_len: int) -> dict:
    """Forward time of each memory's loop and chunked forms at every length; the loop runs over at
    most ``max_loop_len`` tokens and is scaled beyond. Returns ``{"rows", "speedups"}``."""
    rows, speedups = [], []
    for seq_len in seq_lens:
        timed = min(seq_len, max_loop_len)
        mx, dx = mlp_inputs(1, seq_len), delta_inputs(seq_len)
        forms = [
            ("mlp_loop", None, lambda mx=mx, timed=timed: mlp_forward(mx, None, timed), timed),
            ("mlp_chunked", 16, lambda mx=mx: mlp_forward(mx, 16), seq_len),
            ("mlp_chunked", 64, lambda mx=mx: mlp_forward(mx, 64), seq_len),
            ("mlp_fast", 16, lambda mx=mx: mlp_forward(mx, 16, fast=True), seq_len),
            ("mlp_fast", 64, lambda mx=mx: mlp_forward(mx, 64, fast=True), seq_len),
            ("delta_loop", None, lambda dx=dx, timed=timed: delta_forward(dx, None, seq_len=timed), timed),
            ("delta_chunked", DELTA_CHUNK, lambda dx=dx: delta_forward(dx, DELTA_CHUNK), seq_len),
            ("delta_fast", DELTA_CHUNK, lambda dx=dx: delta_forward(dx, DELTA_CHUNK, fast=True), seq_len),
        ]
        by_name = {}
        for name, chunk, fn, timed_len in forms:
            timing, (out, _) = timed_call(fn)
            require_finite(name, [out])
            row = timing_row(name, seq_len, timing, timed_len, chunk_size=chunk)
            rows.append(row)
            by_name[(name, chunk)] = row
            print_timing(row)
        for module, form, chunks in (("mlp", "chunked", (16, 64)), ("mlp", "fast", (16, 64)),
                                     ("delta", "chunked", (DELTA_CHUNK,)), ("delta", "fast", (DELTA_CHUNK,))):
            loop = by_name[(f"{module}_loop", None)]
            for chunk in chunks:
                fast = by_name[(f"{module}_{form}", chunk)]
                speedups.append({"module": module, "form": form, "chunk_size": chunk, "seq_len": seq_len,
                                 "speedup": loop["median_s"] / fast["median_s"],
                                 "loop_extrapolated": loop["extrapolated"]})
    return {"rows": rows, "speedups": speedups}


# --- 3: linear memory against full attention ---

def crossover(seq_lens: list[int], linear_s: list[float], attention_s: list[float]) -> dict:
    """Where the linear memory becomes faster: the smallest measured length from which it is faster
    at every longer one, the measured lengths around the switch, and an estimate between them
    (log time ratio interpolated linearly in log length). Lengths are sorted ascending."""
    faster = [lin < att for lin, att in zip(linear_s, attention_s)]
    if not any(faster):
        return {"first_faster_seq_len": None, "bracket": None, "estimated_seq_len": None,
                "note": f"attention faster at every measured length (up to {seq_lens[-1]})"}
    first = len(faster)
    while first > 0 and faster[first - 1]:
        first -= 1
    if first == 0:
        return {"first_faster_seq_len": seq_lens[0], "bracket": None, "estimated_seq_len": None,
                "note": f"linear memory faster at every measured length (from {seq_lens[0]})"}
    lo, hi = first - 1, first
    r_lo = math.log(linear_s[lo] / attention_s[lo])        # >= 0: attention faster or equal
    r_hi = math.log(linear_s[hi] / attention_s[hi])        # < 0: linear memory faster
    frac = r_lo / (r_lo - r_hi)                             # where the log ratio crosses 0
    estimate = math.exp(math.log(seq_lens[lo]) + frac * (math.log(seq_lens[hi]) - math.log(seq_lens[lo])))
    return {"first_faster_seq_len": seq_lens[first], "bracket": [seq_lens[lo], seq_lens[hi]],
            "estimated_seq_len": round(estimate), "note": ""}


@torch.no_grad()
def linear_vs_attention(seq_lens: list[int]) -> dict:
    """Forward time of the chunked delta rule, the chunked additive write and causal attention at
    every length (batch 1, one head). Returns ``{"rows", "crossover"}``."""
    methods = {
        "delta_chunked": lambda x: delta_forward(x, DELTA_CHUNK)[0],
        "additive_chunked": lambda x: delta_forward(x, DELTA_CHUNK, erase=False)[0],
        "delta_fast": lambda x: delta_forward(x, DELTA_CHUNK, fast=True)[0],
        "additive_fast": lambda x: delta_forward(x, DELTA_CHUNK, erase=False, fast=True)[0],
        "attention": attention_forward,
    }
    rows = []
    for seq_len in seq_lens:
        x = delta_inputs(seq_len)
        for name, fn in methods.items():
            timing, out = timed_call(lambda fn=fn, x=x: fn(x))
            require_finite(name, [out])
            rows.append(timing_row(name, seq_len, timing, chunk_size=None if name == "attention" else DELTA_CHUNK))
            print_timing(rows[-1])
    median = {(r["method"], r["seq_len"]): r["median_s"] for r in rows}
    attention = [median[("attention", t)] for t in seq_lens]
    cross = {name: crossover(seq_lens, [median[(name, t)] for t in seq_lens], attention)
             for name in ("delta_chunked", "additive_chunked", "delta_fast", "additive_fast")}
    rate = matmul_rate()
    longest = seq_lens[-1]
    needed = delta_flops(longest)
    share = {"seq_len": longest, "gflop": needed / 1e9, "matmul_gflop_per_s": rate["gflop_per_s"],
             "delta_fast_gflop_per_s": needed / median[("delta_fast", longest)] / 1e9}
    share["share_of_matmul_rate"] = share["delta_fast_gflop_per_s"] / rate["gflop_per_s"]
    print(f"  matmul rate {rate['gflop_per_s']:.0f} GFLOP/s; the fast delta rule at T={longest}: "
          f"{share['delta_fast_gflop_per_s']:.1f} GFLOP/s ({share['share_of_matmul_rate']:.2f} of it)")
    return {"rows": rows, "crossover": cross, "matmul": rate, "delta_fast_rate": share}


# --- 4: bytes held after T tokens ---

def tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def state_sizes(seq_lens: list[int]) -> dict:
    """Bytes held after ``T`` tokens (batch 1, one head): the state the chunked delta rule returns,
    the state the chunked MLP memory (chunk 16) returns (``nbytes()``), and a KV cache of keys and
    values ``(1, 1, T, 64)`` each. Returns ``{"rows", "delta_constant", "mlp_constant", "kv_matches_formula"}``."""
    rows = []
    for seq_len in seq_lens:
        dx = delta_inputs(seq_len)
        _, delta_state = delta_forward(dx, DELTA_CHUNK)
        _, mlp_state = mlp_forward(mlp_inputs(1, seq_len), TRAIN_CHUNK)
        kv = tensor_bytes(dx["k"], dx["v"])
        rows.append({"seq_len": seq_len, "delta_state_bytes": tensor_bytes(delta_state),
                     "mlp_state_bytes": mlp_state.nbytes(), "kv_cache_bytes": kv,
                     "kv_cache_formula_bytes": 2 * seq_len * DIM * 4})
    return {
        "rows": rows,
        "delta_constant": len({r["delta_state_bytes"] for r in rows}) == 1,
        "mlp_constant": len({r["mlp_state_bytes"] for r in rows}) == 1,
        "kv_matches_formula": all(r["kv_cache_bytes"] == r["kv_cache_formula_bytes"] for r in rows),
    }


# --- 5: training throughput, ours against titans-pytorch ---

def ours_training_step(batch: int, seq_len: int, chunk_size: int | None, fast: bool = False):
    """A closure: forward + backward of the MLP memory (``chunk_size=None``: the loop; ``fast``: the
    fast chunked form) on a batch; loss = mean of the outputs squared; gradients to ``q, k, v, lr,
    momentum, retain, w1, w2``."""
    x = mlp_inputs(batch, seq_len, requires_grad=True)
    leaves = list(x.values())

    def step():
        out, _ = mlp_forward(x, chunk_size, fast=fast)
        return torch.autograd.grad(out.pow(2).mean(), leaves)
    return step


def load_titans():
    """``(module, None)`` when titans-pytorch can be imported, else ``(None, reason)``."""
    try:
        import titans_pytorch
    except Exception as error:                          # not installed, or broken: record why
        return None, f"titans_pytorch not importable: {type(error).__name__}: {error}"
    return titans_pytorch, None


def build_titans(titans, batch_size: int | None):
    """``NeuralMemory(dim=64, chunk_size=16, heads=1)`` with its default memory model (and a
    maximum learning rate of 0.1), the same initial weights for every ``batch_size``.
    ``batch_size=16`` makes it move its weights to the updated ones after every 16 tokens; with the
    default (None) it never does between calls."""
    torch.manual_seed(0)
    return titans.NeuralMemory(dim=DIM, chunk_size=TRAIN_CHUNK, heads=HEADS, batch_size=batch_size,
                               default_step_transform_max_lr=TITANS_MAX_LR)


def titans_chunk_by_chunk(memory, x: torch.Tensor) -> torch.Tensor:
    """Feed ``x: (batch, T, 64)`` to ``memory`` 16 tokens per call, passing the returned state into
    the next call. Returns the retrieved values ``(batch, T, 64)``."""
    state, outs = None, []
    for piece in x.split(TRAIN_CHUNK, dim=1):
        out, state = memory(piece, state=state)
        outs.append(out)
    return torch.cat(outs, dim=1)


@torch.no_grad()
def titans_update_check(titans) -> dict:
    """Do titans' weights really change between chunks when fed chunk by chunk? On one sequence
    of 4 chunks, compares one call with chunk-by-chunk calls, for the default ``batch_size=None``
    and for ``batch_size=16``. Max absolute differences of the outputs."""
    x = torch.randn(1, 4 * TRAIN_CHUNK, DIM, generator=torch.Generator().manual_seed(1))
    default, sequential = build_titans(titans, None), build_titans(titans, TRAIN_CHUNK)
    one_call, fed = default(x)[0], titans_chunk_by_chunk(default, x)
    seq_one_call, seq_fed = sequential(x)[0], titans_chunk_by_chunk(sequential, x)

    def max_diff(a, b):
        return (a - b).abs().max().item()
    diffs = {
        "default_chunk_by_chunk_vs_one_call": max_diff(fed, one_call),
        "batch16_chunk_by_chunk_vs_default_one_call": max_diff(seq_fed, one_call),
        "batch16_chunk_by_chunk_vs_batch16_one_call": max_diff(seq_fed, seq_one_call),
    }
    return {"max_abs_diff": diffs,
            "default_updates_between_calls": diffs["default_chunk_by_chunk_vs_one_call"] > 1e-3,
            "batch16_updates_between_chunks": diffs["batch16_chunk_by_chunk_vs_default_one_call"] > 1e-3}


def titans_training_step(titans, batch: int, seq_len: int, mode: str):
    """A closure: forward + backward of titans' ``NeuralMemory`` on ``x: (batch, seq_len, 64)``;
    loss = mean of the outputs squared; gradients to all its parameters. ``mode``:
    ``"chunk_by_chunk"`` (batch_size=16, 16 tokens per call, state passed: the baseline),
    ``"one_call_batch16"`` (batch_size=16, one call: titans loops over the chunks itself) or
    ``"one_call_default"`` (batch_size=None, one call: every chunk's gradient at the initial weights)."""
    memory = build_titans(titans, None if mode == "one_call_default" else TRAIN_CHUNK)
    x = torch.randn(batch, seq_len, DIM, generator=torch.Generator().manual_seed(0))
    params = list(memory.parameters())

    def step():
        out = titans_chunk_by_chunk(memory, x) if mode == "chunk_by_chunk" else memory(x)[0]
        return torch.autograd.grad(out.pow(2).mean(), params, allow_unused=True)
    return step


def titans_info(titans) -> dict:
    """What the baseline is: version, memory model, hidden size, and the update check."""
    memory = build_titans(titans, TRAIN_CHUNK)
    hidden = memory.memory_model.model.weights[0].shape[1]
    return {"measured": True, "version": importlib.metadata.version("titans-pytorch"),
            "memory_model": repr(memory.memory_model).replace("\n", " "),
            "hidden": hidden, "hidden_matches_ours": hidden == HIDDEN,
            "update_check": titans_update_check(titans),
            "differences": "titans adds q/k/v projections, RMSNorms, a LayerNorm + residual around its MLP "
                           "(GELU) and one gradient per chunk (momentum and decay per chunk); ours is the bare "
                           "memory (SiLU MLP) with per-token lr, momentum, retention and reads inside a chunk"}


def training_throughput(batch: int, seq_len: int) -> dict:
    """Tokens/s of forward + backward: ours at chunk 16 and 64 and token by token, and titans-pytorch
    (chunk by chunk, the baseline; and two single-call variants for context) when installed, all
    timed in the same rounds (:func:`time_rounds`)."""
    steps = {("ours_chunked", c): ours_training_step(batch, seq_len, c) for c in (TRAIN_CHUNK, 64)}
    steps.update({("ours_fast", c): ours_training_step(batch, seq_len, c, fast=True) for c in (TRAIN_CHUNK, 64)})
    steps[("ours_loop", None)] = ours_training_step(batch, seq_len, None)
    titans, reason = load_titans()
    if titans is None:
        print(f"  titans-pytorch baseline: not measured ({reason})")
        info = {"measured": False, "reason": reason}
    else:
        info = titans_info(titans)
        for mode in ("chunk_by_chunk", "one_call_batch16", "one_call_default"):
            steps[(f"titans_{mode}", TRAIN_CHUNK)] = titans_training_step(titans, batch, seq_len, mode)
    rows = []
    for (name, chunk), (timing, grads) in time_rounds(steps).items():
        require_finite(name, grads)
        rows.append({"method": name, "batch": batch, "seq_len": seq_len, "chunk_size": chunk,
                     "tokens_per_s": batch * seq_len / timing["median_s"], **timing})
        print(f"  {name:<26} {chunk or '':>5} {timing['median_s']:9.3f} s {rows[-1]['tokens_per_s']:10.0f} tokens/s")
    return {"rows": rows, "titans": info}


# --- 6: a whole model's training step, fast forms against the default ---

MODEL_STEP_MODELS = ("titans_memory", "delta_memory", "full_learned_keep")


def model_training_step(name: str, fast: bool, batch: int, seq_len: int):
    """A closure: one AdamW step of registry model ``name`` (built with ``fast``) on a fixed batch
    of the needle family's training task (chapter 7's: 8 needles, all asked, random haystack)."""
    from memorylib.registry import build_model, build_task
    from memorylib.training import answer_loss

    torch.manual_seed(0)
    model = build_model(name, fast=fast)
    task = build_task("needle_family", variant="multi_query", seq_len=seq_len, num_needles=8, num_queries=8,
                      filler="random")
    data = task.sample(batch, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():                                   # as memorylib.training.train takes one
        loss = answer_loss(model(data.tokens), data)
        total = loss + (model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else 0.0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return [total.detach()]
    return step


def model_training(batch: int, seq_len: int) -> dict:
    """Each model's training step with ``fast=True`` and without, timed in the same rounds."""
    steps = {(name, fast): model_training_step(name, fast, batch, seq_len)
             for name in MODEL_STEP_MODELS for fast in (False, True)}
    rows = []
    for (name, fast), (timing, loss) in time_rounds(steps).items():
        require_finite(name, loss)
        rows.append({"model": name, "fast": fast, "batch": batch, "seq_len": seq_len, **timing})
        print(f"  {name:<20} {'fast' if fast else 'default':<8} {timing['median_s']:8.3f} s a step", flush=True)
    med = {(r["model"], r["fast"]): r["median_s"] for r in rows}
    speedups = {name: med[name, False] / med[name, True] for name in MODEL_STEP_MODELS}
    return {"rows": rows, "speedup_fast_vs_default": speedups}


# --- record, tables, targets ---

def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(quick: bool) -> dict:
    """What the numbers depend on: versions, threads, CPU, the numerical environment, the fingerprint."""
    titans, _ = load_titans()
    return {
        "command": "python benchmarks/memory_speed.py " + " ".join(sys.argv[1:]),
        "python_executable": sys.executable,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "memorylib": memorylib.__version__, "torch": torch.__version__.split("+")[0],
        "titans_pytorch": importlib.metadata.version("titans-pytorch") if titans else None,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "numeric_env": {name: os.environ.get(name) for name in {**reproducible.NUMERIC_ENV,
                                                                 **reproducible.FOREIGN_ENV}},
        "arithmetic": "foreign" if FOREIGN else "book",
        "book_numeric_env": reproducible.is_reference(),
        "fingerprint": reproducible.fingerprint(),
        "load_average_at_start": os.getloadavg(),
    }


def print_timing(row: dict) -> None:
    flag = f"  (extrapolated from {row['timed_seq_len']} tokens)" if row["extrapolated"] else ""
    print(f"  {row['method']:<18} {row.get('chunk_size') or '':>5} T={row['seq_len']:<6} "
          f"{row['median_s'] * 1e3:10.1f} ms{flag}", flush=True)


def target_summary(results: dict) -> list[dict]:
    """Each target: the measured ratio, the target and PASS / MISS (or why it was not measured)."""
    summary = []
    for s in results["loop_vs_chunked"]["speedups"]:
        if s["seq_len"] != 4096:
            continue
        if s["module"] == "mlp" and s.get("form") == "fast":
            summary.append({"target": f"MLP chunk {s['chunk_size']} (fast form) vs token-by-token, T=4096 "
                                      "(forward)",
                            "measured": s["speedup"],
                            "required": TARGETS[f"mlp_chunk{s['chunk_size']}_vs_loop_speedup_at_4096"],
                            "extrapolated": s["loop_extrapolated"]})
        elif s.get("form") == "fast":
            summary.append({"target": f"delta rule chunk {s['chunk_size']} (fast form) vs token-by-token, T=4096 "
                                      "(forward)", "measured": s["speedup"],
                            "required": TARGETS["delta_fast_vs_loop_speedup_at_4096"],
                            "extrapolated": s["loop_extrapolated"]})
    share = results["linear_vs_attention"]["delta_fast_rate"]
    summary.append({"target": f"delta rule (fast form) at T={share['seq_len']}: share of the matmul rate",
                    "measured": share["share_of_matmul_rate"], "unit": "",
                    "required": TARGETS["delta_fast_share_of_matmul_rate_at_32768"], "extrapolated": False})
    first = results["linear_vs_attention"]["crossover"]["delta_fast"]["first_faster_seq_len"]
    summary.append({"target": "linear memory (delta rule, fast form) faster than causal attention from T",
                    "measured": first, "unit": " tokens", "at_most": True,
                    "required": TARGETS["linear_faster_than_attention_from_seq_len"], "extrapolated": False,
                    **({} if first is not None else {"verdict": "MISS", "reason": "attention faster at every T"})})
    rows = {r["method"]: r for r in results["training"]["rows"] if r.get("chunk_size") in (TRAIN_CHUNK, None)}
    titans = results["training"]["titans"]
    entry = {"target": "training tokens/s, ours chunk 16 (fast form) vs titans chunk by chunk",
             "required": TARGETS["training_ours_vs_titans_tokens_per_s"], "extrapolated": False}
    if not titans["measured"]:
        entry.update(measured=None, verdict="not measured", reason=titans["reason"])
    elif not titans["update_check"]["batch16_updates_between_chunks"]:
        entry.update(measured=None, verdict="invalid baseline", reason="titans weights did not change between chunks")
    else:
        entry["measured"] = rows["ours_fast"]["tokens_per_s"] / rows["titans_chunk_by_chunk"]["tokens_per_s"]
    summary.append(entry)
    for s in summary:
        if "verdict" not in s:
            ok = s["measured"] <= s["required"] if s.get("at_most") else s["measured"] >= s["required"]
            s["verdict"] = "PASS" if ok else "MISS"
    return summary


def print_summary(results: dict) -> None:
    print("\nLoop vs chunked (forward, batch 1): speedup = loop time / chunked time")
    for s in results["loop_vs_chunked"]["speedups"]:
        flag = "  (loop extrapolated)" if s["loop_extrapolated"] else ""
        print(f"  {s['module']:<6} {s.get('form', 'chunked'):<8} chunk {s['chunk_size']:<3} T={s['seq_len']:<6} "
              f"{s['speedup']:7.1f}x{flag}")
    print("\nLinear memory vs causal attention (forward, batch 1): time ratio linear / attention")
    med = {(r["method"], r["seq_len"]): r["median_s"] for r in results["linear_vs_attention"]["rows"]}
    for t in sorted({t for _, t in med}):
        att = med[("attention", t)]
        print(f"  T={t:<6} attention {att * 1e3:9.1f} ms   delta {med[('delta_chunked', t)] / att:6.2f}   "
              f"additive {med[('additive_chunked', t)] / att:6.2f}   fast delta {med[('delta_fast', t)] / att:6.2f}   "
              f"fast additive {med[('additive_fast', t)] / att:6.2f}")
    for name, c in results["linear_vs_attention"]["crossover"].items():
        print(f"  crossover {name}: faster from T={c['first_faster_seq_len']} (bracket {c['bracket']}, "
              f"estimate {c['estimated_seq_len']}) {c['note']}")
    sizes = results["state_bytes"]
    print("\nBytes held after T tokens (batch 1, one head)")
    for r in sizes["rows"]:
        print(f"  T={r['seq_len']:<6} delta {r['delta_state_bytes']:>9}   mlp {r['mlp_state_bytes']:>9}   "
              f"KV cache {r['kv_cache_bytes']:>10}")
    print(f"  constant in T: delta {sizes['delta_constant']}, mlp {sizes['mlp_constant']}")
    if "model_training" in results:
        m = results["model_training"]
        print(f"\nA model's training step, fast forms vs the default (batch {m['rows'][0]['batch']}, "
              f"T={m['rows'][0]['seq_len']}): time default / time fast")
        for name, x in m["speedup_fast_vs_default"].items():
            print(f"  {name:<20} {x:5.2f}x")
    print("\nTargets")
    for s in results["targets"]:
        unit = s.get("unit", "x")
        digits = 0 if unit == " tokens" else 2
        measured = "-" if s["measured"] is None else f"{s['measured']:.{digits}f}{unit}"
        flag = " (extrapolated)" if s["extrapolated"] else ""
        bound = "<=" if s.get("at_most") else ">="
        print(f"  {s['verdict']:<16} {s['target']}: {measured} (target {bound} {s['required']:g}{unit}){flag} "
              f"{s.get('reason', '')}")


def check_writable(out: pathlib.Path) -> None:
    """Refuse an output path that cannot be written, before any timing: a folder, or a file in a
    folder that cannot be made or written."""
    if out.is_dir():
        raise SystemExit(f"--out {out} is a folder; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(f"cannot make the folder of --out {out}: {err.strerror or err}") from None
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise SystemExit(f"cannot write --out {out}: permission denied")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run (about a minute)")
    parser.add_argument("--out", help="output JSON (default: book/results/ch06_benchmark.json, or runs/ with --quick)")
    parser.add_argument("--foreign", action="store_true",
                        help="time in CI's other arithmetic (memorylib.reproducible.FOREIGN_ENV: two threads)")
    parser.add_argument("--max-loop-len", type=int,
                        help="time token-by-token loops on at most this many tokens, scaled beyond")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    config = dict(QUICK if args.quick else FULL)
    if args.max_loop_len:
        config["max_loop_len"] = args.max_loop_len
    out = ROOT / (args.out or config["out"])
    check_writable(out)                      # before minutes of timing, not after
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    started = time.perf_counter()
    results = {**environment(args.quick),
               "config": {**config, "dim": DIM, "hidden": HIDDEN, "heads": HEADS, "dtype": "float32",
                          "delta_chunk": DELTA_CHUNK, "train_chunk": TRAIN_CHUNK, "mlp_gates": MLP_GATES,
                          "delta_beta": DELTA_BETA, "titans_max_lr": TITANS_MAX_LR, "targets": TARGETS}}
    print("1-2. loop vs chunked (forward)", flush=True)
    results["loop_vs_chunked"] = loop_vs_chunked(config["loop_seq_lens"], config["max_loop_len"])
    print("3. linear memory vs causal attention (forward)", flush=True)
    results["linear_vs_attention"] = linear_vs_attention(config["attention_seq_lens"])
    results["state_bytes"] = state_sizes(config["attention_seq_lens"])
    print(f"5. training throughput (batch {config['train_batch']}, T={config['train_seq_len']})", flush=True)
    results["training"] = training_throughput(config["train_batch"], config["train_seq_len"])
    print(f"6. a model's training step, fast vs default (batch {config['model_batch']}, "
          f"T={config['model_seq_len']})", flush=True)
    results["model_training"] = model_training(config["model_batch"], config["model_seq_len"])
    results["targets"] = target_summary(results)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    print_summary(results)
    atomic_write_text(out, json.dumps(results, indent=1, allow_nan=False) + "\n")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} in {results['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
