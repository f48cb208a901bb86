"""The synthetic memory task suite. Introduced in chapter 1.

Every sequence is a row of 3-token *cells*:

* fact cell   ``SET k v``: key ``k`` now maps to value ``v``;
* query cell  ``ASK k v``: the model is scored on predicting ``v`` at the position of ``k``
  (``v`` is in the stream, teacher-forced, so later positions may use it);
* filler cell: three filler tokens, random or predictable.

Token ids (:class:`TokenLayout`, defaults): 0 PAD (reserved, never generated), 1 SET, 2 ASK,
keys 3..66, values 67..130, filler 131..162; ``vocab_size`` 163.

A :class:`Batch` carries, besides the tokens, where every answer is scored, the answer, how far
back its evidence lies (``distance``) and, for changing facts, the value that was overwritten
(``stale``). ``distance`` is the position of the scored key minus the position of the most recent
value token that states the answer (for multi-hop: the nearer of the two facts needed). A model
whose attention reaches ``w`` tokens back (itself included) cannot see evidence at distance >= w.

By default every answer's evidence lies at least :data:`DEFAULT_MIN_DISTANCE` tokens back, beyond
the receptive field of the default local transformer; each generator checks its own output.
All generation is vectorized over the batch and deterministic given a seed or a generator.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch

from .checks import check_choice, check_int, check_name

IGNORE = -100          #: ``targets`` value at positions that are not scored
CELL = 3               #: tokens per cell
MAX_SEQ_LEN = 1 << 20  #: longest sequence a task generates (a batch is held in memory at once)
MAX_STREAM_LEN = 1 << 26  #: longest stream: generated and fed piece by piece, never held whole
DEFAULT_MIN_DISTANCE = 48
"""Default minimum fact-to-query distance: three default local windows (16) and beyond the
31-token receptive field of the default two-layer local transformer."""


@dataclass(frozen=True)
class TokenLayout:
    """Which token ids mean what. Shared by every task so one model can see every task."""

    num_keys: int = 64
    num_values: int = 64
    num_filler: int = 32
    PAD: ClassVar[int] = 0
    SET: ClassVar[int] = 1
    ASK: ClassVar[int] = 2
    key_start: ClassVar[int] = 3

    def __post_init__(self):
        for name in ("num_keys", "num_values", "num_filler"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"TokenLayout.{name} must be an int >= 2, got {value!r}")

    @property
    def value_start(self) -> int:
        return self.key_start + self.num_keys

    @property
    def filler_start(self) -> int:
        return self.value_start + self.num_values

    @property
    def vocab_size(self) -> int:
        return self.filler_start + self.num_filler

    def is_key(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens >= self.key_start) & (tokens < self.value_start)

    def is_value(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens >= self.value_start) & (tokens < self.filler_start)

    def is_filler(self, tokens: torch.Tensor) -> torch.Tensor:
        return (tokens >= self.filler_start) & (tokens < self.vocab_size)

    def label(self, token: int) -> str:
        """A short human-readable name: ``SET``, ``ASK``, ``k12``, ``v7``, ``~3``."""
        token = int(token)
        if token == self.PAD:
            return "PAD"
        if token == self.SET:
            return "SET"
        if token == self.ASK:
            return "ASK"
        if token < self.value_start:
            return f"k{token - self.key_start}"
        if token < self.filler_start:
            return f"v{token - self.value_start}"
        if token < self.vocab_size:
            return f"~{token - self.filler_start}"
        raise ValueError(f"token {token} is outside the vocabulary [0, {self.vocab_size})")


@dataclass
class Batch:
    """One batch of a task. Shapes: ``(batch, seq_len)`` unless stated.

    tokens:   int64 token ids.
    targets:  int64, the answer at scored positions, :data:`IGNORE` elsewhere. The answer of a
              query at position ``t`` is ``tokens[t + 1]``.
    distance: int64, how far back the answer's evidence lies at scored positions, -1 elsewhere.
    stale:    int64, the overwritten (now wrong) value at scored positions where one exists,
              -1 elsewhere (changing facts only).
    extras:   per-example tensors ``(batch,)`` a task adds, e.g. the needle depth.
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    distance: torch.Tensor
    stale: torch.Tensor
    extras: dict = field(default_factory=dict)

    @property
    def answer_mask(self) -> torch.Tensor:
        return self.targets != IGNORE

    @property
    def num_answers(self) -> int:
        return int(self.answer_mask.sum())

    def __len__(self) -> int:
        return self.tokens.shape[0]


