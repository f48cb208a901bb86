"""The book's models. Introduced in chapter 1 (the transformers) and chapter 2 (the slot memory model).

Every model in the book shares one contract::

    logits = model(tokens)   # tokens: (batch, seq_len) int64 -> logits: (batch, seq_len, vocab_size)

``logits[:, t]`` is the prediction of ``tokens[:, t + 1]`` and depends only on ``tokens[:, :t + 1]``
(causality, tested for every registered model). Loss and accuracy are taken only at the answer
positions of a task's :class:`~memorylib.tasks.Batch`.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention``; positions enter by
rotary embeddings (RoPE), so a model runs at any sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .delta_rule import delta_rule, delta_rule_reference
from .registry import register_model
from .sidecar import SidecarState, sidecar_attention, sidecar_weights
from .slot_memory import SlotMemory, address
from .surprise import SURPRISE_KINDS, momentum_surprise, surprise_gate, token_surprise
from .tasks import TokenLayout
from .ttt import MLPMemoryState, mlp_memory, mlp_memory_reference

DEFAULT_WINDOW = 16


def check_tokens(tokens, vocab_size: int) -> None:
    """Raise a clear ``ValueError`` unless ``tokens`` is a ``(batch, seq_len)`` int64 tensor of ids
    in ``[0, vocab_size)``."""
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"tokens must be a torch.Tensor of shape (batch, seq_len), got {type(tokens).__name__}")
    if tokens.dtype != torch.long:
        raise ValueError(f"tokens must have dtype torch.int64 (long), got {tokens.dtype}")
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must have shape (batch, seq_len) with seq_len >= 1, got {tuple(tokens.shape)}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got values in "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")


def check_window(window) -> None:
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be None (full attention) or an int >= 1, got {window!r}")


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs of channels of ``x: (batch, heads, seq_len, head_dim)`` by position (RoPE)."""
    T, D = x.shape[-2], x.shape[-1]
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32    # float64 models: exact angles
    freqs = base ** (-torch.arange(0, D, 2, dtype=dt, device=x.device) / D)
    angles = torch.arange(T, dtype=dt, device=x.device)[:, None] * freqs[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def window_mask(seq_len: int, window: int, device=None) -> torch.Tensor:
    """``(seq_len, seq_len)`` bool: query ``i`` may attend key ``j`` iff ``i - window < j <= i``."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & (j > i - window)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; ``window`` limits how far back a query looks.

    x: (batch, seq_len, d_model) -> (batch, seq_len, d_model).
    """

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"d_model={d_model} must split into num_heads={num_heads} heads of even size")
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, window: int | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(q), rotary(k)
        if window is None or window >= T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(T, window, x.device))
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, num_heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                 nn.Linear(mlp_ratio * d_model, d_model))

    def forward(self, x: torch.Tensor, window: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), window)
        return x + self.mlp(self.norm2(x))


