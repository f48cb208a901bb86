"""The numerical environment the book's committed numbers were produced in.

Float32 sums come out in a different last bit when the machine picks a different code path, and
over hundreds of training steps such bits change every number a chapter prints. Three libraries
inside torch pick their code path by the CPU they find: MKL (matrix products; it takes different
paths on Intel and AMD processors), ATen's vectorized kernels (AVX2 or AVX-512) and oneDNN. The
variables below pin all three to paths every x86-64 machine with AVX2 runs identically, and fix
the thread count (2, the book's reference machine; partial sums depend on it) without letting
MKL drop threads when the machine is busy:

* ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility, the branch that gives the
  same results on Intel and non-Intel CPUs. It costs speed where matrix products dominate
  (about 4x for a 4608x64 @ 64x256 product on a 2-core AMD EPYC; chapter 1's transformers feel
  it) and almost none for the slot-memory models, whose time goes to per-token steps;
* ``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``: no AVX-512 kernels;
* ``OMP_NUM_THREADS=2``, ``MKL_DYNAMIC=FALSE``;
* ``OMP_WAIT_POLICY=PASSIVE``: idle threads sleep instead of spinning. It changes no number and
  costs nothing alone, but two torch processes sharing two cores (a test session and a notebook
  kernel) then run at half speed each instead of a third.

They are read when torch loads, so they must be set before ``import torch``: the tests
(``conftest.py``), ``tools/execute_chapters.py`` and the sweeps in ``experiments/`` call
:func:`apply` first, and the notebook kernels they start inherit it. A reader's Jupyter or Colab
kernel does not have them: numbers there can differ from the committed ones in late digits.

The pins are not enough across CPU models: on an Intel Xeon, chapter 3's first training stage
left an AMD EPYC's history in the fifth digit of the loss after 50 steps, with every variable
above set (matrix-product blocking also follows cache sizes, which no variable fixes). So every
sweep and every executed chapter records :func:`fingerprint`, the exact bits of two short
training runs, and a live run is held equal to a committed sweep only where the fingerprints
match (:func:`same_numerics`); the tests compare a chapter's outputs cell by cell only on a
machine with the fingerprint the chapter was executed with (``conftest.py``). This module does
not import torch at import time.
"""

from __future__ import annotations

import functools
import os

NUMERIC_ENV = {
    "OMP_NUM_THREADS": "2",
    "MKL_DYNAMIC": "FALSE",
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "OMP_WAIT_POLICY": "PASSIVE",
}


def apply(environ=None) -> dict:
    """Set every variable of :data:`NUMERIC_ENV` in ``environ`` (default ``os.environ``),
    overriding other values. Returns the variables set."""
    environ = os.environ if environ is None else environ
    environ.update(NUMERIC_ENV)
    return dict(NUMERIC_ENV)


def is_reference(environ=None) -> bool:
    """True when this process runs with the book's numerical environment (see the module docstring)."""
    environ = os.environ if environ is None else environ
    return all(environ.get(k) == v for k, v in NUMERIC_ENV.items())


@functools.lru_cache(maxsize=1)
def fingerprint() -> str:
    """A short hex digest of the exact float32 results of three training steps of a small slot
    memory and of a small transformer: the code paths the book's numbers go through. Two
    processes with the same fingerprint computed the same bits here; a different CPU model, thread
    count or library build usually changes it. About a second; cached. Leaves torch's global
    random state as it was."""
    import hashlib

    import torch

    from .registry import build_model, build_task
    from .training import train

    task = build_task("associative_lookup", seq_len=48, num_pairs=4, num_queries=4, min_distance=18)
    digest = hashlib.sha256(f"threads={torch.get_num_threads()}".encode())
    with torch.random.fork_rng(devices=[]):
        for name, kwargs in (("slot_memory", {"d_model": 32, "slot_dim": 16, "num_slots": 8}),
                             ("tiny_transformer", {"d_model": 32})):
            torch.manual_seed(0)
            net = build_model(name, **kwargs)
            train(net, task, steps=3, batch_size=16, lr=1e-2, warmup=1, progress=False)
            for tensor in net.state_dict().values():
                digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def same_numerics(record: dict) -> bool:
    """True when this process runs in the book's environment and ``record`` (a sweep's JSON or a
    notebook's ``memorylib`` metadata) was produced with this machine's :func:`fingerprint`."""
    return is_reference() and record.get("fingerprint") == fingerprint()
