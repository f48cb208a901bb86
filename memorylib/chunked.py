"""What chunking buys and what it costs: streams for the memories' functional API, the drift of
the mini-batch MLP memory from its sequential definition, recall after a stream of writes, a
timer, and the benchmark file. Introduced in chapter 6.

The chunked delta rule (:func:`memorylib.delta_rule.delta_rule`) is exact: it computes the
recurrence in another order. The chunked MLP memory (:func:`memorylib.ttt.mlp_memory`) is not:
inside a chunk every gradient is taken at the chunk-start weights. This module measures that
approximation on streams whose statistics are stated (unit keys, queries and values, a constant
learning rate), so the numbers do not depend on a trained model::

    stream = unit_stream(batch_size=4, seq_len=512, dim=32)            # q, k, v: (4, 1, 512, 32)
    drift = minibatch_drift(stream, lr=0.1, chunk_sizes=[2, 16, 64])
    drift["error"]                                                      # {2: 0.0037, 16: 0.0196, 64: 0.0611}

Shapes follow :mod:`memorylib.ttt`: ``q, k: (B, 1, T, key_dim)``, ``v: (B, 1, T, value_dim)``,
one head; ``w1: (1, hidden, key_dim)``, ``w2: (1, value_dim, hidden)``.
"""

from __future__ import annotations

import json
import math
import pathlib
import statistics
import time

import torch
import torch.nn.functional as F

from .tasks import _check_int
from .ttt import MLPMemoryState, mlp_apply, mlp_memory, mlp_memory_reference

#: a relative error above this (or not finite) is reported as "diverged"
DIVERGED = 10.0


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def unit_stream(batch_size: int, seq_len: int, dim: int, hidden: int | None = None, shared: float = 0.0,
                seed: int = 0, dtype=torch.float64) -> dict:
    """A stream of random unit queries, keys and values for one head, and the memory's initial
    weights (``w1``, ``w2``: the init of :class:`~memorylib.models.LearnedMemoryModel`).

    ``shared`` adds a common unit direction with that weight to every query and key before they
    are normalized: 0 gives independent keys (mean cosine 0), 1 keys whose mean cosine is about
    0.5, as keys made by one projection of related features tend to be. Returns ``{"q", "k",
    "v", "w1", "w2"}``."""
    _check_int("batch_size", batch_size, 1)
    _check_int("seq_len", seq_len, 1)
    _check_int("dim", dim, 1)
    if not shared >= 0:
        raise ValueError(f"shared must be >= 0, got {shared!r}")
    hidden = dim if hidden is None else _check_int("hidden", hidden, 1)
    g = torch.Generator().manual_seed(seed)
    common = _unit(torch.randn(dim, generator=g, dtype=dtype))
    shape = (batch_size, 1, seq_len, dim)
    q = _unit(_unit(torch.randn(shape, generator=g, dtype=dtype)) + shared * common)
    k = _unit(_unit(torch.randn(shape, generator=g, dtype=dtype)) + shared * common)
    v = _unit(torch.randn(shape, generator=g, dtype=dtype))
    w1 = torch.randn(1, hidden, dim, generator=g, dtype=dtype) / dim ** 0.5
    w2 = torch.randn(1, dim, hidden, generator=g, dtype=dtype) / hidden ** 0.5
    return {"q": q, "k": k, "v": v, "w1": w1, "w2": w2}


def _gates(stream: dict, lr, momentum: float, retain: float):
    shape = stream["k"].shape[:3]
    lr = lr if isinstance(lr, torch.Tensor) else torch.full(shape, float(lr), dtype=stream["k"].dtype)
    mom = torch.full_like(lr, momentum) if momentum else None
    ret = torch.full_like(lr, retain) if retain != 1.0 else None
    return lr, mom, ret


def run_mlp_memory(stream: dict, lr, chunk_size: int | None = None, momentum: float = 0.0,
                   retain: float = 1.0) -> torch.Tensor:
    """The reads ``(B, 1, T, value_dim)`` of an MLP memory written along ``stream`` with learning
    rate ``lr`` (a number, or a ``(B, 1, T)`` tensor), momentum and retention; token by token
    (:func:`~memorylib.ttt.mlp_memory_reference`) when ``chunk_size`` is None, else the chunked
    mini-batch form."""
    lr, mom, ret = _gates(stream, lr, momentum, retain)
    state = MLPMemoryState.initial(stream["w1"], stream["w2"], stream["k"].shape[0])
    args = (stream["q"], stream["k"], stream["v"], lr, mom, ret)
    with torch.no_grad():
        if chunk_size is None:
            return mlp_memory_reference(*args, state=state)[0]
        return mlp_memory(*args, state=state, chunk_size=chunk_size)[0]


