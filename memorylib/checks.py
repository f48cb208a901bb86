"""Argument and shape checks shared by the whole library: one message for one kind of mistake.

Every public function and constructor of memorylib checks its input before it does any work, and a
bad value ends in one ``ValueError`` that names the argument, what is allowed and what was given:
``num_slots must be an int >= 1, got 0``; ``temperature must be a number > 0, got nan``;
``v must be a tensor of shape (2, 3, 5, value_dim), got (2, 3, 4, 8)``. This module imports
nothing from memorylib, so every layer can use it (tasks, memories, models, training, the CLI).

Numbers are finite: NaN and infinity are refused wherever a number is asked for, because a NaN
option gives NaN results silently, and a result must never be NaN.
"""

from __future__ import annotations

import difflib
import math
from numbers import Real
from typing import Iterable, Sequence

import torch


def _described(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low}"
    if low is None:
        return f"{'<' if high_open else '<='} {high}"
    return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _none(allow_none) -> str:
    if not allow_none:
        return ""
    return f"None ({allow_none}) or " if isinstance(allow_none, str) else "None or "


def check_int(name: str, value, low: int, high: int | None = None, *, allow_none: bool = False):
    """``value`` if it is an int in ``[low, high]`` (``high=None``: no upper bound; ``allow_none``:
    None passes too; a string says what None means, e.g. ``"learned"``), else a ``ValueError``:
    ``"{name} must be an int >= {low}, got {value!r}"``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = _interval(low, high, False, False)
        raise ValueError(f"{name} must be {_none(allow_none)}an int {allowed}, got {value!r}")
    return value


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, allow_none: bool = False):
    """``float(value)`` if it is a finite real number in the interval (bounds None: unbounded;
    ``low_open``/``high_open``: the bound itself is excluded), else a ``ValueError`` that names the
    interval. Bools, NaN and infinities are refused."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = ((low is None or (value > low if low_open else value >= low))
              and (high is None or (value < high if high_open else value <= high)))
    if not ok:
        where = "" if low is None and high is None else " " + _interval(low, high, low_open, high_open)
        raise ValueError(f"{name} must be {_none(allow_none)}a number{where}, got {value!r}")
    return float(value)


def check_choice(name: str, value, choices: Sequence):
    """``value`` if it is one of ``choices``, else ``"{name} must be one of (...), got {value!r}"``."""
    if not any(value == c and type(value) is type(c) for c in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_name(kind: str, name, table: dict):
    """``table[name]``, or a ``ValueError`` that lists the valid names and suggests the closest one:
    ``unknown model 'slot_memroy' (did you mean 'slot_memory'?); valid models: ...``."""
    if not isinstance(name, str) or name not in table:
        valid = sorted(table)
        hint = difflib.get_close_matches(str(name), valid, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"unknown {kind} {name!r}{extra}; valid {kind}s: {', '.join(valid)}")
    return table[name]


def check_tensor(name: str, x, shape: Sequence | None = None, *, dims: int | None = None,
                 allow_none: bool = False, layout: str | None = None):
    """``x`` if it is a tensor of ``shape`` (entries None or a str match any size; a str names the
    dimension in the message) or of ``dims`` dimensions, else a ``ValueError`` that shows the
    expected and the actual shape. ``layout`` replaces the expected shape in the message."""
    if x is None and allow_none:
        return None
    ok = isinstance(x, torch.Tensor)
    if ok and shape is not None:
        ok = x.dim() == len(shape) and all(s is None or isinstance(s, str) or x.shape[i] == s
                                           for i, s in enumerate(shape))
    if ok and dims is not None:
        ok = x.dim() == dims
    if not ok:
        if layout is not None:
            expected = layout
        elif shape is not None:
            expected = "(" + ", ".join(str(s) for s in shape) + ")"
        else:
            expected = f"{dims} dimensions"
        raise ValueError(f"{name} must be a tensor of shape {expected}, got {_described(x)}")
    return x


def check_values(name: str, x: torch.Tensor | None, low: float | None = None, high: float | None = None):
    """``x`` if all its values lie in ``[low, high]`` (and are not NaN), else a ``ValueError`` that
    gives the range the values span."""
    if x is None or x.numel() == 0:
        return x
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if math.isnan(lo) or math.isnan(hi) or (low is not None and lo < low) or (high is not None and hi > high):
        if torch.isnan(x.detach()).any():
            raise ValueError(f"{name} must not hold NaN")
        raise ValueError(f"{name} must be {_interval(low, high, False, False)}, got values in [{lo:.4g}, {hi:.4g}]")
    return x


def check_qkv(q, k, v, layout: str = "(batch, heads, seq_len, dim)") -> None:
    """Queries, keys and values of one memory: tensors of the same number of dimensions (as many as
    ``layout`` names), ``q`` and ``k`` of the same shape, ``v`` sharing every dimension but the
    last with them."""
    dims = len(layout.split(","))
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, x, dims=dims, layout=layout)
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:-1] != k.shape[:-1]:
        lead = ", ".join(str(s) for s in k.shape[:-1])
        raise ValueError(f"v must have shape ({lead}, value_dim), got {tuple(v.shape)}")


def check_tokens(tokens, vocab_size: int) -> torch.Tensor:
    """``tokens`` if it is a ``(batch, seq_len)`` int64 tensor (``batch, seq_len >= 1``) of ids in
    ``[0, vocab_size)``, else a ``ValueError`` that says which of these it is not."""
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"tokens must be a torch.Tensor of shape (batch, seq_len), got {type(tokens).__name__}")
    if tokens.dtype != torch.long:
        raise ValueError(f"tokens must have dtype torch.int64 (long), got {tokens.dtype}")
    if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must have shape (batch, seq_len) with batch >= 1 and seq_len >= 1, got "
                         f"{tuple(tokens.shape)}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got values in "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
    return tokens


def check_ints(name: str, values: Iterable, low: int) -> tuple:
    """A non-empty sequence of ints ``>= low`` as a tuple, else a ``ValueError``."""
    values = tuple(values) if isinstance(values, (list, tuple)) else None
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
        raise ValueError(f"{name} must be a non-empty list of ints >= {low}, got {values!r}")
    return values
