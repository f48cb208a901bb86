"""The slot memory models of chapters 2 to 4: a slot memory beside local attention, and its writes
gated by surprise.

:class:`SlotMemoryModel` (chapter 2) puts a :class:`~memorylib.slot_memory.SlotMemory` behind
:class:`~memorylib.models.transformer.LocalFeatures` and the shared read-out of
:mod:`memorylib.models.base`; its ablations (``no_forget``, ``fifo_memory``, ...) are registered
with one option fixed. :class:`SurpriseMemoryModel` (chapter 4) multiplies the write gate by a gate
built from how surprising each token was to a prediction head.
"""

from __future__ import annotations

import torch

from ..checks import check_choice, check_number
from ..slot_memory import SlotMemory, address
from ..surprise import SURPRISE_KINDS, momentum_surprise, surprise_gate, token_surprise
from ..tasks import TokenLayout
from .base import MemoryModel, fixed
from .transformer import DEFAULT_WINDOW


def query_snippet(probe_keys: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
    """The question a ``recall`` probe asks, seen alone: one cell of filler, then ``ASK k``, for every
    probe key. probe_keys: (B, P) -> (B * P, 5) token ids. Introduced in chapter 3."""
    layout = layout or TokenLayout()
    n = probe_keys.numel()
    filler = torch.arange(3) % layout.num_filler + layout.filler_start
    return torch.cat([filler.expand(n, 3), torch.full((n, 1), layout.ASK), probe_keys.reshape(n, 1)], dim=1)


class SlotMemoryModel(MemoryModel):
    """Local causal attention with a slot memory beside it. Introduced in chapter 2.

    tokens -> embedding (+ previous-token mix) -> ``num_layers`` windowed attention blocks -> ``h``;
    at each position the memory is read with a query from ``h`` (what tokens before it wrote),
    the read is fused into ``h`` (residual projection and an MLP) and the next token predicted;
    then ``h`` is written. The attention sees ``window`` tokens; everything older reaches the
    prediction only through the memory. Memory options are those of
    :class:`~memorylib.slot_memory.SlotMemory`.

    ``model(tokens)`` gives logits; ``model(tokens, return_trace=True)`` gives
    ``(logits, trace)`` with the memory's per-step trace. :meth:`recall` probes what the memory
    would answer for given keys after every position (chapter 3's survival curves).
    """

    def __init__(self, vocab_size: int | None = None, d_model: int = 64, num_layers: int = 1,
                 num_heads: int = 4, window: int = DEFAULT_WINDOW, num_slots: int = 16, slot_dim: int = 32,
                 memory_heads: int = 1, top_k: int | None = None, write_policy: str = "content",
                 fixed_erase: float | None = None, bottleneck: int | None = None, decay: bool = False,
                 utilization_weight: float = 0.0, seed: int = 0, fixed_write: float | None = None):
        if window is None:
            raise ValueError("a slot memory model needs an int window >= 1 for its local attention")
        super().__init__(vocab_size, d_model, num_layers, num_heads, window)
        self.memory = SlotMemory(d_model, num_slots=num_slots, slot_dim=slot_dim, num_heads=memory_heads,
                                 top_k=top_k, write_policy=write_policy, fixed_erase=fixed_erase,
                                 bottleneck=bottleneck, decay=decay, utilization_weight=utilization_weight,
                                 seed=seed, fixed_write=fixed_write)
        self.add_readout(memory_heads * slot_dim)

    @property
    def num_slots(self) -> int:
        return self.memory.num_slots

    @num_slots.setter
    def num_slots(self, value: int) -> None:
        self.memory.num_slots = value

    def write_scale(self, tokens: torch.Tensor, h: torch.Tensor, trace: dict | None = None):
        """A (batch, seq_len) factor on the memory's write gate, or None (here: none; chapter 4's
        :class:`SurpriseMemoryModel` gates writes by surprise). ``trace``, when given, is a dict
        the model may add per-token signals to."""
        return None

    def forward(self, tokens: torch.Tensor, return_trace: bool = False):
        h = self.features(tokens)
        extra = {} if return_trace else None
        reads, _, trace = self.memory(h, trace=return_trace, write_scale=self.write_scale(tokens, h, extra))
        logits = self.predict_from(h, reads)
        if return_trace:
            trace.update(extra)
        return (logits, trace) if return_trace else logits

    def auxiliary_loss(self) -> torch.Tensor:
        """Added to the answer loss by :func:`~memorylib.training.train`: the memory's
        slot-utilization loss for the last forward pass (0 unless ``utilization_weight > 0``)."""
        return self.memory.utilization_loss()

    @torch.no_grad()
    def recall(self, tokens: torch.Tensor, probe_keys: torch.Tensor, layout: TokenLayout | None = None):
        """What the memory would answer, after every position, if asked about each probe key.

        tokens: (batch, seq_len); probe_keys: (batch, num_probes) key token ids. For every
        position ``t`` and probe ``k`` the answer is the model's prediction for a query cell
        ``ASK k`` (preceded by one filler cell) read against the memory as it is after token
        ``t``. Returns (batch, seq_len, num_probes) predicted token ids.
        """
        B, P = probe_keys.shape
        h = self.features(tokens)
        _, _, tr = self.memory(h, trace=True, keep_states=True, write_scale=self.write_scale(tokens, h))
        keys, values = tr["keys"], tr["values"]                             # (B, T, S, D)
        asked = self.features(query_snippet(probe_keys, layout))[:, -1].view(B, P, -1)   # (B, P, d_model)
        mem = self.memory
        proj = mem.projections(asked)
        query = proj["query"].reshape(B, 1, P * mem.num_heads, mem.slot_dim)
        query = query / query.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        keys = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        scores = (query @ keys.transpose(-1, -2)).view(B, -1, P, mem.num_heads, mem.num_slots)
        w = address(scores, mem.log_sharpness.exp()[:, None], mem.top_k)   # (B, T, P, H, S)
        raw = torch.einsum("btphs,btsd->btphd", w, values)
        r = mem.gated_reads(raw, proj["read_gate"][:, None, :].expand(-1, raw.shape[1], -1))
        logits = self.predict_from(asked[:, None].expand(-1, r.shape[1], -1, -1), r)
        return logits.argmax(-1)



# --- surprise (chapter 4) ----------------------------------------------------------------------


class SurpriseMemoryModel(SlotMemoryModel):
    """The slot memory model with writes gated by surprise. Introduced in chapter 4.

    A prediction head ``predictor`` reads the local features ``h_{t-1}`` and predicts ``x_t``;
    an auxiliary next-token loss on every position (weight ``aux_weight``, added by
    :func:`~memorylib.training.train` through :meth:`auxiliary_loss`) trains it. The surprise of
    ``x_t`` (:func:`~memorylib.surprise.token_surprise`, ``kind`` "prob" or "nll"), optionally
    carried with ``momentum`` (:func:`~memorylib.surprise.momentum_surprise`), becomes a gate
    ``sigmoid((S_t - threshold) / temperature)`` that multiplies the write gate at ``t``.

    ``surprise=False`` is the ``no_surprise`` ablation: the same model, head and auxiliary loss,
    with the gate removed. ``fixed_write=1.0`` pins the learned write gate open, so that surprise
    alone decides what is written. ``threshold`` and ``temperature`` are plain attributes: a
    trained model can be run with other values (chapter 4's slider).

    The trace (``return_trace=True``) adds ``surprise`` (the momentary ``s_t``), ``carried``
    (``S_t``) and ``surprise_gate``, each (batch, seq_len).
    """

    def __init__(self, *, surprise: bool = True, kind: str = "prob", momentum: float = 0.0,
                 threshold: float = 0.5, temperature: float = 0.1, aux_weight: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.surprise, self.kind = bool(surprise), check_choice("kind", kind, SURPRISE_KINDS)
        self.momentum = check_number("momentum", momentum, 0, 1, high_open=True)
        self.add_surprise_head(threshold, temperature, aux_weight)

    def surprise_signals(self, tokens: torch.Tensor, h: torch.Tensor) -> dict:
        """``{"logits", "surprise", "carried", "gate"}`` for features ``h`` of ``tokens``; ``logits``
        (batch, seq_len, vocab) are the head's next-token predictions, the others (batch, seq_len)."""
        logits = self.predictor(h)
        s = token_surprise(logits.detach(), tokens, self.kind)
        carried = momentum_surprise(s, self.momentum)
        return {"logits": logits, "surprise": s, "carried": carried,
                "gate": surprise_gate(carried, self.threshold, self.temperature)}

    def write_scale(self, tokens, h, trace=None):
        sig = self.surprise_signals(tokens, h)
        self.train_surprise_head(sig["logits"], tokens)
        if trace is not None:
            trace.update(surprise=sig["surprise"], carried=sig["carried"], surprise_gate=sig["gate"])
        return sig["gate"] if self.surprise else None

    def auxiliary_loss(self) -> torch.Tensor:
        """The memory's utilization loss plus the next-token loss of the prediction head for the
        last forward pass with gradients on."""
        aux = super().auxiliary_loss()
        return aux if self._aux is None else aux + self._aux



MODELS = {
    "slot_memory": fixed(SlotMemoryModel),
    "no_forget": fixed(SlotMemoryModel, fixed_erase=0.0),
    "fifo_memory": fixed(SlotMemoryModel, write_policy="fifo"),
    "random_write": fixed(SlotMemoryModel, write_policy="random"),
    "lru_memory": fixed(SlotMemoryModel, write_policy="lru"),
    "topk_lru_memory": fixed(SlotMemoryModel, memory_heads=4, top_k=2, write_policy="lru", bottleneck=16,
                             utilization_weight=0.1),
    # chapter 4
    "surprise_memory": fixed(SurpriseMemoryModel),
    "no_surprise": fixed(SurpriseMemoryModel, surprise=False),
    "momentum_surprise": fixed(SurpriseMemoryModel, momentum=0.5),
    "surprise_only": fixed(SurpriseMemoryModel, fixed_write=1.0),
}
