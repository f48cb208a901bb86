"""Writing files so that nothing is lost: a file holds its old content or the complete new one.

Every file memorylib writes (checkpoints, JSON records, figures) goes through a temporary file in
the same folder, flushed to disk, then renamed over the destination (``os.replace`` is atomic on
one file system). A write that fails part-way (a full disk, a killed process) leaves the old file
as it was and removes the temporary one; two processes writing the same path never share a
temporary file.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


def atomic_write(path, write: Callable) -> Path:
    """Call ``write(f)`` on a binary file object, then move the file to ``path`` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """``Path(path).write_text(text)`` (UTF-8), atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save(obj, path) -> Path:
    """``torch.save(obj, path)``, atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))


@contextmanager
def locked(path):
    """Hold an exclusive lock on ``<path>.lock`` while the block runs: several processes that share
    one results file (a sweep run in parallel) each re-read it under the lock before adding their
    row. Without ``fcntl`` (Windows), no lock: run one process per file there."""
    try:
        import fcntl
    except ImportError:                          # pragma: no cover - not on the book's machines
        yield
        return
    path = Path(path)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
