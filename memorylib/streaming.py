"""Streams far longer than training sequences, processed piece by piece with a state of constant
size. Introduced in chapter 7.

:class:`NeedleStream` is chapter 1's needle task (:class:`~memorylib.tasks.NeedleRecall`) at any
length, generated one piece at a time, so that a 256K-token haystack never exists in memory whole:
for the same seed and a predictable haystack it produces exactly the tokens of
``NeedleRecall(seq_len, filler="predictable").sample(batch, seed)`` (tested). :func:`stream_needle`
feeds such streams through a model's ``stream`` method (:meth:`~memorylib.models.FullMemoryModel.stream`)
and scores the answer at the end, per needle depth, with the bytes of the carried state.

Leakage controls (``mode``): ``"removed"`` (no needle at all) and ``"shuffled"`` (the needle
carries another trial's value) leave the answer nowhere before the query, so every causal model
must fall to chance (1/64); ``"other_key"`` keeps the right value but files it under another key,
which tells a model that matches keys (chance) from one that recalls whatever was surprising.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import check_int
from .knobs import eval_mode
from .stats import wilson_interval
from .tasks import CELL, DEFAULT_MIN_DISTANCE, MAX_STREAM_LEN, TokenLayout, _gap_cells, make_generator

STREAM_MODES = ("needle", "removed", "shuffled", "other_key")


class NeedleStream:
    """``batch_size`` needle streams of ``seq_len`` tokens, generated piece by piece.

    ``depths`` (optional): one depth in [0, 1] per stream (0 = the first cell, 1 = as late as
    ``min_distance`` allows); None draws them uniformly, as :class:`~memorylib.tasks.NeedleRecall`
    does. The answer is scored at :attr:`answer_position` (the key of the last cell, ``ASK k``);
    :attr:`targets` holds the answers and :attr:`needle_position` where each needle's value sits.
    """

    def __init__(self, seq_len: int, batch_size: int, seed: int = 0, depths=None, mode: str = "needle",
                 filler: str = "predictable", min_distance: int = DEFAULT_MIN_DISTANCE,
                 layout: TokenLayout | None = None):
        self.layout = lay = layout if layout is not None else TokenLayout()
        self.seq_len = check_int("seq_len", seq_len, CELL, MAX_STREAM_LEN)
        B = self.batch_size = check_int("batch_size", batch_size, 1)
        if mode not in STREAM_MODES:
            raise ValueError(f"mode must be one of {STREAM_MODES}, got {mode!r}")
        if filler not in ("random", "predictable"):
            raise ValueError(f"filler must be 'random' or 'predictable', got {filler!r}")
        self.mode, self.filler = mode, filler
        num_cells = seq_len // CELL
        top = num_cells - 2 - _gap_cells(check_int("min_distance", min_distance, 1))
        if top < 0:
            raise ValueError(f"seq_len={seq_len} is too short for a needle at min_distance={min_distance}")
        g = make_generator(seed)
        # the draws of NeedleRecall._generate, in its order
        self.phase = torch.randint(0, lay.num_filler, (B, 1), generator=g) if filler == "predictable" else None
        if depths is None:
            ncell = torch.randint(0, top + 1, (B, 1), generator=g)
        else:
            d = torch.as_tensor(depths, dtype=torch.float64).reshape(-1)
            if d.shape != (B,) or not bool(((d >= 0) & (d <= 1)).all()):
                raise ValueError(f"depths must be {B} numbers in [0, 1], got {depths!r}")
            ncell = (d * top).round().long()[:, None]
        self.key = torch.randint(lay.key_start, lay.value_start, (B, 1), generator=g)
        self.value = torch.randint(lay.value_start, lay.filler_start, (B, 1), generator=g)
        self.needle_cell, self.query_cell = ncell, num_cells - 1
        self.depth = ncell.squeeze(1).double() / max(top, 1)
        self.targets = self.value.squeeze(1).clone()
        self.stored_key, self.stored_value = self.key.clone(), self.value.clone()
        if mode == "shuffled":            # another stream's value (a cyclic shift; redrawn where it collides)
            other = self.value.roll(1, 0)
            clash = other == self.value
            other[clash] = lay.value_start + (self.value[clash] - lay.value_start + 1) % lay.num_values
            self.stored_value = other
        elif mode == "other_key":
            self.stored_key = lay.key_start + (self.key - lay.key_start + 1 + torch.randint(
                0, lay.num_keys - 1, (B, 1), generator=g)) % lay.num_keys
        self._noise_seed = int(torch.randint(0, 2 ** 62, (1,), generator=g))

    @property
    def answer_position(self) -> int:
        return self.query_cell * CELL + 1

    @property
    def needle_position(self) -> torch.Tensor:
        """(B,) position of each needle's value token (where the fact is complete)."""
        return self.needle_cell.squeeze(1) * CELL + 2

    def piece(self, lo: int, hi: int) -> torch.Tensor:
        """Tokens ``[lo, hi)`` of every stream: ``(batch_size, hi - lo)`` int64."""
        if not 0 <= lo < hi <= self.seq_len:
            raise ValueError(f"a piece must satisfy 0 <= lo < hi <= {self.seq_len}, got [{lo}, {hi})")
        lay, B = self.layout, self.batch_size
        pos = torch.arange(lo, hi)[None, :]
        if self.filler == "predictable":
            tokens = lay.filler_start + (pos + self.phase) % lay.num_filler
        else:   # random haystack: a generator per piece start, so any split gives the same stream
            tokens = torch.empty(B, hi - lo, dtype=torch.long)
            for start in range(lo - lo % 4096, hi, 4096):
                g = make_generator((self._noise_seed + start) % 2 ** 62)
                block = torch.randint(lay.filler_start, lay.vocab_size, (B, 4096), generator=g)
                a, b = max(lo, start), min(hi, start + 4096)
                tokens[:, a - lo:b - lo] = block[:, a - start:b - start]
        cells = [(self.query_cell, lay.ASK, self.key, self.value)]
        if self.mode != "removed":
            cells.append((self.needle_cell, lay.SET, self.stored_key, self.stored_value))
        for cell, marker, first, second in cells:
            cell = torch.as_tensor(cell).expand(B, 1)
            for offset, tok in enumerate((torch.full((B, 1), marker), first, second)):
                p = cell * CELL + offset - lo
                inside = (p >= 0) & (p < hi - lo)
                rows = inside.nonzero()[:, 0]
                tokens[rows, p[rows, 0]] = tok[rows, 0]
        return tokens


