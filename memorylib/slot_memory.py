"""Slot memory: a fixed number of slots, read and written by content. Introduced in chapter 2
(the erase gate and the write policies are the subject of chapter 3).

The state of one sequence is ``num_slots`` rows, each a key (what the slot is addressed by) and a
value (what a read returns), plus a per-slot ``age``. Shapes, for a batch::

    keys, values: (batch, num_slots, slot_dim)      age: (batch, num_slots)

At every token ``t`` the memory first **reads**, then **writes** (so the read at ``t`` sees only
what tokens ``< t`` wrote, and the features it is given depend only on tokens ``<= t``):

* read: per head, ``w_r = softmax(beta * cos(q_t, keys))`` over all slots (dense) or over the
  ``top_k`` best slots (sparse); ``r_t = rho_t * norm(w_r @ values)`` with a learned read gate
  ``rho_t`` (``norm``: zero mean and unit variance over ``slot_dim``, :meth:`SlotMemory.gated_reads`).
* write: an address ``w_w`` chosen by the write policy, a write gate ``g_t`` and an erase gate
  ``e_t``; keys and values are updated by *erase-then-add*::

      M <- M * (1 - g_t e_t w_w) + g_t w_w a_t        (a_t = k_t for keys, v_t for values)

  ``e = 1`` replaces what the slot held, ``e = 0`` adds on top of it (the ``no_forget`` ablation),
  ``g = 0`` leaves memory untouched.
* age: ``age <- (age + 1) * (1 - g_t w_w) * (1 - rho_t w_r)``: tokens since the slot was last
  written or read (a soft count: a half-strength write halves it).

Write policies (``write_policy``):

* ``"content"``: ``w_w = gamma_t * lru + (1 - gamma_t) * softmax(beta_w * cos(k_t, keys))``, a
  mix of "the slot that already holds this key" and "the least recently used slot" (``lru``:
  one-hot on the slot with the largest ``age``), as in the allocation of the differentiable
  neural computer (Graves et al. 2016). The mix looks at the memory itself:
  ``gamma_t = sigmoid(l_t + 10 * (theta - m_t))`` with ``m_t = max cos(k_t, keys)`` the best
  match, ``theta`` a learned threshold and ``l_t`` a learned per-token logit. A key already
  stored (``m_t > theta``) is written back onto its slot, where the erase gate can replace the
  old value; a new key goes to a fresh slot;
* ``"content_only"``: ``softmax(beta_w * cos(k_t, keys))`` alone, with no allocation path. Its
  slots start from small random keys (fixed by ``seed``) so that they can be told apart; it is
  the policy prone to *addressing collapse* (a few slots attract every write), which the
  utilization loss is meant to fight (chapter 2);
* ``"lru"``: always the least recently used slot (largest ``age``);
* ``"fifo"``: round robin; the pointer advances by the write strength ``g_t`` after each token;
* ``"random"``: a slot drawn uniformly per position, from a generator seeded by ``seed`` at every
  call: the same draws for every sequence of a batch, so a sequence's slots depend on its
  positions only (causal, and independent of its row in the batch and of the batch's size).

Slot choice by ``lru``, ``fifo`` and ``random`` is a hard one-hot choice that gradients do not
flow through; the gates and contents they write are still learned.

Bounds (tested): ``a_t = tanh(...)``, so if every entry of memory is at most ``B >= 1`` in size,
after a step it is at most ``B + g_t w_w (1 - e_t)``. A memory that always erases fully stays in
``[-1, 1]``; one that never erases can grow only by the write mass it adds.

Known limitation (a strict xfail in ``tests/test_slot_memory.py``): the content half of a
``"content"`` write leaves a faint copy of each key in the slots it does not target, and cosine
ignores scale, so in an otherwise empty slot that copy matches the key as well as the key's real
slot does. Trained models work around it (chapter 3: 0.4 % stale answers), but a score that
weighs a match by how much was written into the slot would be cleaner; changing it changes every
trained model and the sweeps behind chapters 2 and 3.

The pure functions :func:`cosine_scores`, :func:`address`, :func:`read` and :func:`write` are the
pieces chapter 2 builds cell by cell; :class:`SlotMemory` runs them over a sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_choice, check_int, check_number

WRITE_POLICIES = ("content", "content_only", "lru", "fifo", "random")
MATCH_SCALE = 10.0   #: how sharply the "content" policy switches between its match and a fresh slot


# --- the pieces ----------------------------------------------------------------------------


def cosine_scores(queries: torch.Tensor, keys: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Cosine similarity of every query with every slot key.

    queries: (batch, heads, slot_dim); keys: (batch, num_slots, slot_dim) -> (batch, heads, num_slots).
    An all-zero (empty) key scores 0 against every query.
    """
    q = queries / queries.norm(dim=-1, keepdim=True).clamp_min(eps)
    k = keys / keys.norm(dim=-1, keepdim=True).clamp_min(eps)
    return q @ k.transpose(-1, -2)