def error_removed_by_one_write(stream: dict, lr: float, num_tokens: int = 64) -> float:
    """The scale of a learning rate: the mean fraction of ``||f(k_t) - v_t||`` that one write of
    ``(k_t, v_t)`` at rate ``lr`` removes, each of the first ``num_tokens`` tokens written alone
    into the stream's initial weights (negative: the write overshoots and makes it worse)."""
    _check_int("num_tokens", num_tokens, 1)
    n = min(num_tokens, stream["k"].shape[2])
    k, v = stream["k"][:, :, :n].transpose(1, 2), stream["v"][:, :, :n].transpose(1, 2)    # (B, n, 1, dim)
    # n one-token streams side by side as heads, each from the initial weights
    one = {"q": k, "k": k, "v": v, "w1": stream["w1"].expand(n, -1, -1), "w2": stream["w2"].expand(n, -1, -1)}
    before = (mlp_apply(one["w1"], one["w2"], one["k"]) - one["v"]).norm(dim=-1)
    after = (run_mlp_memory(one, lr) - one["v"]).norm(dim=-1)
    return float((1 - after / before).mean())


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """``||out - reference|| / ||reference||`` over all entries; ``inf`` when ``out`` is not finite."""
    if not torch.isfinite(out).all():
        return math.inf
    return float((out - reference).norm() / reference.norm())


def minibatch_drift(stream: dict, lr, chunk_sizes, momentum: float = 0.0, retain: float = 1.0,
                    reference: torch.Tensor | None = None) -> dict:
    """How far the chunked MLP memory's reads are from the token-by-token ones, per chunk size.

    Returns ``{"reference": reads (B, 1, T, Dv), "outputs": {C: reads}, "error": {C: relative
    error}}``; an error is ``inf`` where the chunked form's reads are not finite. Pass
    ``reference`` (the token-by-token reads) to skip recomputing it."""
    if not chunk_sizes:
        raise ValueError("chunk_sizes must hold at least one chunk size")
    ref = run_mlp_memory(stream, lr, None, momentum, retain) if reference is None else reference
    if not torch.isfinite(ref).all():
        raise ValueError(f"the token-by-token memory itself diverges at lr={lr}, momentum={momentum}: "
                         "no reference to measure drift from")
    outputs = {C: run_mlp_memory(stream, lr, C, momentum, retain) for C in chunk_sizes}
    return {"reference": ref, "outputs": outputs, "error": {C: relative_error(o, ref) for C, o in outputs.items()}}


def drift_profile(out: torch.Tensor, reference: torch.Tensor, window: int = 16) -> tuple[list, list]:
    """Where along the stream the drift is: the relative error of each read,
    ``||o_t - r_t|| / ||r_t||``, averaged over the sequences of a batch and over windows of
    ``window`` tokens. Returns ``(window starts, drift in percent)`` (``inf`` where not finite)."""
    _check_int("window", window, 1)
    if out.shape != reference.shape:
        raise ValueError(f"out and reference must have the same shape, got {tuple(out.shape)} and {tuple(reference.shape)}")
    per_token = ((out - reference).norm(dim=-1) / reference.norm(dim=-1)).flatten(0, -2).mean(0)    # (T,)
    starts = list(range(0, per_token.shape[0], window))
    values = [float(per_token[s:s + window].mean()) * 100 for s in starts]
    return starts, [v if math.isfinite(v) else math.inf for v in values]


def describe_error(error: float) -> str:
    """``"3.1 %"``, or ``"diverged"`` above :data:`DIVERGED` or when not finite."""
    if not math.isfinite(error) or error > DIVERGED:
        return "diverged"
    return f"{100 * error:.3g} %"


# --- recall after a stream of writes ------------------------------------------------------------


