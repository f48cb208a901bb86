"""What each numeric pin costs and buys, measured on this machine (memorylib/reproducible.py).

    python tools/measure_numerics.py            # about 3 minutes on 2 cores

For each environment below, a fresh Python process (the variables are read when torch loads)
reports torch's CPU capability and thread count, the fingerprint (:func:`memorylib.reproducible.fingerprint`),
digests of the weights after a longer training of the tiny transformer (40 steps) and the slot
memory (20 steps), and timings: those trainings, 15 steps of four more models, a 4608x64 @ 64x256
matrix product and causal attention over 4,096 tokens. The book's own environment runs twice:
equal digests there are what bit-for-bit reproduction on one machine means. Prints one JSON line
per run and a table; writes nothing.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

ENVIRONMENTS = {
    "book (1 thread)": {"OMP_NUM_THREADS": "1"},
    "book again": {"OMP_NUM_THREADS": "1"},
    "2 threads": {"OMP_NUM_THREADS": "2"},
    "2 threads, MKL_CBWR=COMPATIBLE": {"OMP_NUM_THREADS": "2", "MKL_CBWR": "COMPATIBLE"},
    "2 threads, AVX2 kernels only": {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx2",
                                     "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "the old pins (all of the above)": {"OMP_NUM_THREADS": "2", "MKL_CBWR": "COMPATIBLE",
                                        "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                        "MKL_DYNAMIC": "FALSE", "OMP_WAIT_POLICY": "PASSIVE"},
}

PROBE = r'''
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from memorylib import reproducible
from memorylib.registry import build_model, build_task
from memorylib.training import train

def digest(net):
    h = hashlib.sha256()
    for t in net.state_dict().values():
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]

def timed_training(name, steps, lr):
    torch.manual_seed(0)
    net = build_model(name)
    start = time.perf_counter()
    train(net, build_task("associative_lookup"), steps=steps, batch_size=32, lr=lr, warmup=5, progress=False)
    return round(time.perf_counter() - start, 2), digest(net)

out = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
       "fingerprint": reproducible.fingerprint()}
out["tiny_transformer_40_s"], out["tiny_transformer_digest"] = timed_training("tiny_transformer", 40, 3e-3)
out["slot_memory_20_s"], out["slot_memory_digest"] = timed_training("slot_memory", 20, 1e-2)
for name in ("surprise_only", "delta_memory", "mlp_memory", "full_memory"):
    out[name + "_15_s"] = timed_training(name, 15, 3e-3)[0]
a, b = torch.randn(4608, 64), torch.randn(64, 256)
for _ in range(3):
    a @ b
start = time.perf_counter()
for _ in range(50):
    a @ b
out["matmul_ms"] = round((time.perf_counter() - start) / 50 * 1e3, 3)
q = torch.randn(1, 1, 4096, 64)
attend = lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
attend()
start = time.perf_counter()
for _ in range(5):
    attend()
out["attention_4096_ms"] = round((time.perf_counter() - start) / 5 * 1e3, 1)
print(json.dumps(out))
'''

PINS = ("OMP_NUM_THREADS", "MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_DYNAMIC",
        "OMP_WAIT_POLICY", "MKL_NUM_THREADS")


def main() -> int:
    rows = {}
    for label, variables in ENVIRONMENTS.items():
        env = {k: v for k, v in os.environ.items() if k not in PINS}
        env.update(variables)
        done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{label}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows[label] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{label}: {json.dumps(rows[label])}", flush=True)
    keys = [k for k in next(iter(rows.values())) if k not in ("capability",)]
    print("\n" + f"{'':34s}" + "".join(f"{k[:22]:>24s}" for k in keys))
    for label, row in rows.items():
        print(f"{label:34s}" + "".join(f"{str(row[k])[:22]:>24s}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
