"""The full model of chapters 7 and 8: local attention, a learned memory gated by surprise, and the
sparse exact-attention sidecar, in one model that streams with a state of constant size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_int, check_number
from ..sidecar import SidecarState, sidecar_attention, sidecar_weights
from ..surprise import surprise_gate, token_surprise
from ..tasks import TokenLayout
from ..ttt import MLPMemoryState
from .base import fixed
from .learned import LearnedMemoryModel
from .slots import query_snippet
from .transformer import check_tokens


@dataclass
class FullStreamState:
    """What :meth:`FullMemoryModel.stream` carries between pieces of a stream: the last
    ``receptive_field`` tokens (``context``, so that the local attention and the surprise of the
    next piece's first token are computed exactly), the memory's state, the sidecar's state and
    ``seen``, the number of tokens processed. Its size does not grow with the stream."""

    context: torch.Tensor
    memory: object
    sidecar: SidecarState | None
    seen: int = 0

    def nbytes(self) -> int:
        """Bytes held: token context, memory state and sidecar cache (all of fixed size)."""
        if isinstance(self.memory, MLPMemoryState):
            mem = self.memory.nbytes()
        else:
            mem = self.memory.numel() * self.memory.element_size()
        side = self.sidecar.nbytes() if self.sidecar is not None else 0
        return self.context.numel() * self.context.element_size() + mem + side


SIDECAR_RANKS = ("surprise", "recency", "random", "write", "learned")


class FullRun(NamedTuple):
    """What :meth:`FullMemoryModel._run` gives: the read-out's activations ``y``, the memory's
    ``inputs`` and ``reads``, the sidecar's reads (None without one) and the two states (carried
    only when streaming)."""

    y: torch.Tensor
    inputs: dict
    reads: torch.Tensor
    sidecar_reads: torch.Tensor | None
    memory_state: object
    sidecar_state: SidecarState | None


class FullMemoryModel(LearnedMemoryModel):
    """Every mechanism of the book in one model. Introduced in chapter 7.

    tokens -> :class:`LocalFeatures` (windowed attention) -> ``h``; then, side by side:

    * a prediction head reads ``h_{t-1}`` and gives the surprise ``s_t = -log p(x_t)`` of every
      token (chapter 4; trained by an auxiliary next-token loss of weight ``aux_weight``);
    * a learned memory (chapter 5: ``kind`` "delta", "linear" or "mlp") whose per-token learning
      rate is multiplied by the surprise gate ``sigmoid((1 - p(x_t) - threshold) / temperature)``:
      what the model predicted is hardly written (``surprise=False``: no gate);
    * the sidecar (:mod:`memorylib.sidecar`): the keys and values of the ``sidecar`` most
      surprising earlier tokens, kept verbatim and read by exact attention (``sidecar=0``: none).
      Its queries and keys are unit vectors times a learned scale, so a matching key stands out
      at any length of the stream. ``sidecar_rank`` says what "most" means: ``"surprise"`` (the
      default), ``"recency"`` (the latest tokens), ``"random"`` (a fixed pseudo-random score per
      position) or ``"write"`` (the memory's own write strength, its gated learning rate averaged
      over heads): the ablations of chapter 8. ``"learned"``: a keep score ``s_t`` read off ``h_t``
      by its own head; the cache keeps the highest scores and reads an entry through
      ``log sigmoid(s_t)`` added to its attention logit, so the score is trained by the answers
      that read it, against a cost of ``keep_weight`` (default 0.05; given only with this rank)
      times the mean ``sigmoid(s_t)`` (keep few).
      It is trained under the cache it is evaluated with: a kept token that misleads a read is
      pushed down, and with it every token like it, which lets the ones that matter rise into
      the cache (chapter 7).

    The memory read (normalized) and the sidecar read are added to ``h`` through their own
    projections, then an MLP and the output head. ``threshold``, ``temperature`` and ``sidecar``
    (capacity) are plain attributes that can be changed on a trained model.

    :meth:`stream` runs a stream piece by piece with a state of constant size
    (:class:`FullStreamState`); the logits equal those of one call (tested).
    ``return_trace=True`` adds ``surprise`` (nats), ``surprise_gate`` (B, T), the memory's ``lr``
    and ``retain`` (B, H, T), its ``reads``, and, for the sidecar (None without one),
    ``sidecar_read`` (B, T): the attention weight a position put on cached tokens rather than on
    the empty slot, and ``sidecar_from`` (B, T): the position of the token it read most (-1 when
    the empty slot weighed more). :func:`memorylib.sidecar.sidecar_weights` gives all the weights.
    """

    def __init__(self, *, sidecar: int = 16, surprise: bool = True, threshold: float = 0.5,
                 temperature: float = 0.1, aux_weight: float = 0.1, sidecar_dim: int = 32,
                 sidecar_rank: str = "surprise", keep_weight: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.sidecar = check_int("sidecar", sidecar, 0)
        self.sidecar_rank = check_choice("sidecar_rank", sidecar_rank, SIDECAR_RANKS)
        self.sidecar_dim = check_int("sidecar_dim", sidecar_dim, 1)
        self.surprise = bool(surprise)
        self.add_surprise_head(threshold, temperature, aux_weight)
        d_model = self.embed.embedding_dim
        self.side_qkv = nn.Linear(d_model, 3 * sidecar_dim)
        self.side_scale = nn.Parameter(torch.tensor(2.0))         # log of the query scale: e^2 ~ 7.4
        self.side_out = nn.Linear(sidecar_dim, d_model)
        if keep_weight is not None and self.sidecar_rank != "learned":
            raise ValueError(f"keep_weight is the cost of a learned keep score (sidecar_rank='learned'); "
                             f"got keep_weight={keep_weight} with sidecar_rank={sidecar_rank!r}")
        self.keep_weight = check_number("keep_weight", 0.05 if keep_weight is None else keep_weight, 0)
        self._keep_cost = None
        if self.sidecar_rank == "learned":              # made last: the other weights start as full_memory's
            self.keep = nn.Linear(d_model, 1)

    def _signals(self, tokens: torch.Tensor, h: torch.Tensor) -> dict:
        logits = self.predictor(h)
        s = token_surprise(logits.detach(), tokens, "nll")
        gate = surprise_gate(1 - torch.exp(-s), self.threshold, self.temperature)
        sig = {"logits": logits, "surprise": s, "gate": gate}
        if self.sidecar_rank == "learned":
            sig["keep"] = self.keep(h).squeeze(-1)
        return sig

    def _side_inputs(self, h: torch.Tensor):
        q, k, v = self.side_qkv(h).split(self.sidecar_dim, dim=-1)
        scale = self.side_scale.exp() * self.sidecar_dim ** 0.5     # cancels SDPA's 1 / sqrt(dim)
        return F.normalize(q, dim=-1) * scale, F.normalize(k, dim=-1), v

    def _gated_inputs(self, h: torch.Tensor, sig: dict) -> dict:
        """The memory's inputs from features ``h``, its learning rate multiplied by the surprise gate."""
        x = self.memory_inputs(h)
        if self.surprise:
            x["lr"] = x["lr"] * sig["gate"][:, None, :]
        return x

    def _rank_scores(self, sig: dict, x: dict, offset: int = 0) -> torch.Tensor:
        """``(B, T)``: what the sidecar keeps the highest of (``sidecar_rank``), for tokens at
        absolute positions ``offset`` to ``offset + T - 1`` of their stream."""
        if self.sidecar_rank == "surprise":
            return sig["surprise"]
        B, T = sig["surprise"].shape
        if self.sidecar_rank == "write":
            return x["lr"].detach().mean(1)
        if self.sidecar_rank == "learned":
            return sig["keep"].detach()
        pos = torch.arange(offset, offset + T, dtype=torch.float64)
        if self.sidecar_rank == "random":            # a fixed pseudo-random number per position
            pos = torch.frac(torch.sin(pos * 12.9898 + 78.233) * 43758.5453)
        return pos.to(sig["surprise"].dtype).expand(B, T)

    def _read_bias(self, sig: dict) -> torch.Tensor | None:
        """The learned keep score's read bias ``log sigmoid(s_t)``; None for the other ranks."""
        return F.logsigmoid(sig["keep"]) if self.sidecar_rank == "learned" else None

    def _run(self, h, sig, memory_state=None, sidecar_state=None, streaming=False, offset: int = 0) -> "FullRun":
        """From features ``h`` and surprise signals to the read-out's activations: the gated memory
        and the sidecar read and fused. The states are carried only when ``streaming``; ``offset``
        is the position of ``h[:, 0]`` in its stream."""
        x = self._gated_inputs(h, sig)
        reads, memory_state = self.read_memory(x, memory_state)
        side = extra = None
        if self.sidecar > 0:
            q, k, v = self._side_inputs(h)
            bias = self._read_bias(sig)
            if streaming:
                side, sidecar_state = sidecar_attention(q, k, v, self._rank_scores(sig, x, offset), self.sidecar,
                                                        state=sidecar_state, return_state=True, bias=bias)
            else:
                side = sidecar_attention(q, k, v, self._rank_scores(sig, x, offset), self.sidecar, bias=bias)
            extra = self.side_out(side)
        y = self.fuse_memory(h, reads, extra)
        return FullRun(y, x, reads, side, memory_state, sidecar_state)

    def forward(self, tokens: torch.Tensor, return_trace: bool = False):
        h = self.features(tokens)
        sig = self._signals(tokens, h)
        self.train_surprise_head(sig["logits"], tokens)
        self._keep_cost = None
        if self.sidecar_rank == "learned" and torch.is_grad_enabled():
            self._keep_cost = self.keep_weight * torch.sigmoid(sig["keep"]).mean()
        run = self._run(h, sig)
        x, logits = run.inputs, self.logits_from(run.y)
        if return_trace:
            read = source = None
            if self.sidecar > 0:
                with torch.no_grad():
                    weights, empty = sidecar_weights(*self._side_inputs(h), self._rank_scores(sig, x),
                                                     self.sidecar, bias=self._read_bias(sig))
                read = 1 - empty                                      # how much came from cached tokens
                top = weights.max(-1)
                source = torch.where(top.values > empty, top.indices, -1).to(h.dtype)
            return logits, {"surprise": sig["surprise"], "surprise_gate": sig["gate"], "lr": x["lr"],
                            "retain": x["retain"], "reads": run.reads, "sidecar_read": read, "sidecar_from": source}
        return logits

    def auxiliary_loss(self) -> torch.Tensor:
        """The prediction head's next-token loss for the last forward pass with gradients on,
        plus the learned keep score's cost (``"learned"`` rank only)."""
        aux = torch.zeros(()) if self._aux is None else self._aux
        return aux if self._keep_cost is None else aux + self._keep_cost

    def _check_state(self, state, batch: int) -> None:
        """A state from :meth:`stream` of a model of this shape, for ``batch`` sequences."""
        if not isinstance(state, FullStreamState):
            raise ValueError(f"state must be the FullStreamState that stream() returned, got {type(state).__name__}")
        if state.context.shape[0] != batch:
            raise ValueError(f"the state is for a batch of {state.context.shape[0]}, got {batch} sequences")
        H, Dk, Dv = self.memory_heads, self.key_dim, self.value_dim
        if self.kind == "mlp":
            fits = isinstance(state.memory, MLPMemoryState) and state.memory.w1.shape[:2] == (batch, H)
        else:
            fits = isinstance(state.memory, torch.Tensor) and state.memory.shape == (batch, H, Dv, Dk)
        side = state.sidecar
        fits = fits and ((self.sidecar == 0 and side is None) or
                         (self.sidecar > 0 and side is not None and tuple(side.keys.shape) == (batch, self.sidecar,
                                                                                                  self.sidecar_dim)))
        if not fits:
            raise ValueError("the state was carried by another model (its memory or sidecar does not fit this "
                             f"one: kind={self.kind!r}, {H} heads of {Dv}x{Dk}, sidecar of {self.sidecar})")

    @torch.no_grad()
    def stream(self, tokens: torch.Tensor, state: FullStreamState | None = None, last_only: bool = False):
        """Process the next piece ``tokens: (B, P)`` of a stream; returns ``(logits, state)``, where
        ``logits`` is ``(B, P, vocab)`` (``(B, 1, vocab)`` for the piece's last token with
        ``last_only=True``, which skips the output head elsewhere). Feeding a sequence in pieces
        gives the logits of one call; the state's size is the same after any number of tokens."""
        check_tokens(tokens, self.vocab_size)
        B, P = tokens.shape
        if state is not None:
            self._check_state(state, B)
        ctx = tokens[:, :0] if state is None else state.context
        full = torch.cat([ctx, tokens], 1)
        n = ctx.shape[1]
        h_all = self.features(full)
        sig_all = self._signals(full, h_all)
        h = h_all[:, n:]
        sig = {key: value[:, n:] for key, value in sig_all.items()}
        memory = state.memory if state is not None else None
        if memory is None and self.kind == "mlp":
            memory = MLPMemoryState.initial(self.w1, self.w2, B)
        sidecar = state.sidecar if state is not None else None
        run = self._run(h, sig, memory, sidecar, streaming=True, offset=state.seen if state else 0)
        y = run.y[:, -1:] if last_only else run.y
        logits = self.logits_from(y)
        keep = self.receptive_field
        new = FullStreamState(full[:, -keep:], run.memory_state, run.sidecar_state, (state.seen if state else 0) + P)
        return logits, new

    @torch.no_grad()
    def probe_logits(self, tokens: torch.Tensor, query_features: torch.Tensor) -> torch.Tensor:
        """The logits a position with features ``query_features`` (B, P, d_model) would produce
        if it read the memory and the sidecar of ``tokens`` (B, T) at every position ``t``:
        (B, T, P, vocab). The memory is read as it is after writing token ``t`` and the sidecar
        holds the tokens before ``t``, exactly as the model's own read at ``t``; so with
        ``query_features = h[:, t]`` (the model's own features) entry ``[:, t]`` equals
        ``model(tokens)[:, t]`` (tested). Introduced in chapter 8."""
        B, T = tokens.shape
        P = query_features.shape[1]
        h = self.features(tokens)
        sig = self._signals(tokens, h)
        x = self._gated_inputs(h, sig)
        probe = self.memory_inputs(query_features)                           # q: (B, H, P, key_dim)
        if self.sidecar > 0:
            qs, _, _ = self._side_inputs(query_features)                     # (B, P, sidecar_dim)
            _, ks, vs = self._side_inputs(h)
        out = []
        for p in range(P):
            reads, _ = self.read_memory({**x, "q": probe["q"][:, :, p:p + 1].expand(-1, -1, T, -1)})
            extra = None
            if self.sidecar > 0:
                side = sidecar_attention(qs[:, p:p + 1].expand(-1, T, -1), ks, vs, self._rank_scores(sig, x),
                                         self.sidecar, bias=self._read_bias(sig))
                extra = self.side_out(side)
            out.append(self.logits_from(self.fuse_memory(query_features[:, p:p + 1], reads, extra)))
        return torch.stack(out, dim=2)

    @torch.no_grad()
    def recall(self, tokens: torch.Tensor, probe_keys: torch.Tensor, layout: TokenLayout | None = None):
        """What the memory and the sidecar would answer, after every position, if asked about each
        probe key: like :meth:`SlotMemoryModel.recall`, the query is made from a cell of filler
        and ``ASK k`` seen alone (so the local attention cannot see the sequence) and reads the
        memory and sidecar of ``tokens`` (:meth:`probe_logits`). tokens: (batch, seq_len);
        probe_keys: (batch, num_probes). Returns (batch, seq_len, num_probes) predicted token ids.
        Used by :func:`memorylib.analysis.survival`. Introduced in chapter 8."""
        B, P = probe_keys.shape
        hq = self.features(query_snippet(probe_keys, layout))[:, -1].view(B, P, -1)
        return self.probe_logits(tokens, hq).argmax(-1)



MODELS = {
    "full_memory": fixed(FullMemoryModel),
    "no_sidecar": fixed(FullMemoryModel, sidecar=0),
    "full_no_surprise": fixed(FullMemoryModel, surprise=False),
    "full_no_erase": fixed(FullMemoryModel, kind="linear"),
    # chapter 8: what the sidecar keeps, ranked by something other than surprise
    "full_rank_recency": fixed(FullMemoryModel, sidecar_rank="recency"),
    "full_rank_random": fixed(FullMemoryModel, sidecar_rank="random"),
    "full_rank_write": fixed(FullMemoryModel, sidecar_rank="write"),
    # chapter 7: what the sidecar keeps, learned
    "full_learned_keep": fixed(FullMemoryModel, sidecar_rank="learned"),
}