class LocalFeatures(nn.Module):
    """What every model of the book shares: token embeddings, a mix of the previous token, and
    ``num_layers`` causal attention blocks, each attending to the last ``window`` positions
    (``None``: the whole prefix). ``features(tokens)`` gives ``(batch, seq_len, d_model)``.

    ``window`` is a plain attribute: setting it on a trained model restricts attention at
    evaluation time (chapter 1's window slider). A stack of ``num_layers`` windowed layers sees
    ``receptive_field = num_layers * (window - 1) + 2`` tokens (itself included) at most: each
    layer reaches ``window - 1`` back and the previous-token mix at the input one more.
    """

    def __init__(self, vocab_size: int | None, d_model: int, num_layers: int, num_heads: int,
                 window: int | None, mlp_ratio: int = 4):
        super().__init__()
        vocab_size = TokenLayout().vocab_size if vocab_size is None else vocab_size
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model),
                            ("num_layers", num_layers), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        check_window(window)
        self.vocab_size, self.window = vocab_size, window
        self.embed = nn.Embedding(vocab_size, d_model)
        self.shift = nn.Linear(d_model, d_model, bias=False)
        self.blocks = nn.ModuleList(Block(d_model, num_heads, mlp_ratio) for _ in range(num_layers))

    @property
    def receptive_field(self) -> int | None:
        """How many positions back (itself included) the attention path reaches; None = unbounded."""
        if self.window is None:
            return None
        return len(self.blocks) * (self.window - 1) + 2   # +1 for the previous-token mix

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (batch, seq_len) int64 -> (batch, seq_len, d_model)."""
        check_tokens(tokens, self.vocab_size)
        check_window(self.window)
        x = self.embed(tokens)
        x = x + self.shift(F.pad(x, (0, 0, 1, 0))[:, :-1])   # mix in the previous token
        for block in self.blocks:
            x = block(x, self.window)
        return x


class TinyTransformer(LocalFeatures):
    """A small causal transformer: :class:`LocalFeatures`, then a norm and the output head.
    ``window=None``: full attention; an int: every layer attends to the last ``window`` positions.
    """

    def __init__(self, vocab_size: int | None = None, d_model: int = 64, num_layers: int = 2,
                 num_heads: int = 4, window: int | None = None, mlp_ratio: int = 4):
        super().__init__(vocab_size, d_model, num_layers, num_heads, window, mlp_ratio)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, self.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(tokens)))


@register_model("tiny_transformer")
def tiny_transformer(**kwargs) -> TinyTransformer:
    """Full causal attention over the whole sequence."""
    if kwargs.get("window") is not None:
        raise ValueError("tiny_transformer has full attention; use local_transformer for a window")
    return TinyTransformer(**kwargs)


@register_model("local_transformer")
def local_transformer(window: int = DEFAULT_WINDOW, **kwargs) -> TinyTransformer:
    """The same transformer with every layer restricted to the last ``window`` positions."""
    if window is None:
        raise ValueError("local_transformer needs an int window >= 1; use tiny_transformer for full attention")
    return TinyTransformer(window=window, **kwargs)


# --- slot memory models (chapters 2-3) ---------------------------------------------------------


def query_snippet(probe_keys: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
    """The question a ``recall`` probe asks, seen alone: one cell of filler, then ``ASK k``, for every
    probe key. probe_keys: (B, P) -> (B * P, 5) token ids. Introduced in chapter 3."""
    layout = layout or TokenLayout()
    n = probe_keys.numel()
    filler = torch.arange(3) % layout.num_filler + layout.filler_start
    return torch.cat([filler.expand(n, 3), torch.full((n, 1), layout.ASK), probe_keys.reshape(n, 1)], dim=1)


class SlotMemoryModel(LocalFeatures):
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
        self.fuse = nn.Linear(memory_heads * slot_dim, d_model)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, self.vocab_size, bias=False)

    @property
    def num_slots(self) -> int:
        return self.memory.num_slots

    @num_slots.setter
    def num_slots(self, value: int) -> None:
        self.memory.num_slots = value

    def predict_from(self, h: torch.Tensor, reads: torch.Tensor) -> torch.Tensor:
        """Fuse memory reads ``(..., heads * slot_dim)`` into features ``(..., d_model)``; logits."""
        x = h + self.fuse(reads)
        x = x + self.mlp(self.norm_mlp(x))
        return self.head(self.norm(x))

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
        hp = self.features(query_snippet(probe_keys, layout))[:, -1].view(B, P, -1)   # (B, P, d_model)
        pr = self.memory.projections(hp)
        mem = self.memory
        q = pr["query"].reshape(B, 1, P * mem.num_heads, mem.slot_dim)
        qn = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        kn = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        scores = (qn @ kn.transpose(-1, -2)).view(B, -1, P, mem.num_heads, mem.num_slots)
        w = address(scores, mem.log_sharpness.exp()[:, None], mem.top_k)   # (B, T, P, H, S)
        raw = torch.einsum("btphs,btsd->btphd", w, values)
        r = mem.gated_reads(raw, pr["read_gate"][:, None, :].expand(-1, raw.shape[1], -1))
        logits = self.predict_from(hp[:, None].expand(-1, r.shape[1], -1, -1), r)
        return logits.argmax(-1)


def _fixed(cls, **defaults):
    """A factory for ``cls`` with some options fixed (an ablation registered by name)."""
    def factory(**kwargs):
        for key in defaults:
            if key in kwargs and kwargs[key] != defaults[key]:
                raise ValueError(f"this model fixes {key}={defaults[key]!r}; got {key}={kwargs[key]!r}")
        return cls(**{**defaults, **kwargs})
    return factory


def _slot(**defaults):
    return _fixed(SlotMemoryModel, **defaults)


register_model("slot_memory")(_slot())
register_model("no_forget")(_slot(fixed_erase=0.0))
register_model("fifo_memory")(_slot(write_policy="fifo"))
register_model("random_write")(_slot(write_policy="random"))
register_model("lru_memory")(_slot(write_policy="lru"))
register_model("topk_lru_memory")(_slot(memory_heads=4, top_k=2, write_policy="lru", bottleneck=16,
                                        utilization_weight=0.1))


# --- surprise (chapter 4) --------------------------------------------------------------------


def prediction_loss(logits: torch.Tensor, tokens: torch.Tensor, weight: float):
    """``weight`` times the next-token cross-entropy of a prediction head (``logits[:, t]``
    predicts ``tokens[:, t + 1]``), or None when there is nothing to train: gradients off, weight
    0 or a single token. The auxiliary loss of the surprise models (chapters 4 and 7)."""
    if not torch.is_grad_enabled() or weight <= 0 or tokens.shape[1] < 2:
        return None
    return weight * F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


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
        if kind not in SURPRISE_KINDS:
            raise ValueError(f"kind must be one of {SURPRISE_KINDS}, got {kind!r}")
        if not (isinstance(aux_weight, (int, float)) and aux_weight >= 0):
            raise ValueError(f"aux_weight must be a number >= 0, got {aux_weight!r}")
        momentum_surprise(torch.zeros(1, 1), momentum)            # validates momentum
        surprise_gate(torch.zeros(1), threshold, temperature)     # validates threshold, temperature
        self.surprise, self.kind, self.momentum = bool(surprise), kind, float(momentum)
        self.threshold, self.temperature, self.aux_weight = float(threshold), float(temperature), float(aux_weight)
        d_model = self.embed.embedding_dim
        self.predictor = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, self.vocab_size))
        self._aux = None

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
        self._aux = prediction_loss(sig["logits"], tokens, self.aux_weight)
        if trace is not None:
            trace.update(surprise=sig["surprise"], carried=sig["carried"], surprise_gate=sig["gate"])
        return sig["gate"] if self.surprise else None

    def auxiliary_loss(self) -> torch.Tensor:
        """The memory's utilization loss plus the next-token loss of the prediction head for the
        last forward pass with gradients on."""
        aux = super().auxiliary_loss()
        return aux if self._aux is None else aux + self._aux


def _surprise(**defaults):
    return _fixed(SurpriseMemoryModel, **defaults)


register_model("surprise_memory")(_surprise())
register_model("no_surprise")(_surprise(surprise=False))
register_model("momentum_surprise")(_surprise(momentum=0.5))
register_model("surprise_only")(_surprise(fixed_write=1.0))


# --- memories that learn: delta rule and MLP memory (chapters 5-6) -----------------------------

MEMORY_KINDS = ("linear", "delta", "mlp")


class LearnedMemoryModel(LocalFeatures):
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
    token-by-token form instead of the chunked one. ``model(tokens, return_trace=True)`` gives
    ``(logits, trace)`` with per-head ``lr``, ``retain``, ``momentum`` (each (batch, heads,
    seq_len), or None) and ``reads``.
    """

    def __init__(self, vocab_size: int | None = None, d_model: int = 64, num_layers: int = 1,
                 num_heads: int = 4, window: int = DEFAULT_WINDOW, kind: str = "delta", memory_heads: int = 1,
                 key_dim: int = 32, value_dim: int = 32, hidden: int = 32, forget: bool = False,
                 momentum: bool = False, max_lr: float = 0.1, chunk_size: int = 16, reference: bool = False):
        if window is None:
            raise ValueError("a memory model needs an int window >= 1 for its local attention")
        super().__init__(vocab_size, d_model, num_layers, num_heads, window)
        if kind not in MEMORY_KINDS:
            raise ValueError(f"kind must be one of {MEMORY_KINDS}, got {kind!r}")
        for name, value in (("memory_heads", memory_heads), ("key_dim", key_dim), ("value_dim", value_dim),
                            ("hidden", hidden), ("chunk_size", chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if momentum and kind != "mlp":
            raise ValueError(f"momentum applies to kind='mlp' only, got kind={kind!r}")
        if not (isinstance(max_lr, (int, float)) and max_lr > 0):
            raise ValueError(f"max_lr must be a number > 0, got {max_lr!r}")
        self.kind, self.memory_heads, self.key_dim, self.value_dim = kind, memory_heads, key_dim, value_dim
        self.forget, self.use_momentum, self.max_lr = bool(forget), bool(momentum), float(max_lr)
        self.chunk_size, self.reference = chunk_size, bool(reference)
        H = memory_heads
        self.qkv = nn.Linear(d_model, H * (2 * key_dim + value_dim))
        self.gates = nn.Linear(d_model, 3 * H)          # learning rate, retention, momentum logits
        with torch.no_grad():
            self.gates.bias[H:2 * H].fill_(4.0)         # retention starts at sigmoid(4) = 0.98
        if kind == "mlp":
            self.w1 = nn.Parameter(torch.randn(H, hidden, key_dim) / key_dim ** 0.5)
            self.w2 = nn.Parameter(torch.randn(H, value_dim, hidden) / hidden ** 0.5)
        self.fuse = nn.Linear(H * value_dim, d_model)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, self.vocab_size, bias=False)

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
            return mlp_memory(*args, state=state, chunk_size=self.chunk_size)
        args = (x["q"], x["k"], x["v"], x["lr"], x["retain"], state)
        if self.reference:
            return delta_rule_reference(*args, erase=self.kind == "delta")
        return delta_rule(*args, chunk_size=self.chunk_size, erase=self.kind == "delta")

    def forward(self, tokens: torch.Tensor, return_trace: bool = False):
        h = self.features(tokens)
        x = self.memory_inputs(h)
        reads, _ = self.read_memory(x)
        r = F.layer_norm(reads, reads.shape[-1:])                    # per head: zero mean, unit variance
        r = r.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1)
        y = h + self.fuse(r)
        y = y + self.mlp(self.norm_mlp(y))
        logits = self.head(self.norm(y))
        if return_trace:
            return logits, {"lr": x["lr"], "retain": x["retain"], "momentum": x["momentum"], "reads": reads}
        return logits


