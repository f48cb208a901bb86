"""PROVISIONAL speed measurements behind chapter 6, until benchmarks/memory_speed.py lands.

    python benchmarks/ch06_provisional_benchmark.py [--out book/results/ch06_benchmark.json] [--threads 2] [--quick]

Writes the JSON that chapter 6 reads through ``memorylib.figures.load_chunked_benchmark`` (its
docstring holds the schema). Everything is timed on this machine's CPU, float32, with
``--threads`` torch threads (default 2, the book's reference); each number is the median of 3 runs
after one warm-up run. By default the libraries pick their fastest code paths; ``--pinned`` times
them under the book's numerical environment instead (memorylib.reproducible), whose
``MKL_CBWR=COMPATIBLE`` makes small matrix products several times slower (a (16x64)@(64x256)
batch of 8: 33 us unpinned, 233 us pinned, one thread, here). On a machine shared with other jobs use ``--threads 1``: there an op split
over two threads waits for the busy core, which made the chunked delta rule 200 times slower in
one measurement here. Even then the numbers are noisy: compare ratios measured in one run.

The training-throughput row for titans-pytorch needs that package (``pip install titans-pytorch``);
without it the row is written as null with the reason.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memorylib import reproducible  # noqa: E402

PINNED = "--pinned" in sys.argv
if PINNED:                   # before torch is imported: the book's arithmetic, at its cost in speed
    reproducible.apply()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from memorylib.delta_rule import delta_rule, delta_rule_reference, state_bytes  # noqa: E402
from memorylib.ttt import MLPMemoryState, mlp_memory, mlp_memory_reference  # noqa: E402


def seconds(fn, repeats: int = 3) -> float:
    fn()                                                     # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 6)


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def stream(B, T, D, hidden=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, 1, T, D, generator=g), dim=-1)
    k = F.normalize(torch.randn(B, 1, T, D, generator=g), dim=-1)
    v = F.normalize(torch.randn(B, 1, T, D, generator=g), dim=-1)
    beta = 0.5 * torch.ones(B, 1, T)
    hidden = hidden or D
    state = MLPMemoryState.initial(torch.randn(1, hidden, D, generator=g) / D ** 0.5,
                                   torch.randn(1, D, hidden, generator=g) / hidden ** 0.5, B)
    return q, k, v, beta, state


@torch.no_grad()
def forward_section(seq_lens, D=64, repeats=3):
    rows = {name: [] for name in ("delta rule, token by token", "delta rule, chunk 64", "MLP memory, token by token",
                                  "MLP memory, chunk 16", "MLP memory, chunk 64")}
    for T in seq_lens:
        q, k, v, beta, st = stream(1, T, D)
        lr = 0.1 * torch.ones_like(beta)
        rows["delta rule, token by token"].append(seconds(lambda: delta_rule_reference(q, k, v, beta), repeats))
        rows["delta rule, chunk 64"].append(seconds(lambda: delta_rule(q, k, v, beta, chunk_size=64), repeats))
        rows["MLP memory, token by token"].append(seconds(lambda: mlp_memory_reference(q, k, v, lr, state=st), repeats))
        for C in (16, 64):
            rows[f"MLP memory, chunk {C}"].append(seconds(lambda: mlp_memory(q, k, v, lr, state=st, chunk_size=C), repeats))
        print(f"forward T={T}: " + ", ".join(f"{n} {r[-1]:.4f}" for n, r in rows.items()), flush=True)
    return {"config": {"batch_size": 1, "heads": 1, "key_dim": D, "value_dim": D, "hidden": D},
            "seq_lens": list(seq_lens), "seconds": rows}


@torch.no_grad()
def attention_section(seq_lens, D=64, repeats=3):
    rows = {"linear memory, chunk 64": [], "delta rule, chunk 64": [], "causal attention (SDPA)": []}
    for T in seq_lens:
        q, k, v, beta, _ = stream(1, T, D)
        rows["linear memory, chunk 64"].append(seconds(lambda: delta_rule(q, k, v, beta, chunk_size=64, erase=False), repeats))
        rows["delta rule, chunk 64"].append(seconds(lambda: delta_rule(q, k, v, beta, chunk_size=64), repeats))
        rows["causal attention (SDPA)"].append(
            seconds(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), repeats))
        print(f"attention T={T}: " + ", ".join(f"{n} {r[-1]:.5f}" for n, r in rows.items()), flush=True)
    return {"config": {"batch_size": 1, "heads": 1, "key_dim": D, "value_dim": D},
            "seq_lens": list(seq_lens), "seconds": rows}


@torch.no_grad()
def state_section(seq_lens, D=64, chunk_size=16):
    rows = {"KV cache (attention)": [], "delta rule / linear memory state": [], "MLP memory state": []}
    for T in seq_lens:
        q, k, v, beta, st = stream(1, T, D)
        rows["KV cache (attention)"].append(k.numel() * k.element_size() + v.numel() * v.element_size())
        _, M = delta_rule(q, k, v, beta, chunk_size=64)
        rows["delta rule / linear memory state"].append(state_bytes(M))
        _, s = mlp_memory(q, k, v, 0.1 * torch.ones_like(beta), state=st, chunk_size=chunk_size)
        rows["MLP memory state"].append(s.nbytes())
    return {"config": {"batch_size": 1, "heads": 1, "key_dim": D, "value_dim": D, "hidden": D,
                       "chunk_size": chunk_size, "dtype": "float32"},
            "seq_lens": list(seq_lens), "bytes": rows}


@torch.no_grad()
def chunk_section(chunk_sizes, B=4, T=512, D=32, repeats=3):
    q, k, v, beta, st = stream(B, T, D)
    lr = 0.1 * torch.ones_like(beta)
    rows = {"MLP memory": [seconds(lambda: mlp_memory(q, k, v, lr, state=st, chunk_size=C), repeats) for C in chunk_sizes],
            "delta rule": [seconds(lambda: delta_rule(q, k, v, beta, chunk_size=C), repeats) for C in chunk_sizes]}
    reference = {"MLP memory": seconds(lambda: mlp_memory_reference(q, k, v, lr, state=st), repeats),
                 "delta rule": seconds(lambda: delta_rule_reference(q, k, v, beta), repeats)}
    print(f"chunk sweep: {rows}, token by token {reference}", flush=True)
    return {"config": {"batch_size": B, "heads": 1, "seq_len": T, "key_dim": D, "value_dim": D, "hidden": D},
            "chunk_sizes": list(chunk_sizes), "seconds": rows, "token_by_token_seconds": reference}


class MLPMemoryLayer(nn.Module):
    """A bare memory layer for the throughput comparison: projections of x to q, k, v and to a
    learning rate, momentum and retention, the chunked MLP memory (Titans form), an output projection."""

    def __init__(self, dim: int, hidden: int, chunk_size: int):
        super().__init__()
        self.qkv, self.gates, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, 3), nn.Linear(dim, dim)
        self.w1 = nn.Parameter(torch.randn(1, hidden, dim) / dim ** 0.5)
        self.w2 = nn.Parameter(torch.randn(1, dim, hidden) / hidden ** 0.5)
        self.chunk_size = chunk_size

    def forward(self, x):
        q, k, v = (t[:, None] for t in self.qkv(x).chunk(3, dim=-1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        lr, mom, ret = (torch.sigmoid(g)[:, None] for g in self.gates(x).unbind(-1))
        state = MLPMemoryState.initial(self.w1, self.w2, x.shape[0])
        out, _ = mlp_memory(q, k, v, 0.1 * lr, mom, ret, state=state, chunk_size=self.chunk_size)
        return self.out(out[:, 0])


def training_section(B=8, T=1024, D=64, hidden=256, chunk_size=16, repeats=3):
    """tokens/s of one training step (forward + backward) of a memory layer. memorylib at the chunk
    size and with one chunk for the whole sequence (every gradient at the initial weights);
    titans-pytorch as it comes (``batch_size=None``: as we read its code, every gradient of a call
    is then taken at the call's initial weights, ``chunk_size`` setting how often the weights
    used for reads change) and with ``batch_size=chunk_size`` (weights updated after every chunk,
    the gradient point of memorylib's chunked form)."""
    torch.manual_seed(0)
    x = torch.randn(B, T, D)
    layers = {f"memorylib, chunk {chunk_size}": MLPMemoryLayer(D, hidden, chunk_size),
              f"memorylib, one chunk of {T}": MLPMemoryLayer(D, hidden, T)}
    versions, missing = {}, None
    try:
        import importlib.metadata

        from titans_pytorch import NeuralMemory
        from titans_pytorch.memory_models import MemoryMLP

        for name, batch_size in ((f"titans-pytorch, chunk {chunk_size}", None),
                                 (f"titans-pytorch, chunk {chunk_size}, batch_size {chunk_size}", chunk_size)):
            layers[name] = NeuralMemory(dim=D, chunk_size=chunk_size, batch_size=batch_size, heads=1, dim_head=D,
                                        model=MemoryMLP(D, depth=2, expansion_factor=hidden / D))
        versions["titans-pytorch"] = importlib.metadata.version("titans-pytorch")
    except ImportError as err:
        missing = f"titans-pytorch not installed here ({err})"

    def step(layer):
        out = layer(x)
        out = out[0] if isinstance(out, tuple) else out
        out.pow(2).mean().backward()

    rows = {}
    for name, layer in layers.items():
        rows[name] = round(B * T / seconds(lambda: step(layer), repeats), 1)
        print(f"training {name}: {rows[name]} tokens/s", flush=True)
    if missing:
        rows[f"titans-pytorch, chunk {chunk_size}"] = None
    return {"config": {"batch_size": B, "seq_len": T, "dim": D, "hidden": hidden, "chunk_size": chunk_size,
                       "measures": "forward + backward of one memory layer, loss = mean square of its output"},
            "tokens_per_s": rows, "versions": versions, "missing": missing}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "book/results/ch06_benchmark.json"))
    parser.add_argument("--quick", action="store_true", help="shorter sequences, one repeat (a smoke run)")
    parser.add_argument("--pinned", action="store_true", help="time under memorylib.reproducible's pinned arithmetic")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (the book's reference is 2; on a machine shared with other jobs, 1: an "
                             "op split over two threads waits for the busy core)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    quick = args.quick
    result = {
        "provisional": True,
        "note": "provisional numbers from benchmarks/ch06_provisional_benchmark.py, to be replaced by "
                "benchmarks/memory_speed.py",
        "command": "python benchmarks/ch06_provisional_benchmark.py" + (f" --threads {args.threads}" if args.threads != 2 else "")
                   + (" --pinned" if PINNED else ""),
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__.split("+")[0],
                    "python": platform.python_version(),
                    "numeric_env": reproducible.NUMERIC_ENV if PINNED else "unpinned (libraries' own code paths)",
                    "fingerprint": reproducible.fingerprint() if PINNED else None},
        "dtype": "float32", "statistic": "median of 3 runs after a warm-up",
        "forward": forward_section([256, 1024] if quick else [1024, 4096, 16384], repeats=1 if quick else 3),
        "attention": attention_section([128, 512] if quick else [128, 256, 512, 1024, 2048, 4096, 8192, 16384],
                                       repeats=1 if quick else 3),
        "state": state_section([128, 1024] if quick else [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536]),
        "chunk_sweep": chunk_section([1, 4, 16] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256],
                                     T=128 if quick else 512, repeats=1 if quick else 3),
        "training": training_section(T=128 if quick else 1024, repeats=1 if quick else 3),
    }
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out} in {result['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
