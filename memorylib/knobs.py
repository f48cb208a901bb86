"""Run a trained model with one of its knobs turned, and put it back. Introduced in chapter 1.

Several settings of the book's models are plain attributes that the weights do not depend on:
the attention ``window`` (chapter 1), the number of slots (chapters 2 and 3), the surprise
``threshold`` and ``temperature`` (chapter 4), the ``chunk_size`` of a learned memory (chapter 6)
and the sidecar's capacity (chapter 8). The chapters' sliders evaluate a trained model at another
value of one of them. :func:`overrides` is the one way to do it: it sets the attributes for the
duration of a ``with`` block and restores them afterwards, also when the block raises; the named
knobs below check their value first. :func:`eval_mode` does the same for ``model.training``.
"""

from __future__ import annotations

from contextlib import contextmanager

from .checks import check_int, check_number


@contextmanager
def overrides(model, **attrs):
    """Set ``model.<name> = value`` for each keyword inside the ``with`` block; restore the old
    values on leaving it (also on an exception). Every name must already be an attribute."""
    missing = [name for name in attrs if not hasattr(model, name)]
    if missing:
        raise ValueError(f"{type(model).__name__} has no attribute {', '.join(missing)} to override")
    old = {name: getattr(model, name) for name in attrs}
    try:
        for name, value in attrs.items():
            setattr(model, name, value)
        yield model
    finally:
        for name, value in old.items():
            setattr(model, name, value)


@contextmanager
def eval_mode(model):
    """``model.eval()`` inside the ``with`` block, its previous mode restored afterwards (also on an
    exception). Objects without a ``training`` attribute pass through unchanged."""
    was_training = getattr(model, "training", None)
    if was_training is None:
        yield model
        return
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def attention_window(model, window: int | None):
    """Temporarily restrict the attention to the last ``window`` positions (None: full attention)."""
    check_int("window", window, 1, allow_none=True)
    return overrides(model, window=window)


def memory_size(model, num_slots: int):
    """Temporarily run a slot memory model with ``num_slots`` slots (the weights do not depend on
    the number of slots). Introduced in chapter 2."""
    return overrides(model, num_slots=check_int("num_slots", num_slots, 1))


def surprise_settings(model, threshold: float | None = None, temperature: float | None = None):
    """Temporarily set the surprise gate of a surprise-gated model (None: leave as it is)."""
    attrs = {}
    if threshold is not None:
        attrs["threshold"] = check_number("threshold", threshold)
    if temperature is not None:
        attrs["temperature"] = check_number("temperature", temperature, 0, low_open=True)
    return overrides(model, **attrs)


def chunking(model, chunk_size: int | None):
    """Temporarily run the memory of a learned memory model with ``chunk_size`` tokens per chunk,
    or token by token (its reference form) when None. Introduced in chapter 6."""
    if chunk_size is None:
        return overrides(model, reference=True)
    return overrides(model, chunk_size=check_int("chunk_size", chunk_size, 1), reference=False)


def sidecar_capacity(model, capacity: int):
    """Temporarily run a full model with a sidecar of ``capacity`` entries (0: none); the weights
    do not depend on it. A model trained without a sidecar (``no_sidecar``) is left as it is.
    Introduced in chapter 8."""
    check_int("capacity", capacity, 0)
    return overrides(model, sidecar=capacity if model.sidecar > 0 else model.sidecar)