def derive_seed(seed: int, split: str) -> int:
    """A seed for one data split (``"train"``, ``"eval"``, ...) derived from a base seed.

    Training and evaluation draw from different derived seeds, so evaluation is held out.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    digest = hashlib.sha256(f"memorylib:{split}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63 - 1)


def make_generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int or a torch.Generator, got {seed!r}")
    return torch.Generator().manual_seed(seed)


FILLERS = ("random", "predictable", "markov")
"""Haystacks: uniform filler tokens; a cycle through the filler tokens (each token determined by
the one before); a Markov chain in which each filler token is followed by one of two successors
(:func:`markov_filler`: one bit per token, which a next-token head can learn)."""

MARKOV_SEED = 20261130     # the successor table is a property of the task, the same for every sequence


def markov_table(layout: TokenLayout) -> torch.Tensor:
    """``(num_filler, 2)`` the two successors (token ids) of every filler token of the Markov
    haystack: a fixed draw (seed :data:`MARKOV_SEED`), distinct from each other."""
    g = torch.Generator().manual_seed(MARKOV_SEED)
    n = layout.num_filler
    first = torch.randint(0, n, (n,), generator=g)
    second = (first + 1 + torch.randint(0, n - 1, (n,), generator=g)) % n
    return layout.filler_start + torch.stack([first, second], dim=1)


def markov_filler(batch: int, length: int, g: torch.Generator, layout: TokenLayout,
                  start: torch.Tensor | None = None) -> torch.Tensor:
    """``(batch, length)`` filler tokens of the Markov haystack: from ``start`` (``(batch,)`` the
    token before the first; default a uniform first token), each token one of its predecessor's two
    successors (:func:`markov_table`), with probability 1/2 each."""
    table = markov_table(layout)
    choice = torch.randint(0, 2, (batch, length), generator=g)
    out = torch.empty(batch, length, dtype=torch.long)
    if start is None:
        out[:, 0] = torch.randint(layout.filler_start, layout.vocab_size, (batch,), generator=g)
    else:
        out[:, 0] = table[start - layout.filler_start, choice[:, 0]]
    for t in range(1, length):
        out[:, t] = table[out[:, t - 1] - layout.filler_start, choice[:, t]]
    return out


def _gap_cells(min_distance: int) -> int:
    """Cells that must lie strictly between a fact cell and a query cell so that
    distance = 3 * (query_cell - fact_cell) - 1 >= min_distance."""
    return max(0, math.ceil((min_distance + 1) / CELL) - 1)


def _rand_perm(batch: int, n: int, g: torch.Generator) -> torch.Tensor:
    """``(batch, n)`` independent random permutations of ``range(n)``."""
    return torch.rand(batch, n, generator=g).argsort(dim=1)


def _choose_sorted(batch: int, low: int, high: int, k: int, g: torch.Generator) -> torch.Tensor:
    """``(batch, k)`` sorted distinct integers drawn uniformly from ``[low, high)``."""
    return (_rand_perm(batch, high - low, g)[:, :k] + low).sort(dim=1).values


class Task:
    """Base class: a task knows its sizes and samples :class:`Batch` es.

    Subclasses implement :meth:`_generate`. :meth:`sample` validates the batch size, generates,
    and checks the generator's own promise (every scored answer's evidence at least
    ``min_distance`` back, the answer equal to the next token).
    """

    name: ClassVar[str] = "task"

    def __init__(self, seq_len: int, min_distance: int, layout: TokenLayout | None, filler: str):
        self.layout = layout if layout is not None else TokenLayout()
        if not isinstance(self.layout, TokenLayout):
            raise ValueError(f"layout must be a TokenLayout, got {type(layout).__name__}")
        self.seq_len = check_int("seq_len", seq_len, CELL, MAX_SEQ_LEN)
        self.min_distance = check_int("min_distance", min_distance, 1)
        self.filler = check_choice("filler", filler, FILLERS)

    @property
    def num_cells(self) -> int:
        return self.seq_len // CELL

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    @property
    def chance(self) -> float:
        """Accuracy of guessing uniformly among the possible answers."""
        return 1.0 / self.layout.num_values

    def config(self) -> dict:
        out = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "layout"}
        out["layout"] = asdict(self.layout)
        return {"task": self.name, **out}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k not in ("task", "layout"))
        return f"{type(self).__name__}({args})"

    def _too_short(self, needed_cells: int, what: str):
        if needed_cells > self.num_cells:
            raise ValueError(
                f"seq_len={self.seq_len} is too short for {what}: it needs seq_len >= "
                f"{needed_cells * CELL} ({needed_cells} cells of {CELL} tokens)")

    def _filler(self, batch: int, g: torch.Generator) -> torch.Tensor:
        lay = self.layout
        if self.filler == "random":
            return torch.randint(lay.filler_start, lay.vocab_size, (batch, self.seq_len), generator=g)
        if self.filler == "markov":
            return markov_filler(batch, self.seq_len, g, lay)
        phase = torch.randint(0, lay.num_filler, (batch, 1), generator=g)
        pos = torch.arange(self.seq_len).unsqueeze(0)
        return lay.filler_start + (pos + phase) % lay.num_filler

    def _empty(self, batch: int, g: torch.Generator) -> Batch:
        shape = (batch, self.seq_len)
        return Batch(
            tokens=self._filler(batch, g),
            targets=torch.full(shape, IGNORE, dtype=torch.long),
            distance=torch.full(shape, -1, dtype=torch.long),
            stale=torch.full(shape, -1, dtype=torch.long),
        )

    @staticmethod
    def _write_cells(tokens: torch.Tensor, cells: torch.Tensor, marker: int,
                     first: torch.Tensor, second: torch.Tensor) -> None:
        """Write ``marker first second`` into cells ``(batch, n)`` of ``tokens`` in place."""
        pos = cells * CELL
        tokens.scatter_(1, pos, torch.full_like(pos, marker))
        tokens.scatter_(1, pos + 1, first)
        tokens.scatter_(1, pos + 2, second)

    @staticmethod
    def _score(b: Batch, query_cells: torch.Tensor, answers: torch.Tensor,
               distance: torch.Tensor, stale: torch.Tensor | None = None) -> None:
        pos = query_cells * CELL + 1
        b.targets.scatter_(1, pos, answers)
        b.distance.scatter_(1, pos, distance)
        if stale is not None:
            b.stale.scatter_(1, pos, stale)

    def sample(self, batch_size: int, seed: int | torch.Generator = 0) -> Batch:
        """A batch of ``batch_size`` sequences, deterministic given ``seed`` (or a generator)."""
        check_int("batch_size", batch_size, 1)
        g = make_generator(seed)
        b = self._generate(batch_size, g)
        self._self_check(b)
        return b

    def _generate(self, batch_size: int, g: torch.Generator) -> Batch:
        raise NotImplementedError

    def _self_check(self, b: Batch) -> None:
        mask = b.answer_mask
        if not bool(mask.any()):
            raise RuntimeError(f"{self.name}: generated a batch with no scored answer")
        if int(b.distance[mask].min()) < self.min_distance:
            raise RuntimeError(f"{self.name}: an answer's evidence lies closer than "
                               f"min_distance={self.min_distance}")
        nxt = torch.roll(b.tokens, -1, dims=1)
        if not torch.equal(b.targets[mask], nxt[mask]) or bool(mask[:, -1].any()):
            raise RuntimeError(f"{self.name}: an answer is not the next token")


class AssociativeLookup(Task):
    """Key-value records, then queries (multi-query associative recall, as in MQAR).

    ``num_pairs`` fact cells with distinct keys come first; ``num_queries`` query cells, each
    asking a different key, are spread at random over the rest of the sequence, never closer than
    ``min_distance`` to the fact they ask about. Every query's answer is scored.
    """

    name = "associative_lookup"

    def __init__(self, seq_len: int = 144, num_pairs: int = 8, num_queries: int = 8,
                 min_distance: int = DEFAULT_MIN_DISTANCE, filler: str = "random",
                 layout: TokenLayout | None = None):
        super().__init__(seq_len, min_distance, layout, filler)
        self.num_pairs = check_int("num_pairs", num_pairs, 1, self.layout.num_keys)
        self.num_queries = check_int("num_queries", num_queries, 1, num_pairs)
        self._first_query_cell = num_pairs + _gap_cells(min_distance)
        self._too_short(self._first_query_cell + num_queries,
                        f"num_pairs={num_pairs}, num_queries={num_queries}, min_distance={min_distance}")

    def _generate(self, batch_size, g):
        lay, n, q = self.layout, self.num_pairs, self.num_queries
        b = self._empty(batch_size, g)
        keys = _rand_perm(batch_size, lay.num_keys, g)[:, :n] + lay.key_start
        values = torch.randint(lay.value_start, lay.filler_start, (batch_size, n), generator=g)
        fact_cells = torch.arange(n).expand(batch_size, n)
        self._write_cells(b.tokens, fact_cells, lay.SET, keys, values)
        query_cells = _choose_sorted(batch_size, self._first_query_cell, self.num_cells, q, g)
        asked = _rand_perm(batch_size, n, g)[:, :q]          # which fact each query asks about
        answers = values.gather(1, asked)
        self._write_cells(b.tokens, query_cells, lay.ASK, keys.gather(1, asked), answers)
        self._score(b, query_cells, answers, (query_cells - asked) * CELL - 1)
        return b


class ChangingFacts(Task):
    """Keys are re-assigned over time; the latest value wins.

    ``num_phases`` phases, each: ``updates_per_phase`` fact cells over a small set of
    ``num_active_keys`` keys (every re-assignment changes the value), a gap of filler long enough
    for ``min_distance``, then ``queries_per_phase`` query cells asking distinct active keys. The
    first phase assigns every active key once before re-assigning. The value a query's answer
    overwrote is recorded in ``stale`` so a "stale answer" rate can be measured.

    A sequence longer than the phases need shares the spare filler among the phases' gaps, so the
    same facts and questions are spread over it (as :class:`LengthExtrapolation` promises).
    ``update_spacing`` puts that many cells between the starts of consecutive updates (1: one
    after the other, the default; 6: 18 tokens apart, so that a key restated in a phase is
    restated far from its earlier value, beyond a 16-token window).
    """

    name = "changing_facts"

    def config(self) -> dict:
        out = super().config()
        if out["update_spacing"] == 1:          # the default: records written before it existed stay equal
            del out["update_spacing"]
        return out

    def __init__(self, seq_len: int = 192, num_active_keys: int = 6, updates_per_phase: int = 12,
                 queries_per_phase: int = 4, num_phases: int = 2,
                 min_distance: int = DEFAULT_MIN_DISTANCE, filler: str = "random",
                 layout: TokenLayout | None = None, update_spacing: int = 1):
        super().__init__(seq_len, min_distance, layout, filler)
        self.update_spacing = check_int("update_spacing", update_spacing, 1)
        self.num_active_keys = check_int("num_active_keys", num_active_keys, 1, self.layout.num_keys)
        self.updates_per_phase = check_int("updates_per_phase", updates_per_phase, num_active_keys)
        self.queries_per_phase = check_int("queries_per_phase", queries_per_phase, 1, num_active_keys)
        self.num_phases = check_int("num_phases", num_phases, 1)
        self._phase_cells = ((updates_per_phase - 1) * update_spacing + 1 + _gap_cells(min_distance)
                             + queries_per_phase)
        self._too_short(num_phases * self._phase_cells,
                        f"num_phases={num_phases} x (updates_per_phase={updates_per_phase} "
                        f"spaced {update_spacing} cells apart + gap for "
                        f"min_distance={min_distance} + queries_per_phase={queries_per_phase})")

    def _generate(self, batch_size, g):
        lay, A, B = self.layout, self.num_active_keys, batch_size
        # a longer sequence than the phases need spreads them out: the spare cells of filler are
        # shared among the phases' gaps, so evidence lies farther back (length extrapolation)
        extra_gap = (self.num_cells - self.num_phases * self._phase_cells) // self.num_phases
        b = self._empty(B, g)
        keys = _rand_perm(B, lay.num_keys, g)[:, :A] + lay.key_start      # the active keys
        current = torch.full((B, A), -1, dtype=torch.long)    # current value of each active key
        previous = torch.full((B, A), -1, dtype=torch.long)   # the value it overwrote
        last_cell = torch.full((B, A), -1, dtype=torch.long)  # cell of the latest evidence
        rows = torch.arange(B)
        order = _rand_perm(B, A, g)        # the first phase assigns every key once, in this order
        cell = 0
        for phase in range(self.num_phases):
            for u in range(self.updates_per_phase):
                if phase == 0 and u < A:
                    which = order[:, u]
                else:
                    which = torch.randint(0, A, (B,), generator=g)
                old = current[rows, which]
                # a new value, uniform over the values; a re-assignment never repeats the old one
                fresh = lay.value_start + torch.randint(0, lay.num_values, (B,), generator=g)
                other = lay.value_start + torch.randint(0, lay.num_values - 1, (B,), generator=g)
                new = torch.where(old < 0, fresh, other + (other >= old).long())
                previous[rows, which] = old
                current[rows, which] = new
                last_cell[rows, which] = cell
                self._write_cells(b.tokens, torch.full((B, 1), cell), lay.SET,
                                  keys[rows, which].unsqueeze(1), new.unsqueeze(1))
                cell += self.update_spacing if u < self.updates_per_phase - 1 else 1
            cell += _gap_cells(self.min_distance) + extra_gap
            asked = _rand_perm(B, A, g)[:, :self.queries_per_phase]
            qcells = cell + torch.arange(self.queries_per_phase).expand(B, -1)
            answers = current.gather(1, asked)
            self._write_cells(b.tokens, qcells, lay.ASK, keys.gather(1, asked), answers)
            self._score(b, qcells, answers, (qcells - last_cell.gather(1, asked)) * CELL - 1,
                        previous.gather(1, asked))
            last_cell.scatter_(1, asked, qcells)   # the query's own answer is now evidence too
            cell += self.queries_per_phase
        return b


class NeedleRecall(Task):
    """One fact (the needle) hidden in a haystack, asked about in the last cell.

    ``filler="predictable"`` fills the haystack with a cycle through the filler tokens (each token
    predictable from the one before); ``filler="random"`` draws it uniformly. ``depth`` places the
    needle at a fraction of the way through the allowed range (0 = start of the sequence,
    1 = as late as ``min_distance`` allows); ``None`` draws it uniformly per example. The depth of
    each example is returned in ``batch.extras["depth"]``.
    """

    name = "needle_recall"

    def __init__(self, seq_len: int = 192, depth: float | None = None,
                 min_distance: int = DEFAULT_MIN_DISTANCE, filler: str = "predictable",
                 layout: TokenLayout | None = None):
        super().__init__(seq_len, min_distance, layout, filler)
        if depth is not None and not (isinstance(depth, (int, float)) and 0.0 <= depth <= 1.0):
            raise ValueError(f"depth must be None or a float in [0, 1], got {depth!r}")
        self.depth = depth
        self._too_short(2 + _gap_cells(min_distance), f"a needle at min_distance={min_distance}")
        self._last_needle_cell = self.num_cells - 2 - _gap_cells(min_distance)

    def _generate(self, batch_size, g):
        lay, B = self.layout, batch_size
        b = self._empty(B, g)
        top = self._last_needle_cell
        if self.depth is None:
            ncell = torch.randint(0, top + 1, (B, 1), generator=g)
        else:
            ncell = torch.full((B, 1), round(self.depth * top))
        key = torch.randint(lay.key_start, lay.value_start, (B, 1), generator=g)
        value = torch.randint(lay.value_start, lay.filler_start, (B, 1), generator=g)
        qcell = torch.full((B, 1), self.num_cells - 1)
        self._write_cells(b.tokens, ncell, lay.SET, key, value)
        self._write_cells(b.tokens, qcell, lay.ASK, key, value)
        self._score(b, qcell, value, (qcell - ncell) * CELL - 1)
        b.extras["depth"] = ncell.squeeze(1).float() / max(top, 1)
        return b


class MultiHop(Task):
    """Two-step lookup: facts ``A -> B`` and ``B -> C``; the query asks ``A``, the answer is ``C``.

    Entities are key tokens (a fact's second token is a key here, not a value). ``num_chains``
    chains with all-distinct entities are stated in random order at the start; ``num_queries``
    query cells ``ASK A C`` follow, each never closer than ``min_distance`` to either fact it needs.
    ``distance`` is measured to the nearer of the two facts.
    """

    name = "multi_hop"

    def __init__(self, seq_len: int = 168, num_chains: int = 4, num_queries: int = 4,
                 min_distance: int = DEFAULT_MIN_DISTANCE, filler: str = "random",
                 layout: TokenLayout | None = None):
        super().__init__(seq_len, min_distance, layout, filler)
        self.num_chains = check_int("num_chains", num_chains, 1, self.layout.num_keys // 3)
        self.num_queries = check_int("num_queries", num_queries, 1, num_chains)
        self._first_query_cell = 2 * num_chains + _gap_cells(min_distance)
        self._too_short(self._first_query_cell + num_queries,
                        f"num_chains={num_chains}, num_queries={num_queries}, min_distance={min_distance}")

    @property
    def chance(self) -> float:
        return 1.0 / self.layout.num_keys

    def _generate(self, batch_size, g):
        lay, n, B = self.layout, self.num_chains, batch_size
        b = self._empty(B, g)
        ent = (_rand_perm(B, lay.num_keys, g)[:, :3 * n] + lay.key_start).view(B, n, 3)
        # fact j < n is the first hop of chain j, fact n + j its second hop; cells shuffled
        firsts = torch.cat([ent[:, :, 0], ent[:, :, 1]], dim=1)
        seconds = torch.cat([ent[:, :, 1], ent[:, :, 2]], dim=1)
        fact_cell = _rand_perm(B, 2 * n, g)
        self._write_cells(b.tokens, fact_cell, lay.SET, firsts, seconds)
        qcells = _choose_sorted(B, self._first_query_cell, self.num_cells, self.num_queries, g)
        asked = _rand_perm(B, n, g)[:, :self.num_queries]
        latest = torch.maximum(fact_cell.gather(1, asked), fact_cell.gather(1, asked + n))
        answers = ent[:, :, 2].gather(1, asked)
        self._write_cells(b.tokens, qcells, lay.ASK, ent[:, :, 0].gather(1, asked), answers)
        self._score(b, qcells, answers, (qcells - latest) * CELL - 1)
        return b


class LengthExtrapolation:
    """An evaluation protocol: train a task at one length, evaluate it at multiples of it.

    ``train_task`` is the base task at ``seq_len``; :meth:`eval_task` the same task with every
    setting equal except a sequence ``factor`` times longer (more filler: the same facts and
    queries, spread over a longer stream, so evidence lies farther back). :meth:`sample` draws
    from ``train_task`` so the protocol can be trained on like any task.
    """

    name = "length_extrapolation"

    def __init__(self, base: str = "associative_lookup", seq_len: int = 144,
                 factors: tuple[int, ...] = (1, 2, 4, 8), **base_kwargs):
        if base == self.name:
            raise ValueError("length_extrapolation cannot wrap itself")
        if not factors or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in factors):
            raise ValueError(f"factors must be a non-empty tuple of ints >= 1, got {factors!r}")
        self.base, self.factors, self.base_kwargs = base, tuple(factors), dict(base_kwargs)
        self.train_task = _base_task(base, seq_len=seq_len, **base_kwargs)
        self.seq_len = seq_len
        self.layout = self.train_task.layout

    def eval_task(self, factor: int) -> Task:
        check_int("factor", factor, 1)
        return _base_task(self.base, seq_len=self.seq_len * factor, **self.base_kwargs)

    @property
    def vocab_size(self) -> int:
        return self.train_task.vocab_size

    @property
    def chance(self) -> float:
        return self.train_task.chance

    @property
    def min_distance(self) -> int:
        return self.train_task.min_distance

    def sample(self, batch_size: int, seed: int | torch.Generator = 0) -> Batch:
        return self.train_task.sample(batch_size, seed)

    def config(self) -> dict:
        return {"task": self.name, "base": self.base, "seq_len": self.seq_len,
                "factors": list(self.factors), **self.base_kwargs}

    def __repr__(self) -> str:
        return f"LengthExtrapolation(base={self.base!r}, seq_len={self.seq_len}, factors={self.factors})"


class TaskMixture:
    """Batches drawn from several tasks: each :meth:`sample` call picks one task at random
    (by ``weights``) and returns a whole batch of it, so sequence lengths may differ between batches.

    Used to train on a spread of distances (chapter 1: short and long associative lookup).
    """

    name = "mixture"

    def __init__(self, tasks: list, weights: list[float] | None = None):
        if not tasks or not all(isinstance(t, Task) for t in tasks):
            raise ValueError("tasks must be a non-empty list of Task objects")
        if len({t.layout for t in tasks}) != 1:
            raise ValueError("all tasks of a mixture must share one TokenLayout")
        weights = [1.0] * len(tasks) if weights is None else list(weights)
        if len(weights) != len(tasks) or any(not w >= 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be {len(tasks)} non-negative numbers with a positive sum, got {weights!r}")
        self.tasks, self.weights = list(tasks), weights
        self.layout = tasks[0].layout

    @property
    def vocab_size(self) -> int:
        return self.layout.vocab_size

    @property
    def chance(self) -> float:
        return min(t.chance for t in self.tasks)

    @property
    def min_distance(self) -> int:
        return min(t.min_distance for t in self.tasks)

    def sample(self, batch_size: int, seed: int | torch.Generator = 0) -> Batch:
        g = make_generator(seed)
        which = int(torch.multinomial(torch.tensor(self.weights, dtype=torch.float), 1, generator=g))
        return self.tasks[which].sample(batch_size, g)

    def config(self) -> dict:
        return {"task": self.name, "tasks": [t.config() for t in self.tasks], "weights": self.weights}

    def __repr__(self) -> str:
        return f"TaskMixture({self.tasks!r}, weights={self.weights})"


def reference_labels(tokens: torch.Tensor, layout: TokenLayout | None = None, hops: int = 1):
    """Re-derive answers and distances from a token stream with a plain Python loop.

    An independent check on the vectorized generators (used by the tests and chapter 1): walk the
    cells, keep a dictionary of the latest value of every key (and where it was last stated), and
    at each ``ASK k`` follow ``hops`` lookups. Returns ``(targets, distance)`` like a
    :class:`Batch`. ``tokens``: ``(batch, seq_len)``.
    """
    layout = layout or TokenLayout()
    targets = torch.full_like(tokens, IGNORE)
    distance = torch.full_like(tokens, -1)
    for i, row in enumerate(tokens.tolist()):
        value_of, stated_at = {}, {}
        for c in range(len(row) // CELL):
            marker, k, v = row[CELL * c: CELL * c + CELL]
            if marker == layout.ASK:
                node, near = k, None
                for _ in range(hops):
                    near = stated_at[node] if near is None else max(near, stated_at[node])
                    node = value_of[node]
                targets[i, CELL * c + 1] = node
                distance[i, CELL * c + 1] = CELL * c + 1 - near
                if hops == 1:      # a stated answer is evidence for later queries
                    stated_at[k] = CELL * c + 2
            if marker == layout.SET:
                value_of[k], stated_at[k] = v, CELL * c + 2
    return targets, distance


TASKS = {cls.name: cls for cls in (AssociativeLookup, ChangingFacts, NeedleRecall, MultiHop, LengthExtrapolation)}
"""The tasks of the book by name (:mod:`memorylib.registry` builds them: ``build_task("changing_facts")``)."""


def _base_task(name: str, **kwargs) -> Task:
    """A base task of :class:`LengthExtrapolation` by name, from :data:`TASKS`."""
    return check_name("task", name, TASKS)(**kwargs)
