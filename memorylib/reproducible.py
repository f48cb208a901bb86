"""The numerical environment the book's committed numbers were produced in.

Float32 sums come out in a different last bit when the machine takes a different code path, and
over hundreds of training steps such bits change every number a chapter prints. On one machine,
one thing decides the code path that a variable can fix: the number of threads (partial sums are
split by thread). The book runs with **one thread**:

* ``OMP_NUM_THREADS=1``, read when torch loads. :func:`memorylib.book.setup` sets the same
  count in a reader's kernel (where the variable was not set) with ``torch.set_num_threads``.

What was measured (2-core AMD EPYC, torch 2.13.0 CPU build; ``python tools/measure_numerics.py``
repeats it on any machine), and why nothing else is pinned any more:

* Without any pin, two processes on one machine give the same bits: the fingerprint below and
  the weights after 40 training steps of the tiny transformer and 20 of the slot memory were
  identical run to run. That is all that nbval needs.
* One thread instead of two: the slot memories (chapters 2-4, a per-token loop of small
  operations) train **1.9x faster** (20 steps: 4.7 s vs 8.8 s), because two threads pay more in
  hand-offs than they gain; the delta rule and the full model train at the same speed
  (1.4 vs 1.6 s, 3.1 vs 3.0 s); the tiny transformer trains 1.26x slower (3.8 vs 3.0 s); causal
  attention over 4,096 tokens takes 28.6 ms vs 21.3 ms. One thread also gives every machine the
  same split of the sums, whatever its core count.
* ``MKL_CBWR=COMPATIBLE`` (MKL's cross-vendor reproducibility) cost 2.3x on a 4608x64 @ 64x256
  product (2.05 vs 0.91 ms), 2.4x on causal attention at 4,096 tokens (51.5 vs 21.3 ms) and 1.7x
  on training the tiny transformer, and bought nothing: with it and the AVX2 pins below, an Intel
  Xeon and an AMD EPYC still gave different fingerprints (``e3cb5c3e83dd78f8`` and
  ``779f4739ea7ad027``), because matrix-product blocking follows cache sizes. Dropped.
* ``ATEN_CPU_CAPABILITY=avx2`` and ``ONEDNN_MAX_CPU_ISA=AVX2`` (no AVX-512 kernels) cost little
  alone (3.3 vs 3.0 s on the transformer) and bought nothing for the same reason. Dropped.
* ``MKL_DYNAMIC=FALSE`` and ``OMP_WAIT_POLICY=PASSIVE`` only matter with several threads. Dropped.

So results are bit-for-bit reproducible on the same machine (CPU model and library build), and
not across machines. Every sweep and every executed chapter records :func:`fingerprint`, the
exact bits of two short training runs; a live run is held equal to a committed record only where
the fingerprints match (:func:`same_numerics`), and otherwise a chapter asserts its claim in a
form that holds under any arithmetic (a margin, or the committed record). The tests compare a
chapter's arithmetic-dependent cells (tag ``depends-on-arithmetic``) only on a machine with the
fingerprint the chapter was executed with, and every other cell everywhere (``conftest.py``).
CI runs every chapter a second time under :data:`FOREIGN_ENV` to prove that.

The variable must be set before ``import torch``: the tests (``conftest.py``),
``tools/execute_chapters.py`` and the sweeps in ``experiments/`` call :func:`apply` first, and the
notebook kernels they start inherit it. This module does not import torch at import time.
"""

from __future__ import annotations

import functools
import os

THREADS = 1
NUMERIC_ENV = {"OMP_NUM_THREADS": str(THREADS)}
# A deliberately different arithmetic for CI's second run of the chapters: two threads split every
# parallel sum differently, on any machine with two cores or more (tests/test_foreign_arithmetic.py
# checks that it changes the fingerprint before it relies on it).
FOREIGN_ENV = {"OMP_NUM_THREADS": "2", "MKL_DYNAMIC": "FALSE", "OMP_WAIT_POLICY": "PASSIVE"}


def apply(environ=None, variables=None) -> dict:
    """Set every variable of ``variables`` (default :data:`NUMERIC_ENV`; :data:`FOREIGN_ENV` for
    CI's second run) in ``environ`` (default ``os.environ``), overriding other values. Returns the
    variables set."""
    environ = os.environ if environ is None else environ
    variables = NUMERIC_ENV if variables is None else variables
    environ.update(variables)
    return dict(variables)


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


def chapter_record(notebook) -> dict:
    """The ``memorylib`` metadata of a committed chapter notebook: ``tools/execute_chapters.py``
    records there the fingerprint its outputs were produced with. A chapter passes it to
    :func:`same_numerics` to learn whether this machine reproduces its own live runs bit for bit
    (and may assert their exact values) or not (and asserts their robust form). ``{}`` when the
    file is missing."""
    import json
    import pathlib

    try:
        return json.loads(pathlib.Path(notebook).read_text()).get("metadata", {}).get("memorylib", {})
    except FileNotFoundError:
        return {}


def same_numerics(record: dict) -> bool:
    """True when this process runs in the book's environment and ``record`` (a sweep's JSON or a
    notebook's ``memorylib`` metadata) was produced with this machine's :func:`fingerprint`."""
    return is_reference() and record.get("fingerprint") == fingerprint()
