"""Chapter 6's study of the chunked forms (which themselves are in :mod:`memorylib.delta_rule` and
:mod:`memorylib.ttt`). What chunking buys and what it costs: streams for the memories' functional API, the drift of
the mini-batch MLP memory from its sequential definition (on stated streams and on a trained
model's own inputs), a trained model run at another chunk size, a timer, and the benchmark
record. Introduced in chapter 6. (Recall after a stream of chunked writes: ``memorylib.recall``
with ``chunk_size``.)

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

from .checks import check_int
from .knobs import chunking  # used here; chapter 6 imports it from here
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
    check_int("batch_size", batch_size, 1)
    check_int("seq_len", seq_len, 1)
    check_int("dim", dim, 1)
    if not shared >= 0:
        raise ValueError(f"shared must be >= 0, got {shared!r}")
    hidden = dim if hidden is None else check_int("hidden", hidden, 1)
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
    check_int("num_tokens", num_tokens, 1)
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
    check_int("window", window, 1)
    if out.shape != reference.shape:
        raise ValueError(f"out and reference must have the same shape, got {tuple(out.shape)} and "
                         f"{tuple(reference.shape)}")
    per_token = ((out - reference).norm(dim=-1) / reference.norm(dim=-1)).flatten(0, -2).mean(0)    # (T,)
    starts = list(range(0, per_token.shape[0], window))
    values = [float(per_token[s:s + window].mean()) * 100 for s in starts]
    return starts, [v if math.isfinite(v) else math.inf for v in values]


def describe_error(error: float) -> str:
    """``"3.1 %"``, or ``"diverged"`` above :data:`DIVERGED` or when not finite."""
    if not math.isfinite(error) or error > DIVERGED:
        return "diverged"
    return f"{100 * error:.3g} %"


# --- a trained model's memory at another chunk size ----------------------------------------------


def chunk_size_curve(model, task, chunk_sizes, **eval_kwargs) -> dict:
    """``{chunk size: evaluate(model, task, **eval_kwargs)}`` with the memory run at each chunk
    size; chunk size 1 is run token by token (the reference form: the same numbers, faster)."""
    from .training import evaluate

    if not chunk_sizes:
        raise ValueError("chunk_sizes must hold at least one chunk size")
    curve = {}
    for c in chunk_sizes:
        with chunking(model, None if c == 1 else c):
            curve[c] = evaluate(model, task, **eval_kwargs)
    return curve


def model_memory_drift(model, tokens: torch.Tensor, chunk_sizes) -> dict:
    """The drift of a trained MLP-memory model's memory on its own inputs: the queries, keys,
    values and learned gates it makes from ``tokens: (batch, seq_len)``, run in float64 token by
    token and at each chunk size. Returns ``{"error": {chunk size: relative error}, "inputs":
    {"lr", "lr_max", "momentum", "retain", "key_cosine"}}`` (means over tokens; None when a gate
    is off)."""
    if getattr(model, "kind", None) != "mlp":
        raise ValueError(f"model_memory_drift needs a model with an MLP memory (kind='mlp'), got "
                         f"{getattr(model, 'kind', type(model).__name__)!r}: the chunked delta rule is exact")
    with torch.no_grad():
        x = model.memory_inputs(model.features(tokens))
    stream = {"q": x["q"].double(), "k": x["k"].double(), "v": x["v"].double(),
              "w1": model.w1.detach().double(), "w2": model.w2.detach().double()}
    gates = {name: None if x[name] is None else x[name].double() for name in ("lr", "momentum", "retain")}
    state = MLPMemoryState.initial(stream["w1"], stream["w2"], tokens.shape[0])
    args = (stream["q"], stream["k"], stream["v"], gates["lr"], gates["momentum"], gates["retain"])
    with torch.no_grad():
        reference = mlp_memory_reference(*args, state=state)[0]
        error = {c: relative_error(mlp_memory(*args, state=state, chunk_size=c)[0], reference) for c in chunk_sizes}
    k = x["k"]
    T = k.shape[2]
    cos = ((k @ k.transpose(-1, -2)).sum((-1, -2)) - T).mean() / (T * (T - 1)) if T > 1 else torch.zeros(())
    mean = lambda name: None if x[name] is None else float(x[name].mean())     # noqa: E731
    return {"error": error, "inputs": {"lr": mean("lr"), "lr_max": float(x["lr"].max()), "momentum": mean("momentum"),
                                       "retain": mean("retain"), "key_cosine": float(cos)}}


# --- timing and the benchmark file ------------------------------------------------------------


def time_call(fn, repeats: int = 3) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``fn()``, after one warm-up call."""
    check_int("repeats", repeats, 1)
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


BENCHMARK_SECTIONS = ("config", "loop_vs_chunked", "linear_vs_attention", "state_bytes", "training", "targets")