def _learned(**defaults):
    return _fixed(LearnedMemoryModel, **defaults)


register_model("linear_memory")(_learned(kind="linear"))
register_model("delta_memory")(_learned(kind="delta"))
register_model("gated_delta_memory")(_learned(kind="delta", forget=True))
register_model("mlp_memory")(_learned(kind="mlp"))
register_model("titans_memory")(_learned(kind="mlp", forget=True, momentum=True))


# --- the full model: local attention, learned memory, surprise gate, sidecar (chapters 7-8) -----


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
        mem = self.memory.nbytes() if isinstance(self.memory, MLPMemoryState) else self.memory.numel() * self.memory.element_size()
        side = self.sidecar.nbytes() if self.sidecar is not None else 0
        return self.context.numel() * self.context.element_size() + mem + side


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
      at any length of the stream.

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
                 temperature: float = 0.1, aux_weight: float = 0.1, sidecar_dim: int = 32, **kwargs):
        super().__init__(**kwargs)
        for name, value, low in (("sidecar", sidecar, 0), ("sidecar_dim", sidecar_dim, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not (isinstance(aux_weight, (int, float)) and aux_weight >= 0):
            raise ValueError(f"aux_weight must be a number >= 0, got {aux_weight!r}")
        surprise_gate(torch.zeros(1), threshold, temperature)     # validates threshold, temperature
        self.sidecar, self.surprise = sidecar, bool(surprise)
        self.threshold, self.temperature, self.aux_weight = float(threshold), float(temperature), float(aux_weight)
        self.sidecar_dim = sidecar_dim
        d_model = self.embed.embedding_dim
        self.predictor = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, self.vocab_size))
        self.side_qkv = nn.Linear(d_model, 3 * sidecar_dim)
        self.side_scale = nn.Parameter(torch.tensor(2.0))         # log of the query scale: e^2 ~ 7.4
        self.side_out = nn.Linear(sidecar_dim, d_model)
        self._aux = None

    def _signals(self, tokens: torch.Tensor, h: torch.Tensor) -> dict:
        logits = self.predictor(h)
        s = token_surprise(logits.detach(), tokens, "nll")
        gate = surprise_gate(1 - torch.exp(-s), self.threshold, self.temperature)
        return {"logits": logits, "surprise": s, "gate": gate}

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

    def _run(self, h, sig, memory_state=None, sidecar_state=None, streaming=False):
        """From features ``h`` and surprise signals to the pre-head activations: the gated memory
        and the sidecar read and fused. Returns ``(y, memory inputs, memory reads, sidecar reads,
        memory state, sidecar state)``; the states are carried only when ``streaming``."""
        x = self._gated_inputs(h, sig)
        reads, memory_state = self.read_memory(x, memory_state)
        r = F.layer_norm(reads, reads.shape[-1:])
        r = r.transpose(1, 2).reshape(h.shape[0], h.shape[1], -1)
        y = h + self.fuse(r)
        side = None
        if self.sidecar > 0:
            q, k, v = self._side_inputs(h)
            if streaming:
                side, sidecar_state = sidecar_attention(q, k, v, sig["surprise"], self.sidecar, state=sidecar_state,
                                                        return_state=True)
            else:
                side = sidecar_attention(q, k, v, sig["surprise"], self.sidecar)
            y = y + self.side_out(side)
        y = y + self.mlp(self.norm_mlp(y))
        return y, x, reads, side, memory_state, sidecar_state

    def forward(self, tokens: torch.Tensor, return_trace: bool = False):
        h = self.features(tokens)
        sig = self._signals(tokens, h)
        self._aux = prediction_loss(sig["logits"], tokens, self.aux_weight)
        y, x, reads, side, _, _ = self._run(h, sig)
        logits = self.head(self.norm(y))
        if return_trace:
            read = source = None
            if self.sidecar > 0:
                with torch.no_grad():
                    weights, empty = sidecar_weights(*self._side_inputs(h), sig["surprise"], self.sidecar)
                read = 1 - empty                                      # how much came from cached tokens
                top = weights.max(-1)
                source = torch.where(top.values > empty, top.indices, -1).to(h.dtype)
            return logits, {"surprise": sig["surprise"], "surprise_gate": sig["gate"], "lr": x["lr"],
                            "retain": x["retain"], "reads": reads, "sidecar_read": read, "sidecar_from": source}
        return logits

    def auxiliary_loss(self) -> torch.Tensor:
        """The prediction head's next-token loss for the last forward pass with gradients on."""
        return torch.zeros(()) if self._aux is None else self._aux

    @torch.no_grad()
    def stream(self, tokens: torch.Tensor, state: FullStreamState | None = None, last_only: bool = False):
        """Process the next piece ``tokens: (B, P)`` of a stream; returns ``(logits, state)``, where
        ``logits`` is ``(B, P, vocab)`` (``(B, 1, vocab)`` for the piece's last token with
        ``last_only=True``, which skips the output head elsewhere). Feeding a sequence in pieces
        gives the logits of one call; the state's size is the same after any number of tokens."""
        check_tokens(tokens, self.vocab_size)
        B, P = tokens.shape
        if state is not None and state.context.shape[0] != B:
            raise ValueError(f"the state is for a batch of {state.context.shape[0]}, got {B} sequences")
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
        y, _, _, _, memory, sidecar = self._run(h, sig, memory, sidecar, streaming=True)
        if last_only:
            y = y[:, -1:]
        logits = self.head(self.norm(y))
        keep = self.receptive_field
        new = FullStreamState(full[:, -keep:], memory, sidecar, (state.seen if state else 0) + P)
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
            r = F.layer_norm(reads, reads.shape[-1:]).transpose(1, 2).reshape(B, T, -1)
            y = query_features[:, p:p + 1] + self.fuse(r)
            if self.sidecar > 0:
                side = sidecar_attention(qs[:, p:p + 1].expand(-1, T, -1), ks, vs, sig["surprise"], self.sidecar)
                y = y + self.side_out(side)
            y = y + self.mlp(self.norm_mlp(y))
            out.append(self.head(self.norm(y)))
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


def _full(**defaults):
    return _fixed(FullMemoryModel, **defaults)


register_model("full_memory")(_full())
register_model("no_sidecar")(_full(sidecar=0))
register_model("full_no_surprise")(_full(surprise=False))
register_model("full_no_erase")(_full(kind="linear"))