@torch.no_grad()
def stream_needle(model, seq_len: int, trials: int, *, num_depths: int = 10, piece: int = 256,
                  batch_size: int = 50, seed: int = 0, mode: str = "needle", filler: str = "predictable",
                  progress: bool = True, digits: int = 4) -> dict:
    """Needle accuracy of ``model`` at ``seq_len`` tokens over ``trials`` streams, fed in pieces of
    ``piece`` tokens through ``model.stream`` with its carried state.

    Depths are spread evenly: trial ``i`` hides its needle at depth ``(i % num_depths) / (num_depths - 1)``.
    Returns ``accuracy`` with a Wilson 95 % interval, ``chance``, ``by_depth`` (depth, n, accuracy,
    interval), ``outcomes`` (one character per trial, "1" if correct), ``stored_value_rate`` (how
    often the answer was the value the needle carries: the target itself in mode "needle" and
    "other_key", another stream's value in "shuffled"; None when the needle is removed), ``state_bytes`` (per stream,
    after the last piece; the same for every length),
    ``seconds`` and ``tokens_per_second``.
    """
    check_int("seq_len", seq_len, CELL, MAX_STREAM_LEN)
    check_int("trials", trials, 1)
    check_int("num_depths", num_depths, 2)
    check_int("piece", piece, 1)
    check_int("batch_size", batch_size, 1)
    if not hasattr(model, "stream"):
        raise ValueError(f"{type(model).__name__} has no stream method; streaming needs a model of constant state "
                         "(FullMemoryModel and its ablations)")
    grid = np.linspace(0.0, 1.0, num_depths)
    depth_of = grid[np.arange(trials) % num_depths]
    correct, state_bytes = np.zeros(trials, dtype=bool), set()
    stored = np.zeros(trials, dtype=bool)
    with eval_mode(model):
        start = time.perf_counter()
        total = 0
        batches = list(range(0, trials, batch_size))
        bar = tqdm(total=trials * math.ceil((seq_len // CELL * CELL - 1) / piece), disable=not progress,
                   desc=f"{seq_len} tokens, {mode}", mininterval=1.0)
        for b_i, lo_t in enumerate(batches):
            hi_t = min(trials, lo_t + batch_size)
            gen = NeedleStream(seq_len, hi_t - lo_t, seed=seed * 100003 + b_i, depths=depth_of[lo_t:hi_t],
                               mode=mode, filler=filler)
            end, state = gen.answer_position + 1, None
            for lo in range(0, end, piece):
                hi = min(end, lo + piece)
                logits, state = model.stream(gen.piece(lo, hi), state, last_only=True)
                bar.update(hi_t - lo_t)
            predicted = logits[:, -1].argmax(-1)
            correct[lo_t:hi_t] = (predicted == gen.targets).numpy()
            stored[lo_t:hi_t] = (predicted == gen.stored_value.squeeze(1)).numpy()
            state_bytes.add(state.nbytes() // (hi_t - lo_t))
            total += (hi_t - lo_t) * end
        bar.close()
        seconds = time.perf_counter() - start
    r = lambda x: round(float(x), digits)  # noqa: E731
    k, n = int(correct.sum()), trials
    lo_ci, hi_ci = wilson_interval(k, n)
    by_depth = {"depth": [], "n": [], "accuracy": [], "ci_low": [], "ci_high": []}
    for d in grid:
        sel = depth_of == d
        if not sel.any():
            continue
        kd, nd = int(correct[sel].sum()), int(sel.sum())
        wl, wh = wilson_interval(kd, nd)
        for key, val in zip(by_depth, (r(d), nd, r(kd / nd), r(wl), r(wh))):
            by_depth[key].append(val)
    if len(state_bytes) != 1:
        raise AssertionError(f"the carried state changed size between batches: {sorted(state_bytes)} bytes")
    return {"seq_len": seq_len, "mode": mode, "filler": filler, "trials": n, "correct": k, "accuracy": r(k / n),
            "ci": [r(lo_ci), r(hi_ci)], "chance": r(1 / TokenLayout().num_values), "by_depth": by_depth,
            "outcomes": "".join("1" if c else "0" for c in correct),
            "stored_value_rate": None if mode == "removed" else r(stored.mean()),
            "state_bytes": state_bytes.pop(), "piece": piece, "seconds": round(seconds, 1),
            "tokens_per_second": round(total / seconds)}


def depth_curve(result: dict) -> dict:
    """``{depth: {"accuracy", "ci"}}`` from a :func:`stream_needle` result, the shape
    :func:`~memorylib.figures.accuracy_curve_figure` draws."""
    d = result["by_depth"]
    return {depth: {"accuracy": a, "ci": [lo, hi]}
            for depth, a, lo, hi in zip(d["depth"], d["accuracy"], d["ci_low"], d["ci_high"])}


@torch.no_grad()
def sidecar_lifetimes(model, gen: NeedleStream, end: int | None = None, piece: int = 64) -> dict:
    """Which tokens entered the sidecar of ``model`` on the streams of ``gen``, and for how long
    they stayed, measured every ``piece`` tokens. Introduced in chapter 8.

    Returns numpy arrays, one entry per token that was ever cached: ``stream``, ``position``,
    ``token``, ``needle`` (bool: one of the needle cell's three tokens), ``lifetime`` (tokens from
    when it became readable, ``position + 1``, to the first check that found it gone; or to
    ``end`` if it was still there, then ``censored`` is True), and ``end``."""
    if getattr(model, "sidecar", 0) < 1:
        raise ValueError(f"{type(model).__name__} has no sidecar (sidecar={getattr(model, 'sidecar', None)!r})")
    end = gen.answer_position if end is None else end
    check_int("end", end, 1, gen.seq_len)
    state, first_seen, last_seen = None, {}, {}
    for lo in range(0, end, piece):
        hi = min(end, lo + piece)
        _, state = model.stream(gen.piece(lo, hi), state, last_only=True)
        for b, p in (state.sidecar.position >= 0).nonzero().tolist():
            pos = int(state.sidecar.position[b, p])
            first_seen.setdefault((b, pos), hi)
            last_seen[(b, pos)] = hi
    keys = sorted(first_seen)
    stream = np.array([b for b, _ in keys], dtype=int)
    position = np.array([p for _, p in keys], dtype=int)
    censored = np.array([last_seen[k] == end for k in keys], dtype=bool)
    # gone at the first check after the last one that saw it (the next piece's end), or still there at the end
    gone = np.array([end if last_seen[k] == end else min(end, last_seen[k] + piece) for k in keys], dtype=int)
    tokens = np.array([int(gen.piece(p, p + 1)[b, 0]) for b, p in keys], dtype=int)
    cell = gen.needle_cell.squeeze(1).numpy()[stream] * CELL
    needle = (gen.mode != "removed") & (position >= cell) & (position < cell + CELL)
    return {"stream": stream, "position": position, "token": tokens, "needle": needle,
            "lifetime": gone - (position + 1), "censored": censored, "end": end}