# the rows of benchmarks/memory_speed.py, by method, and the names the chapter shows them under
_FORWARD = {"delta_loop": "delta rule, token by token", "delta_chunked": "delta rule, chunk {C}",
            "delta_fast": "delta rule, chunk {C}, fast form",
            "mlp_loop": "MLP memory, token by token", "mlp_chunked": "MLP memory, chunk {C}",
            "mlp_fast": "MLP memory, chunk {C}, fast form"}
_ATTENTION = {"additive_chunked": "linear memory, chunk {C}", "delta_chunked": "delta rule, chunk {C}",
              "additive_fast": "linear memory, chunk {C}, fast form", "delta_fast": "delta rule, chunk {C}, fast form",
              "attention": "causal attention (SDPA)"}
_TRAINING = {"ours_chunked": "memorylib, chunk {C}", "ours_fast": "memorylib, chunk {C}, fast form",
             "ours_loop": "memorylib, token by token",
             "titans_chunk_by_chunk": "titans-pytorch, chunk by chunk",
             "titans_one_call_batch16": "titans-pytorch, one call, batch_size 16",
             "titans_one_call_default": "titans-pytorch, one call, default"}


def _series(rows: list, names: dict, value: str = "median_s") -> dict:
    """``{"seq_lens": [...], "seconds": {name: [value per length, None where missing]}, "extrapolated": bool}``."""
    lengths = sorted({r["seq_len"] for r in rows if r["method"] in names})
    out: dict = {}
    for r in rows:
        if r["method"] not in names:
            continue
        name = names[r["method"]].format(C=r.get("chunk_size"))
        out.setdefault(name, [None] * len(lengths))[lengths.index(r["seq_len"])] = r[value]
    return {"seq_lens": lengths, "seconds": out, "extrapolated": any(r.get("extrapolated") for r in rows)}


def load_chunked_benchmark(path) -> dict:
    """Read chapter 6's benchmark record (``book/results/ch06_benchmark.json``, written by
    ``benchmarks/memory_speed.py``; its README describes the file) into the few tables the chapter
    plots. The one place that knows the file's layout. Returns::

        {"path", "command", "date", "config": the run's configuration,
         "machine": {"cpu", "threads", "torch", "titans_pytorch", "pinned", "load_average_at_start"},
         "forward":   {"seq_lens", "seconds": {name: [median s per length]}, "extrapolated"},
         "attention": {"seq_lens", "seconds": {...}, "extrapolated", "crossover": {method: {...}}},
         "state":     {"seq_lens", "bytes": {name: [bytes per length]}},
         "training":  {"tokens_per_s": {name: tokens/s or None}, "titans": {...}},
         "rate":      {"size", "matmul_gflop_per_s", "seq_len", "delta_fast_gflop_per_s", ...} or None,
         "targets":   [{"target", "measured", "required", "verdict"}, ...]}

    Names are the chapter's ("MLP memory, chunk 16", "causal attention (SDPA)", ...)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no benchmark file at {path}: run `make benchmark` (benchmarks/memory_speed.py)")
    data = json.loads(path.read_text())
    missing = [key for key in ("command", *BENCHMARK_SECTIONS) if key not in data]
    if missing:
        raise ValueError(f"{path} lacks {missing}: not a benchmarks/memory_speed.py record")
    forward = _series(data["loop_vs_chunked"]["rows"], _FORWARD)
    attention = _series(data["linear_vs_attention"]["rows"], _ATTENTION)
    attention["crossover"] = data["linear_vs_attention"].get("crossover", {})
    for name, table in (("loop_vs_chunked", forward), ("linear_vs_attention", attention)):
        if not table["seconds"]:
            methods = sorted(_FORWARD if name == "loop_vs_chunked" else _ATTENTION)
            raise ValueError(f"{path}: {name} has no rows of the methods {methods}")
    states = data["state_bytes"]["rows"]
    state = {"seq_lens": [r["seq_len"] for r in states],
             "bytes": {"KV cache (attention)": [r["kv_cache_bytes"] for r in states],
                       "delta rule state": [r["delta_state_bytes"] for r in states],
                       "MLP memory state": [r["mlp_state_bytes"] for r in states]}}
    training = {"tokens_per_s": {_TRAINING[r["method"]].format(C=r.get("chunk_size")): r.get("tokens_per_s")
                                 for r in data["training"]["rows"] if r["method"] in _TRAINING},
                "titans": data["training"].get("titans", {})}
    lva = data["linear_vs_attention"]
    rate = {**lva["delta_fast_rate"], "size": lva["matmul"]["size"]} if "delta_fast_rate" in lva else None
    machine = {"cpu": data.get("cpu_model", "unknown CPU"), "threads": data.get("threads"), "torch": data.get("torch"),
               "titans_pytorch": data.get("titans_pytorch"), "pinned": data.get("book_numeric_env"),
               "load_average_at_start": data.get("load_average_at_start")}
    return {"path": str(path), "command": data["command"].strip(), "date": data.get("date"), "config": data["config"],
            "machine": machine, "forward": forward, "attention": attention, "state": state, "training": training,
            "targets": data["targets"], "rate": rate}


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
