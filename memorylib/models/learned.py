"""Memories that learn, chapters 5 and 6: a memory written by gradient steps beside local attention.

:class:`LearnedMemoryModel` puts one of three memories behind
:class:`~memorylib.models.transformer.LocalFeatures`: a matrix written additively (linear
attention), a matrix written by the delta rule (:mod:`memorylib.delta_rule`), or a small MLP
written by gradient steps (:mod:`memorylib.ttt`); each with an optional learned retention (forget
gate) and, for the MLP, momentum. The reads, normalized per head, go through the shared read-out
of :mod:`memorylib.models.base`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_int, check_number
from ..delta_rule import delta_rule, delta_rule_reference
from ..ttt import MLPMemoryState, mlp_memory, mlp_memory_reference
from .base import MemoryModel, fixed
from .transformer import DEFAULT_WINDOW

MEMORY_KINDS = ("linear", "delta", "mlp")


class LearnedMemoryModel(MemoryModel):
    """Local causal attention with a memory written by gradient steps beside it. Introduced in
    chapter 5.

    tokens -> :class:`LocalFeatures` -> ``h``; from ``h_t`` each of ``memory_heads`` heads makes a
    query and a key (unit length), a value, a learning rate and, optionally, a retention factor
    and a momentum; the memory writes ``(k_t, v_t)`` and is read with ``q_t``; the reads are
    normalized, fused into ``h`` (residual projection and an MLP) and the next token predicted.

    ``kind``:

    * ``"linear"``: a matrix, additive write ``M += beta v k^T`` (linear attention; no erase);
    * ``"delta"``: a matrix written by the delta rule (:mod:`memorylib.delta_rule`), learning
      rate ``beta_t = sigmoid(.)`` in (0, 1);
    * ``"mlp"``: a two-layer MLP written by gradient steps (:mod:`memorylib.ttt`), learning rate
      ``theta_t = max_lr * sigmoid(.)`` (default ``max_lr`` 0.1: at 1.0 the memory of an untrained
      model overflows to NaN within about 45 tokens of the default tasks), initial weights learned
      by the outer model.

    ``forget=True`` adds a learned retention ``a_t = sigmoid(.)`` (starting near 0.98): the old
    memory is multiplied by it before each write (for the MLP: weight decay ``1 - a_t``).
    ``momentum=True`` (MLP only) adds a learned momentum ``eta_t = sigmoid(.)``.

    ``chunk_size`` is a plain attribute (chapter 6's slider); ``reference=True`` runs the
    token-by-token form instead of the chunked one; ``fast=True`` (also a plain attribute) runs the
    chunked forms with the fewest operations per chunk (``delta_rule(..., fast=True)``,
    ``mlp_memory(..., fast=True)``: the same numbers in exact arithmetic, not the same last bits in
    float32, so the book's recorded models run with the default, False). ``model(tokens, return_trace=True)`` gives
    ``(logits, trace)`` with per-head ``lr``, ``retain``, ``momentum`` (each (batch, heads,
    seq_len), or None) and ``reads``.
    """

    def __init__(self, vocab_size: int | None = None, d_model: int = 64, num_layers: int = 1,
                 num_heads: int = 4, window: int = DEFAULT_WINDOW, kind: str = "delta", memory_heads: int = 1,
                 key_dim: int = 32, value_dim: int = 32, hidden: int = 32, forget: bool = False,
                 momentum: bool = False, max_lr: float = 0.1, chunk_size: int = 16, reference: bool = False,
                 fast: bool = False):
        if window is None:
            raise ValueError("a memory model needs an int window >= 1 for its local attention")
        super().__init__(vocab_size, d_model, num_layers, num_heads, window)
        check_choice("kind", kind, MEMORY_KINDS)
        for name, value in (("memory_heads", memory_heads), ("key_dim", key_dim), ("value_dim", value_dim),
                            ("hidden", hidden), ("chunk_size", chunk_size)):
            check_int(name, value, 1)
        if momentum and kind != "mlp":
            raise ValueError(f"momentum applies to kind='mlp' only, got kind={kind!r}")
        check_number("max_lr", max_lr, 0, low_open=True)
        self.kind, self.memory_heads, self.key_dim, self.value_dim = kind, memory_heads, key_dim, value_dim
        self.forget, self.use_momentum, self.max_lr = bool(forget), bool(momentum), float(max_lr)
        self.chunk_size, self.reference, self.fast = chunk_size, bool(reference), bool(fast)
        H = memory_heads
        self.qkv = nn.Linear(d_model, H * (2 * key_dim + value_dim))
        self.gates = nn.Linear(d_model, 3 * H)          # learning rate, retention, momentum logits
        with torch.no_grad():
            self.gates.bias[H:2 * H].fill_(4.0)         # retention starts at sigmoid(4) = 0.98
        if kind == "mlp":
            self.w1 = nn.Parameter(torch.randn(H, hidden, key_dim) / key_dim ** 0.5)
            self.w2 = nn.Parameter(torch.randn(H, value_dim, hidden) / hidden ** 0.5)
        self.add_readout(H * value_dim)

    def memory_inputs(self, h: torch.Tensor) -> dict:
        """Queries, keys, values ``(B, H, T, dim)`` and per-token ``lr``, ``retain``, ``momentum``
        ``(B, H, T)`` (the last two None when switched off) from features ``h: (B, T, d_model)``."""
        B, T, _ = h.shape
        H, Dk, Dv = self.memory_heads, self.key_dim, self.value_dim
        q, k, v = self.qkv(h).view(B, T, H, 2 * Dk + Dv).transpose(1, 2).split([Dk, Dk, Dv], dim=-1)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        lr_logit, ret_logit, mom_logit = self.gates(h).view(B, T, 3, H).permute(2, 0, 3, 1)
        lr = torch.sigmoid(lr_logit) * (self.max_lr if self.kind == "mlp" else 1.0)
        return {"q": q, "k": k, "v": v, "lr": lr,
                "retain": torch.sigmoid(ret_logit) if self.forget else None,
                "momentum": torch.sigmoid(mom_logit) if self.use_momentum else None}

    def read_memory(self, x: dict, state=None):
        """Run the memory over a sequence; returns ``(reads (B, H, T, value_dim), state)``."""
        if self.kind == "mlp":
            state = MLPMemoryState.initial(self.w1, self.w2, x["k"].shape[0]) if state is None else state
            args = (x["q"], x["k"], x["v"], x["lr"], x["momentum"], x["retain"])
            if self.reference:
                return mlp_memory_reference(*args, state=state)
            return mlp_memory(*args, state=state, chunk_size=self.chunk_size, fast=self.fast)
        args = (x["q"], x["k"], x["v"], x["lr"], x["retain"], state)
        if self.reference:
            return delta_rule_reference(*args, erase=self.kind == "delta")
        return delta_rule(*args, chunk_size=self.chunk_size, erase=self.kind == "delta", fast=self.fast)

    def fuse_memory(self, h: torch.Tensor, reads: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """The read-out's activations (:meth:`~memorylib.models.base.MemoryModel.fuse_reads`) from
        features ``h (B, T, d_model)`` and the memory's ``reads (B, H, T, value_dim)``, each head's
        read normalized to zero mean and unit variance first."""
        r = F.layer_norm(reads, reads.shape[-1:])
        r = r.transpose(1, 2).reshape(reads.shape[0], reads.shape[2], -1)
        return self.fuse_reads(h, r, extra)

    def forward(self, tokens: torch.Tensor, return_trace: bool = False):
        h = self.features(tokens)
        x = self.memory_inputs(h)
        reads, _ = self.read_memory(x)
        logits = self.logits_from(self.fuse_memory(h, reads))
        if return_trace:
            return logits, {"lr": x["lr"], "retain": x["retain"], "momentum": x["momentum"], "reads": reads}
        return logits



MODELS = {
    "linear_memory": fixed(LearnedMemoryModel, kind="linear"),
    "delta_memory": fixed(LearnedMemoryModel, kind="delta"),
    "gated_delta_memory": fixed(LearnedMemoryModel, kind="delta", forget=True),
    "mlp_memory": fixed(LearnedMemoryModel, kind="mlp"),
    "titans_memory": fixed(LearnedMemoryModel, kind="mlp", forget=True, momentum=True),
}