def recall_stream(num_pairs: int, dim: int, batch_size: int, hidden: int | None = None, shared: float = 0.0,
                  seed: int = 0, dtype=torch.float64) -> dict:
    """``num_pairs`` writes of random unit (key, value) pairs, then one read of every key in a
    random order. The stream has ``2 * num_pairs`` tokens; ``write`` (B, 1, 2N) is 1 on the writes
    and 0 on the reads (multiply the learning rate by it: a token with rate 0 writes nothing).
    Returns ``unit_stream``'s dict plus ``write``, ``values`` (B, 1, N, dim) and ``order`` (B, N):
    read ``i`` asks for pair ``order[:, i]``."""
    _check_int("num_pairs", num_pairs, 1)
    s = unit_stream(batch_size, num_pairs, dim, hidden, shared, seed, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    order = torch.stack([torch.randperm(num_pairs, generator=g) for _ in range(batch_size)])
    asked = s["k"].gather(2, order[:, None, :, None].expand(-1, 1, -1, dim))
    write = torch.cat([torch.ones(batch_size, 1, num_pairs, dtype=dtype), torch.zeros(batch_size, 1, num_pairs, dtype=dtype)], 2)
    return {"q": torch.cat([s["k"], asked], 2), "k": torch.cat([s["k"], asked], 2),
            "v": torch.cat([s["v"], torch.zeros_like(s["v"])], 2), "w1": s["w1"], "w2": s["w2"],
            "write": write, "values": s["v"], "order": order}


def recall_accuracy(reads: torch.Tensor, stream: dict) -> float:
    """Fraction of the reads of a :func:`recall_stream` whose read vector is closer (cosine) to
    the value stored under the asked key than to any other stored value. ``reads``: the memory's
    reads over the whole stream (B, 1, 2N, dim)."""
    N = stream["order"].shape[1]
    got = _unit(reads[:, :, N:])
    sims = got @ _unit(stream["values"]).transpose(-1, -2)                  # (B, 1, N, N)
    return float((sims[:, 0].argmax(-1) == stream["order"]).double().mean())


# --- timing and the benchmark file ------------------------------------------------------------


def time_call(fn, repeats: int = 3) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``fn()``, after one warm-up call."""
    _check_int("repeats", repeats, 1)
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


BENCHMARK_SECTIONS = ("forward", "attention", "state", "chunk_sweep", "training")


def load_chunked_benchmark(path) -> dict:
    """Read chapter 6's benchmark JSON (``book/results/ch06_benchmark.json``) and check it has
    what the chapter plots. The one place that knows the file's layout::

        {"command": str, "machine": {"cpu": str, "threads": int, "torch": str, ...},
         "provisional": bool (optional), "dtype": str, "statistic": str,
         "forward":   {"config": {...}, "seq_lens": [T...], "seconds": {name: [s per T]}},
         "attention": {"config": {...}, "seq_lens": [T...], "seconds": {name: [s per T]}},
         "state":     {"config": {...}, "seq_lens": [T...], "bytes":   {name: [bytes per T]}},
         "chunk_sweep": {"config": {...}, "chunk_sizes": [C...], "seconds": {name: [s per C]},
                         "token_by_token_seconds": {name: s}},
         "training":  {"config": {...}, "tokens_per_s": {name: number or null}, "versions": {...}}}

    Every list of numbers has one entry per ``seq_lens`` (or ``chunk_sizes``) entry. Returns the
    dict with ``"path"`` added."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no benchmark file at {path}: run benchmarks/ch06_provisional_benchmark.py")
    data = json.loads(path.read_text())
    missing = [key for key in ("command", "machine", *BENCHMARK_SECTIONS) if key not in data]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    for section, axis, values in (("forward", "seq_lens", "seconds"), ("attention", "seq_lens", "seconds"),
                                  ("state", "seq_lens", "bytes"), ("chunk_sweep", "chunk_sizes", "seconds")):
        n = len(data[section][axis])
        bad = [name for name, ys in data[section][values].items() if len(ys) != n]
        if bad:
            raise ValueError(f"{path}: {section}.{values} entries {bad} do not have one value per {axis} ({n})")
    data["path"] = str(path)
    return data


def crossover(xs, baseline, contender) -> float | None:
    """The ``x`` at which ``contender`` (costs, e.g. seconds, one per ``x``), more costly than
    ``baseline`` at the smallest ``x``, becomes the cheaper of the two: the first sign change of
    ``log(contender / baseline)``, interpolated linearly in ``log x``. None when it never changes
    sign, or when ``contender`` is not more costly to begin with."""
    if not (len(xs) == len(baseline) == len(contender)) or len(xs) < 2:
        raise ValueError("xs, baseline and contender must have the same length >= 2")
    gap = [math.log(b / a) for a, b in zip(baseline, contender)]
    if gap[0] <= 0:
        return None
    for i in range(1, len(xs)):
        if gap[i] <= 0:
            lo, hi = math.log(xs[i - 1]), math.log(xs[i])
            return math.exp(lo + (hi - lo) * gap[i - 1] / (gap[i - 1] - gap[i]))
    return None
