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
* One thread. Against the environment it replaces (two threads whose idle time was spent asleep,
  plus the pins below) the slot memories of chapters 2-4 train 1.96x faster (20 steps: 4.9 s vs
  9.6 s) and the tiny transformer 1.3x faster (3.8 vs 5.0 s). Against two threads with OpenMP's
  default (idle threads spin): the same speed on the slot memories (4.9 s both), 1.3x slower on
  the delta rule, the MLP memory, the full model and the tiny transformer (1.4 vs 1.1 s, 1.5 vs
  1.2 s, 1.7 vs 1.3 s, 3.8 vs 2.9 s), causal attention over 4,096 tokens 29 vs 21 ms. That is the
  price, and what it buys: two spinning threads collapse when another process shares the two cores
  (chapter 1 took 557 s instead of 65 s beside a second run), one thread does not, and one thread
  splits every sum the same way on any machine, whatever its core count. Every chapter stays well
  inside its budget on one thread (longest: chapter 4, 87 s in full).
* ``MKL_CBWR=COMPATIBLE`` (MKL's cross-vendor reproducibility) cost 2.3x on a 4608x64 @ 64x256
  product (1.88 vs 0.83 ms), 2.3x on causal attention at 4,096 tokens (49.9 vs 21.3 ms) and 1.5x
  on training the tiny transformer (4.5 vs 2.9 s), and bought nothing: with it and the AVX2 pins
  below, an Intel Xeon and an AMD EPYC still gave different fingerprints (``e3cb5c3e83dd78f8`` and
  ``779f4739ea7ad027``), because matrix-product blocking follows cache sizes. Dropped.
* ``ATEN_CPU_CAPABILITY=avx2`` and ``ONEDNN_MAX_CPU_ISA=AVX2`` (no AVX-512 kernels) cost nothing
  on this AMD EPYC (the tiny transformer even trained faster, 2.4 vs 2.9 s) and bought nothing for
  the same reason. Dropped.
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


def provenance(command: str | None = None) -> dict:
    """The header of every record the book writes (sweeps, runs, the needle and continual
    experiments): the ``command`` that wrote it (when given), the memorylib, torch and Python
    versions, the thread count, the numerical variables in force (``numeric_env``: their values in
    this process, None where unset) and the :func:`fingerprint`."""
    import platform

    import torch

    from . import __version__

    head = {} if command is None else {"command": command}
    names = sorted(set(NUMERIC_ENV) | set(FOREIGN_ENV))
    return {**head, "memorylib": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "numeric_env": {k: os.environ.get(k) for k in names},
            "fingerprint": fingerprint()}


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
