"""The needle family: keyed recall among distractors in streams of any length. Introduced in chapter 7.

The single needle (:mod:`memorylib.streaming`) is the easiest member of the family that long-context
work evaluates: with one value in the stream, "copy the one value I saw" answers it without knowing
which key was asked. The family asks more, in the RULER style, always with the key that decides:

* ``"single"``: one needle ``SET k v``, asked once;
* ``"multi_key"``: ``num_needles`` needles with distinct keys and distinct values; one is asked;
* ``"multi_query"``: the same needles; ``num_queries`` of them are asked in turn;
* ``"multi_value"``: ``1 + num_distractors`` keys, each stated ``num_needles`` times with
  distinct values; one key is asked ``num_needles`` times and the i-th answer is its i-th value.
  Once the first answer has been given the key is in the stream, so only the first question is
  keyed: the floor says so;
* ``"update"``: ``num_needles`` keys, each stated in the first third of the stream and stated again
  with a new value in the last third; one is asked, its latest value is the answer and the earlier
  one is recorded as ``stale``. Every key is updated, so which key changed does not give the
  answer away.

Needles sit at distinct cells spread over the stream (their positions drawn uniformly, or at given
depths of the asked needle); the questions fill the last cells. The haystack is never a short
cycle: ``"random"`` (uniform filler tokens) or ``"markov"`` (each filler token one of two fixed
successors, :func:`memorylib.tasks.markov_filler`: structure a next-token head can learn). A stream
is generated one piece at a time in blocks of 4,096 tokens, each from its own seed (and, for the
Markov haystack, from the last token of the block before), so any split into pieces gives the same
tokens and 256K tokens never exist in memory whole.

Every stream records, per question, its answer (``targets``), the values of the other needles
(to count answers that took another needle's value), the overwritten value (``stale``) and the
answer of the keyless floor (:mod:`memorylib.floors`: the best strategy that ignores the asked
key), so that a score is read against the floor and not against 1/64.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_int
from .knobs import eval_mode
from .stats import wilson_interval
from .tasks import (
    CELL,
    DEFAULT_MIN_DISTANCE,
    IGNORE,
    MAX_STREAM_LEN,
    Batch,
    Task,
    TokenLayout,
    _gap_cells,
    make_generator,
    markov_filler,
)

VARIANTS = ("single", "multi_key", "multi_query", "multi_value", "update")
HAYSTACKS = ("random", "markov")
CONTROLS = ("removed", "shuffled")     # leakage controls: the first asked needle gone, or carrying another value
BLOCK = 4096            # tokens generated at once, each block from its own seed


class NeedleFamilyStream:
    """``batch_size`` streams of ``seq_len`` tokens of one variant of the needle family (module
    docstring), generated piece by piece with :meth:`piece`.

    ``depths`` (optional): one number in [0, 1] per stream, where the asked needle sits (0: the
    first cell, 1: as late as ``min_distance`` before the first question allows); None draws every
    needle's cell uniformly. Attributes: ``query_positions`` (the positions of the asked keys, where
    answers are scored, in order), ``targets``, ``stale`` (-1 where none), ``others`` (the values of
    the needles not asked, per stream), ``keyless`` (the keyless floor's answer to every question),
    all ``(batch_size, num_questions)`` tensors except ``others`` (a list of sets), and ``depth``
    ``(batch_size,)`` of the first asked needle.

    ``control`` (a leakage control, the same stream otherwise): ``"removed"`` leaves the first asked
    needle's cell to the haystack; ``"shuffled"`` gives it a value that no needle of the stream
    carries (``stored_value``). The targets stay, so the first answer appears nowhere before the
    first question.
    """

    def __init__(self, variant: str, seq_len: int, batch_size: int, *, num_needles: int = 1,
                 num_queries: int = 1, num_distractors: int = 0, seed: int = 0, depths=None,
                 haystack: str = "markov", min_distance: int = DEFAULT_MIN_DISTANCE,
                 layout: TokenLayout | None = None, control: str | None = None):
        self.variant = check_choice("variant", variant, VARIANTS)
        self.control = None if control is None else check_choice("control", control, CONTROLS)
        self.haystack = check_choice("haystack", haystack, HAYSTACKS)
        self.layout = lay = layout if layout is not None else TokenLayout()
        self.seq_len = check_int("seq_len", seq_len, CELL, MAX_STREAM_LEN)
        B = self.batch_size = check_int("batch_size", batch_size, 1)
        N = check_int("num_needles", num_needles, 1, lay.num_values)
        if variant == "single" and N != 1:
            raise ValueError(f"the single needle has num_needles=1, got {num_needles}")
        if variant in ("multi_key", "multi_query", "update") and N < 2:
            raise ValueError(f"{variant} needs num_needles >= 2 (a needle and a distractor), got {num_needles}")
        D = check_int("num_distractors", num_distractors, 0, lay.num_keys - 1)
        if D and variant != "multi_value":
            raise ValueError(f"num_distractors applies to multi_value only (the other variants' needles are the "
                             f"distractors), got {num_distractors} for {variant}")
        self.targets_per_key = N if variant == "multi_value" else 1
        self.num_needles, self.num_distractors = N, D
        Q = {"single": 1, "multi_key": 1, "update": 1, "multi_value": N,
             "multi_query": check_int("num_queries", num_queries, 1, N)}[variant]
        stated = {"multi_value": N * (1 + D), "update": 2 * N}.get(variant, N)     # SET cells in a stream
        distinct = {"multi_value": 1 + D, "update": N}.get(variant, N)
        if distinct > lay.num_keys or stated > lay.num_values:
            raise ValueError(f"{stated} needles need {distinct} distinct keys and {stated} distinct values; the "
                             f"layout has {lay.num_keys} and {lay.num_values}")
        num_cells = self.seq_len // CELL
        top = num_cells - Q - 1 - _gap_cells(check_int("min_distance", min_distance, 1))
        if top + 1 < stated:
            raise ValueError(f"seq_len={seq_len} is too short for {stated} needles and {Q} questions at "
                             f"min_distance={min_distance}")
        g = make_generator(seed)
        keys = torch.rand(B, lay.num_keys, generator=g).argsort(1)[:, :stated] + lay.key_start
        perm = torch.rand(B, lay.num_values, generator=g).argsort(1)
        values = perm[:, :stated] + lay.value_start
        if control == "shuffled" and stated >= lay.num_values:
            raise ValueError(f"the shuffled control needs a value no needle carries; {stated} needles use all "
                             f"{lay.num_values}")
        if variant == "multi_value":                                  # needle j * N + i: key j's i-th value
            keys = keys[:, :1 + D].repeat_interleave(N, dim=1)
        if variant == "update":                                      # needle i and N + i: key i, then again
            keys = keys[:, :N].repeat(1, 2)
        if variant == "multi_query":
            asked = torch.stack([torch.randperm(N, generator=g)[:Q] for _ in range(B)])
        elif variant == "multi_key":
            asked = torch.randint(0, N, (B, 1), generator=g)
        elif variant == "multi_value":
            asked = torch.randint(0, 1 + D, (B, 1), generator=g) * N + torch.arange(N)
        elif variant == "update":
            asked = N + torch.randint(0, N, (B, 1), generator=g)      # the restatement holds the answer
        else:
            asked = torch.zeros(B, 1, dtype=torch.long)
        want = None
        if depths is not None:
            d = torch.as_tensor(depths, dtype=torch.float64).reshape(-1)
            if d.shape != (B,) or not bool(((d >= 0) & (d <= 1)).all()):
                raise ValueError(f"depths must be {B} numbers in [0, 1], got {depths!r}")
            want = (d * top).round().long()
        cells = torch.empty(B, stated, dtype=torch.long)
        for b in range(B):
            cells[b] = self._cells(stated, top, g, int(asked[b, 0]), None if want is None else int(want[b]))
        self.keys, self.values, self.cells = keys, values, cells
        self.query_cells = num_cells - Q + torch.arange(Q)
        self.asked_index = asked
        self.asked_keys = keys.gather(1, asked)
        self.targets = values.gather(1, asked)
        self.stale = values.gather(1, asked - N) if variant == "update" else torch.full((B, Q), -1, dtype=torch.long)
        self.depth = cells.gather(1, asked[:, :1]).squeeze(1).double() / max(top, 1)
        self.others = [set(values[b].tolist()) - set(self.targets[b].tolist()) for b in range(B)]
        self._block_seed = int(torch.randint(0, 2 ** 62, (1,), generator=g))
        self._last_block = None                                      # (index, tokens) for the Markov chain
        self.keyless = self._keyless()
        # what the stream shows: under a control, the first asked needle is gone, or carries the spare value
        first = asked[:, :1]
        self.shown = torch.ones(B, stated, dtype=torch.bool)
        self.shown_values = values.clone()
        if control == "removed":
            self.shown.scatter_(1, first, False)
        elif control == "shuffled":                                  # the next value of the draw: no needle's
            self.shown_values.scatter_(1, first, perm[:, stated:stated + 1] + lay.value_start)
        self.stored_value = self.shown_values.gather(1, first).squeeze(1) if control == "shuffled" else None

    def _cells(self, stated: int, top: int, g: torch.Generator, asked: int, want: int | None) -> torch.Tensor:
        """The cells of one stream's ``stated`` needles, distinct, in ``[0, top]``: a key of
        multi-value states its values in time order; the update states every key in the first third
        and again in the last; ``want`` puts the asked needle at that cell."""
        pool = torch.randperm(top + 1, generator=g).tolist()
        if self.variant == "update":
            n = stated // 2
            late_start = min(top + 1 - n, 2 * (top + 1) // 3)
            early = [c for c in pool if c < max(n, (top + 1) // 3)][:n]
            late = [c for c in pool if c >= late_start and c not in early][:n]
            if want is not None:                      # the asked key's latest statement, in the last third
                w, j = max(want, late_start), asked - n
                if w in late:
                    k = late.index(w)
                    late[k], late[j] = late[j], late[k]
                elif w not in early:
                    late[j] = w
            return torch.tensor(early + late)
        if want is not None:
            pool = [want] + [c for c in pool if c != want]
        chosen = pool[:stated]
        if want is not None:
            chosen[0], chosen[asked] = chosen[asked], chosen[0]
        if self.variant == "multi_value":
            n = self.targets_per_key
            for j in range(0, stated, n):
                chosen[j:j + n] = sorted(chosen[j:j + n])
        return torch.tensor(chosen)

    def _keyless(self) -> torch.Tensor:
        """The answer of the best strategy that ignores the asked key, to every question. The asked
        key (or, for multi-value, the asked key's value sequence) is uniform among those not yet
        asked, so any fixed choice among them is as good as any other: it takes the first-stated
        candidate and answers its latest value (multi-value: its q-th value). What earlier questions
        put in the stream (their keys and answers) is used: after multi-value's first answer, the
        key is known."""
        out = torch.empty_like(self.targets)
        for b in range(self.batch_size):
            order = self.cells[b].argsort().tolist()                # needles in time order
            keys, values = self.keys[b].tolist(), self.values[b].tolist()
            latest = {}
            for i in order:
                latest[keys[i]] = values[i]
            asked_before = set()
            for q in range(self.targets.shape[1]):
                if self.variant == "multi_value":
                    key = int(self.asked_keys[b, 0]) if q > 0 else keys[order[0]]
                    mine = [values[i] for i in order if keys[i] == key]
                    out[b, q] = mine[q]
                else:
                    candidates = [k for k in dict.fromkeys(keys[i] for i in order) if k not in asked_before]
                    out[b, q] = latest[candidates[0]]
                asked_before.add(int(self.asked_keys[b, q]))
        return out

    @property
    def query_positions(self) -> torch.Tensor:
        """``(num_questions,)`` positions of the asked keys: the answer is the token after each."""
        return self.query_cells * CELL + 1

    @property
    def answer_end(self) -> int:
        """Tokens to feed so that every question's answer can be read: up to the last asked key."""
        return int(self.query_positions[-1]) + 1

    def _block(self, index: int) -> torch.Tensor:
        lay, B = self.layout, self.batch_size

        def generator(i):
            return make_generator((self._block_seed + i * 1_000_003) % 2 ** 62)

        if self.haystack == "random":
            return torch.randint(lay.filler_start, lay.vocab_size, (B, BLOCK), generator=generator(index))
        if self._last_block is None or self._last_block[0] > index:
            self._last_block = (-1, None)
        while self._last_block[0] < index:                           # the chain runs on from block to block
            i, prev = self._last_block
            tokens = markov_filler(B, BLOCK, generator(i + 1), lay, start=None if prev is None else prev[:, -1])
            self._last_block = (i + 1, tokens)
        return self._last_block[1]

    def piece(self, lo: int, hi: int) -> torch.Tensor:
        """Tokens ``[lo, hi)`` of every stream: ``(batch_size, hi - lo)`` int64. Any split of a
        stream into pieces gives the same tokens (read them in order: the Markov haystack is
        generated forward)."""
        if not 0 <= lo < hi <= self.seq_len:
            raise ValueError(f"a piece must satisfy 0 <= lo < hi <= {self.seq_len}, got [{lo}, {hi})")
        lay, B = self.layout, self.batch_size
        tokens = torch.empty(B, hi - lo, dtype=torch.long)
        for index in range(lo // BLOCK, (hi - 1) // BLOCK + 1):
            block = self._block(index)
            a, b = max(lo, index * BLOCK), min(hi, (index + 1) * BLOCK)
            tokens[:, a - lo:b - lo] = block[:, a - index * BLOCK:b - index * BLOCK]
        marks = [(self.cells, lay.SET, self.keys, self.shown_values, self.shown),
                 (self.query_cells.expand(B, -1), lay.ASK, self.asked_keys, self.targets, None)]
        for cells, marker, first, second, shown in marks:
            for offset, tok in enumerate((torch.full_like(first, marker), first, second)):
                p = cells * CELL + offset - lo
                inside = (p >= 0) & (p < hi - lo)
                if shown is not None:
                    inside &= shown
                rows, cols = inside.nonzero(as_tuple=True)
                tokens[rows, p[rows, cols]] = tok[rows, cols]
        return tokens


def cached_needles(state, gen: NeedleFamilyStream) -> np.ndarray | None:
    """``(B,)`` bool: is the value token of each stream's first asked needle among the positions a
    streaming state's sidecar holds (``state.sidecar.position``)? None for a state without a
    sidecar. Read before the first question (the state after the last piece of haystack), it tells
    eviction (the needle was dropped) from read-out (it was kept, and the answer still missed)."""
    side = getattr(state, "sidecar", None)
    if side is None:
        return None
    value_pos = gen.cells.gather(1, gen.asked_index[:, :1]) * CELL + 2            # SET k v: v is third
    return (side.position == value_pos).any(1).numpy()


@torch.no_grad()
def stream_family(model, variant: str, seq_len: int, trials: int, *, num_needles: int = 1, num_queries: int = 1,
                  num_distractors: int = 0, haystack: str = "markov", num_depths: int = 10, piece: int = 256,
                  batch_size: int = 50, seed: int = 0, min_distance: int = DEFAULT_MIN_DISTANCE,
                  control: str | None = None, progress: bool = False, digits: int = 4) -> dict:
    """One variant of the needle family at ``seq_len`` tokens over ``trials`` streams, fed in pieces
    of ``piece`` tokens through ``model.stream`` with its carried state; the questions at the end
    are read in one last piece. Every needle's cell is drawn uniformly, the asked one's like the
    others': a fixed grid of depths for the asked needle would tell a strategy that ignores the key
    which needle is asked (the one on a grid cell), and the floor would no longer be 1/N.
    ``by_depth`` bins the first asked needle's depth into ``num_depths`` equal bins.

    Returns ``accuracy`` over every question with a Wilson 95 % interval, ``first_accuracy`` (the
    first question of each stream), ``by_depth``, ``other_needle_rate`` (answers that gave the
    value of a needle that was not asked), ``stale_rate`` (update: answers that gave the overwritten
    value; None otherwise), ``floor`` (the keyless floor's accuracy on the same streams, with its
    interval), ``chance`` (1/64), ``state_bytes`` per stream, ``value_cached`` (for a model with a
    sidecar: the share of streams whose first asked needle's value token is in the sidecar when the
    first question is asked, :func:`cached_needles`; None without a sidecar or with the needle
    removed) and ``seconds``.

    ``control`` runs a leakage control on the same streams (:class:`NeedleFamilyStream`): with the
    first asked needle ``"removed"`` or carrying a value no needle has (``"shuffled"``), its answer
    appears nowhere before the first question, so a causal model's ``first_accuracy`` is at chance
    (1/64) or below; ``stored_value_rate`` (shuffled only) is the share of first answers that gave
    the value the needle carried instead."""
    check_int("trials", trials, 1)
    check_int("num_depths", num_depths, 2)
    check_int("piece", piece, 1)
    check_int("batch_size", batch_size, 1)
    if not hasattr(model, "stream"):
        raise ValueError(f"{type(model).__name__} has no stream method; streaming needs a model of constant state")
    edges = np.linspace(0.0, 1.0, num_depths + 1)
    correct, other, stale, floor, depth, kept, stored = [], [], [], [], [], [], []
    state_bytes = set()
    start = time.perf_counter()
    with eval_mode(model):
        bar = tqdm(total=trials, disable=not progress, desc=f"{variant}, {seq_len} tokens", mininterval=1.0)
        for b_i, lo_t in enumerate(range(0, trials, batch_size)):
            hi_t = min(trials, lo_t + batch_size)
            gen = NeedleFamilyStream(variant, seq_len, hi_t - lo_t, num_needles=num_needles, num_queries=num_queries,
                                     num_distractors=num_distractors, seed=seed * 100003 + b_i,
                                     haystack=haystack, min_distance=min_distance,
                                     control=control)
            q0, state = int(gen.query_positions[0]), None
            for lo in range(0, q0, piece):
                _, state = model.stream(gen.piece(lo, min(q0, lo + piece)), state, last_only=True)
            # what the first question will read (nothing to hold when the needle is removed)
            kept.append(None if control == "removed" else cached_needles(state, gen))
            logits, state = model.stream(gen.piece(q0, gen.answer_end), state)
            pred = logits[:, gen.query_positions - q0].argmax(-1)                       # (B, Q)
            correct.append((pred == gen.targets).numpy())
            stale.append((pred == gen.stale).numpy())
            if gen.stored_value is not None:
                stored.append((pred[:, 0] == gen.stored_value).numpy())
            floor.append((gen.keyless == gen.targets).numpy())
            other.append(np.array([[int(p) in gen.others[b] for p in row] for b, row in enumerate(pred.tolist())]))
            depth.append(gen.depth.numpy())
            state_bytes.add(state.nbytes() // (hi_t - lo_t))
            bar.update(hi_t - lo_t)
        bar.close()
    correct, stale, floor, other = (np.concatenate(x) for x in (correct, stale, floor, other))
    kept = None if kept[0] is None else np.concatenate(kept)
    depth = np.concatenate(depth)
    r = lambda x: round(float(x), digits)  # noqa: E731

    def rate(hits):
        k, n = int(hits.sum()), int(hits.size)
        lo, hi = wilson_interval(k, n)
        return {"accuracy": r(k / n), "ci": [r(lo), r(hi)], "n": n}

    by_depth = {"depth": [], "n": [], "accuracy": [], "ci_low": [], "ci_high": []}
    which = np.clip(np.digitize(depth, edges[1:-1]), 0, num_depths - 1)     # bin of each stream's depth
    for b in range(num_depths):
        sel = which == b
        if sel.any():
            res = rate(correct[sel, 0])
            centre = (edges[b] + edges[b + 1]) / 2
            for key, val in zip(by_depth, (r(centre), res["n"], res["accuracy"], *res["ci"])):
                by_depth[key].append(val)
    if len(state_bytes) != 1:
        raise AssertionError(f"the carried state changed size between batches: {sorted(state_bytes)} bytes")
    overall, head = rate(correct), rate(correct[:, 0])
    return {"variant": variant, "seq_len": seq_len, "haystack": haystack, "trials": trials,
            "num_needles": num_needles, "num_queries": correct.shape[1], "num_distractors": num_distractors,
            "accuracy": overall["accuracy"], "ci": overall["ci"], "first_accuracy": head["accuracy"],
            "first_ci": head["ci"], "by_depth": by_depth, "other_needle_rate": r(other.mean()),
            "stale_rate": r(stale.mean()) if variant == "update" else None, "floor": rate(floor),
            "chance": r(1 / TokenLayout().num_values), "state_bytes": state_bytes.pop(),
            "value_cached": None if kept is None else r(kept.mean()), "control": control,
            "stored_value_rate": r(np.concatenate(stored).mean()) if stored else None,
            "seconds": round(time.perf_counter() - start, 1),
            "outcomes": "".join("1" if c else "0" for c in correct[:, 0])}


class NeedleFamily(Task):
    """A variant of the needle family as a task to train and evaluate on (short sequences; for long
    streams use :class:`NeedleFamilyStream` itself): ``sample(batch, seed)`` gives a
    :class:`~memorylib.tasks.Batch` whose scored answers are the questions' (``stale``: update's
    overwritten value; ``distance``: tokens back to the asked needle's value). Registered as
    ``needle_family``: ``build_task("needle_family", variant="multi_key", num_needles=8)``."""

    name = "needle_family"

    def __init__(self, variant: str = "multi_key", seq_len: int = 192, num_needles: int = 4, num_queries: int = 1,
                 num_distractors: int = 0, filler: str = "markov", min_distance: int = DEFAULT_MIN_DISTANCE,
                 layout: TokenLayout | None = None):
        super().__init__(seq_len, min_distance, layout, check_choice("filler", filler, HAYSTACKS))
        self.variant, self.num_needles, self.num_queries = variant, num_needles, num_queries
        self.num_distractors = num_distractors
        self._stream(1, 0)                                   # checks every argument now

    def _stream(self, batch_size: int, seed) -> NeedleFamilyStream:
        return NeedleFamilyStream(self.variant, self.seq_len, batch_size, num_needles=self.num_needles,
                                  num_queries=self.num_queries, num_distractors=self.num_distractors,
                                  seed=seed, haystack=self.filler, min_distance=self.min_distance,
                                  layout=self.layout)

    def _generate(self, batch_size: int, g: torch.Generator) -> Batch:
        gen = self._stream(batch_size, int(torch.randint(0, 2 ** 62, (1,), generator=g)))
        tokens = gen.piece(0, gen.seq_len)
        b = Batch(tokens=tokens, targets=torch.full_like(tokens, IGNORE), distance=torch.full_like(tokens, -1),
                  stale=torch.full_like(tokens, -1))
        query_cells = gen.query_cells.expand(batch_size, -1)
        value_cells = gen.cells.gather(1, gen.asked_index)
        self._score(b, query_cells, gen.targets, (query_cells - value_cells) * CELL - 1, gen.stale)
        return b


TASKS = {NeedleFamily.name: NeedleFamily}