def address(scores: torch.Tensor, sharpness: torch.Tensor | float, top_k: int | None = None) -> torch.Tensor:
    """Addressing weights from scores: ``softmax(sharpness * scores)`` over the last dimension,
    restricted to the ``top_k`` highest scores when ``top_k`` is set (the others get weight 0).

    scores: (..., num_slots); sharpness broadcasts against ``scores[..., :1]``. Rows sum to 1.
    """
    logits = sharpness * scores
    if top_k is None or top_k >= scores.shape[-1]:
        return torch.softmax(logits, dim=-1)
    top, idx = logits.topk(top_k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, idx, torch.softmax(top, dim=-1))


def read(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Weighted sum of slot values. weights: (batch, heads, num_slots); values:
    (batch, num_slots, slot_dim) -> (batch, heads, slot_dim)."""
    return weights @ values


def write(memory: torch.Tensor, weights: torch.Tensor, gate: torch.Tensor, erase: torch.Tensor,
          content: torch.Tensor) -> torch.Tensor:
    """Erase-then-add: ``memory * (1 - gate * erase * weights) + gate * weights * content``.

    memory: (batch, num_slots, slot_dim); weights: (batch, num_slots); gate, erase: (batch,);
    content: (batch, slot_dim). Returns the new memory (the input is not modified).
    """
    strength = (gate[:, None] * weights)[..., None]                 # (batch, num_slots, 1)
    return memory * (1 - strength * erase[:, None, None]) + strength * content[:, None, :]


@dataclass
class SlotState:
    """The memory of a batch of sequences: keys and values ``(batch, num_slots, slot_dim)``,
    age ``(batch, num_slots)``, and the round-robin pointer ``(batch,)`` (float: the write mass
    written so far)."""

    keys: torch.Tensor
    values: torch.Tensor
    age: torch.Tensor
    pointer: torch.Tensor

    @property
    def num_slots(self) -> int:
        return self.keys.shape[1]


# --- the module ------------------------------------------------------------------------------


class SlotMemory(nn.Module):
    """A slot memory driven by per-token features ``h: (batch, seq_len, d_model)``.

    ``forward(h)`` returns ``(reads, state, trace)``: ``reads: (batch, seq_len, num_heads * slot_dim)``,
    the final :class:`SlotState`, and, only when ``trace=True``, a dict of per-step tensors
    (see :meth:`forward`). ``num_slots`` is a plain attribute and may be changed on a trained
    memory (chapter 2's memory-size slider), except with ``decay=True``, whose decay gates are
    per slot.

    Options: ``num_heads`` read heads; ``top_k`` sparse reads; ``write_policy`` (module
    docstring); ``fixed_erase`` pins the erase gate (``0.0`` is the ``no_forget`` ablation) and
    ``fixed_write`` the write gate (chapter 4: ``1.0`` leaves the decision to surprise alone);
    ``bottleneck`` compresses what is written through an MLP of that width; ``decay`` adds a
    learned per-slot decay of values; ``utilization_weight`` > 0 adds a loss that rewards writes
    spread evenly over the slots (:meth:`utilization_loss`).
    """

    def __init__(self, d_model: int, num_slots: int = 16, slot_dim: int = 32, num_heads: int = 1,
                 top_k: int | None = None, write_policy: str = "content", fixed_erase: float | None = None,
                 bottleneck: int | None = None, decay: bool = False, utilization_weight: float = 0.0,
                 seed: int = 0, fixed_write: float | None = None):
        super().__init__()
        check_int("d_model", d_model, 1)
        check_int("num_slots", num_slots, 1)
        check_int("slot_dim", slot_dim, 1)
        check_int("num_heads", num_heads, 1)
        check_int("top_k", top_k, 1, allow_none=True)
        check_int("bottleneck", bottleneck, 1, allow_none=True)
        check_int("seed", seed, 0)
        check_choice("write_policy", write_policy, WRITE_POLICIES)
        check_number("fixed_erase", fixed_erase, 0, 1, allow_none="learned")
        check_number("fixed_write", fixed_write, 0, 1, allow_none="learned")
        check_number("utilization_weight", utilization_weight, 0)
        self.num_slots, self.slot_dim, self.num_heads, self.top_k = num_slots, slot_dim, num_heads, top_k
        self.write_policy, self.fixed_erase, self.seed = write_policy, fixed_erase, seed
        self.fixed_write = fixed_write
        self.utilization_weight = float(utilization_weight)
        self.query = nn.Linear(d_model, num_heads * slot_dim)
        self.key = nn.Linear(d_model, slot_dim)
        if bottleneck is None:
            self.value = nn.Linear(d_model, slot_dim)
        else:
            self.value = nn.Sequential(nn.Linear(d_model, bottleneck), nn.GELU(), nn.Linear(bottleneck, slot_dim))
        # gates: write, erase, read, and the allocation logit l_t of the "content" policy
        self.gates = nn.Linear(d_model, 4)
        with torch.no_grad():
            self.gates.bias.copy_(torch.tensor([-2.0, 0.0, 0.0, 0.0]))
        # log of the sharpness beta of reads (per head) and of content writes
        self.log_sharpness = nn.Parameter(torch.full((num_heads,), math.log(8.0)))
        self.log_write_sharpness = nn.Parameter(torch.tensor(math.log(8.0)))
        # theta of the "content" policy: how well a key must match a slot to be written onto it
        self.match_threshold = nn.Parameter(torch.tensor(0.8))
        self.decay_logit = nn.Parameter(torch.full((num_slots,), 4.0)) if decay else None
        self._last_write_mass = None

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> SlotState:
        """Empty memory: zero keys (small random ones, the same for every sequence, under
        ``content_only``) and values, zero age, pointer at slot 0."""
        S, D = self.num_slots, self.slot_dim
        keys = torch.zeros(batch_size, S, D, device=device, dtype=dtype)
        if self.write_policy == "content_only":
            gen = torch.Generator().manual_seed(self.seed)
            keys = keys + 0.1 * torch.randn(S, D, generator=gen).to(device=device, dtype=dtype)
        return SlotState(keys=keys,
                         values=torch.zeros(batch_size, S, D, device=device, dtype=dtype),
                         age=torch.zeros(batch_size, S, device=device, dtype=dtype),
                         pointer=torch.zeros(batch_size, device=device, dtype=dtype))

    def projections(self, h: torch.Tensor) -> dict:
        """Everything a step needs from the features, for all positions at once.

        h: (batch, seq_len, d_model) -> queries (B, T, heads, slot_dim), keys and values
        (B, T, slot_dim) in [-1, 1], gates (B, T) in (0, 1): write, erase, read, and the logit
        ``alloc`` (``l_t`` of the content policy).
        """
        B, T, _ = h.shape
        logits = self.gates(h)
        g = torch.sigmoid(logits)
        erase = g[..., 1] if self.fixed_erase is None else torch.full_like(g[..., 1], float(self.fixed_erase))
        gate = g[..., 0] if self.fixed_write is None else torch.full_like(g[..., 0], float(self.fixed_write))
        return {"query": self.query(h).view(B, T, self.num_heads, self.slot_dim),
                "key": torch.tanh(self.key(h)), "value": torch.tanh(self.value(h)),
                "write_gate": gate, "erase": erase, "read_gate": g[..., 2], "alloc": logits[..., 3]}

    def _check_slots(self):
        check_int("num_slots", self.num_slots, 1)
        if self.decay_logit is not None and self.decay_logit.shape[0] != self.num_slots:
            raise ValueError(f"num_slots={self.num_slots} cannot change on a memory with decay gates "
                             f"(built with {self.decay_logit.shape[0]} slots)")
        # top_k >= num_slots is allowed (the read is then dense), so a size slider can go below top_k

    def forward(self, h: torch.Tensor, state: SlotState | None = None, trace: bool = False,
                keep_states: bool = False, write_scale: torch.Tensor | None = None):
        """Run the memory over ``h: (batch, seq_len, d_model)``, reading then writing at each token.

        Returns ``(reads, state, trace)``. ``reads``: (batch, seq_len, num_heads * slot_dim). With
        ``trace=True``, ``trace`` holds (batch, seq_len, num_slots) ``read`` (read weights, mean
        over heads, times the read gate), ``write`` (write gate times write weights) and
        ``age_before`` (each slot's age just before the step), and (batch, seq_len) ``write_gate``,
        ``erase``, ``read_gate``; ``keep_states=True`` adds the memory after every step,
        ``keys``/``values`` (batch, seq_len, num_slots, slot_dim). Otherwise ``trace`` is None and
        nothing extra is kept.

        ``write_scale`` (optional, (batch, seq_len) in [0, 1]) multiplies the write gate at every
        token (chapter 4's surprise gate); the trace's ``write_gate`` is the product.
        """
        if h.dim() != 3:
            raise ValueError(f"h must have shape (batch, seq_len, d_model), got {tuple(h.shape)}")
        self._check_slots()
        B, T, _ = h.shape
        p = self.projections(h)
        if write_scale is not None:
            if write_scale.shape != (B, T):
                raise ValueError(f"write_scale must have shape (batch, seq_len) = {(B, T)}, "
                                 f"got {tuple(write_scale.shape)}")
            p["write_gate"] = p["write_gate"] * write_scale
        state = state if state is not None else self.initial_state(B, h.device, h.dtype)
        if state.num_slots != self.num_slots:
            raise ValueError(f"state has {state.num_slots} slots, the memory {self.num_slots}")
        sharp = self.log_sharpness.exp()[None, :, None]
        write_sharp = self.log_write_sharpness.exp()
        threshold = self.match_threshold
        decay = torch.sigmoid(self.decay_logit)[None, :, None] if self.decay_logit is not None else None
        S, D = self.num_slots, self.slot_dim
        random_slots = None
        if self.write_policy == "random":
            # one draw per position, the same for every sequence of the batch: a sequence's slots
            # depend on its positions only, not on its row or on how many rows the batch has
            gen = torch.Generator().manual_seed(self.seed)
            slots = torch.randint(0, S, (T,), generator=gen)
            random_slots = F.one_hot(slots, S).to(h.device, h.dtype).expand(B, T, S)
        # Keys and values are updated by the same erase-then-add, so they live in one tensor
        # (B, S, 2D) for the loop: one write per token instead of two.
        mem = torch.cat([state.keys, state.values], dim=-1)
        content = torch.cat([p["key"], p["value"]], dim=-1)                     # (B, T, 2D)
        unit_q = p["query"] / p["query"].norm(dim=-1, keepdim=True).clamp_min(1e-6)
        unit_k = p["key"] / p["key"].norm(dim=-1, keepdim=True).clamp_min(1e-6)
        age, pointer = state.age, state.pointer
        # Each per-token input is taken apart once (unbind) rather than indexed at every step: the
        # backward of ``x[:, t]`` pads its gradient to the whole sequence, T times over (T^2 work
        # in training), while unbind's stacks the T gradients once. The values are the same.
        steps = {"query": unit_q.unbind(1), "key": unit_k.unbind(1), "content": content.unbind(1),
                 "read_gate": p["read_gate"].unbind(1), "write_gate": p["write_gate"].unbind(1),
                 "erase": p["erase"].unbind(1), "alloc": p["alloc"].unbind(1)}
        reads, write_mass = [], []
        rec = {k: [] for k in ("read", "write", "age_before", "keys", "values")} if trace else None
        for t in range(T):
            keys = mem[..., :D]
            unit_keys = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-6)    # (B, S, D)
            w_r = address(steps["query"][t] @ unit_keys.transpose(1, 2), sharp, self.top_k)  # (B, H, S)
            rho = steps["read_gate"][t][:, None]
            reads.append(read(w_r, mem[..., D:]))
            read_use = rho * w_r.mean(dim=1)                                        # (B, S)
            if self.write_policy == "fifo":
                w_w = F.one_hot(pointer.floor().long() % S, S).to(h.dtype)
            elif self.write_policy == "random":
                w_w = random_slots[:, t]
            else:
                if self.write_policy != "content_only":
                    lru = F.one_hot(age.argmax(dim=-1), S).to(h.dtype)
                if self.write_policy == "lru":
                    w_w = lru
                else:
                    sim = (unit_keys @ steps["key"][t][:, :, None]).squeeze(-1)     # (B, S)
                    w_w = torch.softmax(write_sharp * sim, dim=-1)
                    if self.write_policy == "content":
                        best = sim.max(dim=-1, keepdim=True).values
                        a = torch.sigmoid(steps["alloc"][t][:, None] + MATCH_SCALE * (threshold - best))
                        w_w = a * lru + (1 - a) * w_w
            g, e = steps["write_gate"][t], steps["erase"][t]
            if decay is not None:
                mem = torch.cat([mem[..., :D], mem[..., D:] * decay], dim=-1)
            mem = write(mem, w_w, g, e, steps["content"][t])
            mass = g[:, None] * w_w
            write_mass.append(mass)
            if trace:
                rec["read"].append(read_use)
                rec["write"].append(mass)
                rec["age_before"].append(age)
                if keep_states:
                    rec["keys"].append(mem[..., :D])
                    rec["values"].append(mem[..., D:])
            age = (age + 1) * (1 - mass) * (1 - read_use)
            pointer = pointer + g
        self._last_write_mass = torch.stack(write_mass, dim=1)                  # (B, T, S)
        out = self.gated_reads(torch.stack(reads, dim=1), p["read_gate"])
        final = SlotState(mem[..., :D], mem[..., D:], age, pointer)
        if not trace:
            return out, final, None
        tr = {k: torch.stack(v, dim=1) for k, v in rec.items() if v}
        tr.update(write_gate=p["write_gate"], erase=p["erase"], read_gate=p["read_gate"])
        return out, final, tr

    def gated_reads(self, raw: torch.Tensor, read_gate: torch.Tensor) -> torch.Tensor:
        """What the memory hands on: each head's read, normalised (zero mean, unit variance over
        ``slot_dim``: values are written at partial strength and only their pattern matters),
        times the read gate. raw: (..., heads, slot_dim); read_gate: (...) -> (..., heads * slot_dim)."""
        normed = F.layer_norm(raw, (self.slot_dim,))
        return (read_gate[..., None, None] * normed).flatten(-2)

    def utilization_loss(self) -> torch.Tensor:
        """``utilization_weight * (1 - H(u) / log num_slots)`` for the last forward pass, where
        ``u`` is the share of all write mass that went to each slot: 0 when writes are spread
        evenly, up to ``utilization_weight`` when every write lands in one slot (collapse)."""
        if self._last_write_mass is None or self.utilization_weight == 0 or self.num_slots == 1:
            return torch.zeros(())
        return self.utilization_weight * (1 - slot_usage_entropy(self._last_write_mass))


def slot_usage_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Normalised entropy (in [0, 1]) of how mass is spread over slots.

    weights: (..., num_slots), e.g. (batch, seq_len, num_slots) write mass; summed over all
    leading dimensions first. 1: every slot used equally; 0: one slot takes everything.
    """
    S = weights.shape[-1]
    if S == 1:
        return torch.ones(())
    u = weights.reshape(-1, S).sum(dim=0)
    u = u / u.sum().clamp_min(1e-12)
    return -(u * u.clamp_min(1e-12).log()).sum() / math.log(S)
