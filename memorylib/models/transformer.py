"""The transformers of chapter 1, and the local attention every model of the book is built on.

Every model in the book shares one contract::

    logits = model(tokens)   # tokens: (batch, seq_len) int64 -> logits: (batch, seq_len, vocab_size)

``logits[:, t]`` is the prediction of ``tokens[:, t + 1]`` and depends only on ``tokens[:, :t + 1]``
(causality, tested for every registered model). Loss and accuracy are taken only at the answer
positions of a task's :class:`~memorylib.tasks.Batch`.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention``; positions enter by
rotary embeddings (RoPE; ``nope_transformer`` has none), so a model runs at any sequence length.
:class:`LocalFeatures` (token embeddings, a previous-token mix, windowed attention blocks) is the
front of every model; the memory models (:mod:`.slots`, :mod:`.learned`, :mod:`.full`) add a
memory and a read-out behind it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_int, check_tokens
from ..tasks import TokenLayout

DEFAULT_WINDOW = 16
POSITIONS = ("rope", "none")   # rotary embeddings, or no positional encoding at all (NoPE)


def check_window(window) -> None:
    """Raise a clear ``ValueError`` unless ``window`` is None (full attention) or an int >= 1."""
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
    """Multi-head causal self-attention; ``window`` limits how far back a query looks. Positions
    enter by rotary embeddings, or not at all (``rotary=False``: NoPE, where the causal mask alone
    tells a query how far along it is).

    x: (batch, seq_len, d_model) -> (batch, seq_len, d_model).
    """

    def __init__(self, d_model: int, num_heads: int, rotary: bool = True):
        super().__init__()
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(f"d_model={d_model} must split into num_heads={num_heads} heads of even size")
        self.num_heads, self.rotary = num_heads, bool(rotary)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, window: int | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.rotary:
            q, k = rotary(q), rotary(k)
        if window is None or window >= T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=window_mask(T, window, x.device))
        return self.out(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int = 4, rotary: bool = True):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, num_heads, rotary)
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
                 window: int | None, mlp_ratio: int = 4, positions: str = "rope"):
        super().__init__()
        vocab_size = TokenLayout().vocab_size if vocab_size is None else vocab_size
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model),
                            ("num_layers", num_layers), ("num_heads", num_heads)):
            check_int(name, value, 1)
        check_window(window)
        self.positions = check_choice("positions", positions, POSITIONS)
        self.vocab_size, self.window = vocab_size, window
        self.embed = nn.Embedding(vocab_size, d_model)
        self.shift = nn.Linear(d_model, d_model, bias=False)
        self.blocks = nn.ModuleList(Block(d_model, num_heads, mlp_ratio, positions == "rope")
                                    for _ in range(num_layers))

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
                 num_heads: int = 4, window: int | None = None, mlp_ratio: int = 4, positions: str = "rope"):
        super().__init__(vocab_size, d_model, num_layers, num_heads, window, mlp_ratio, positions)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, self.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.features(tokens)))




def tiny_transformer(**kwargs) -> TinyTransformer:
    """Full causal attention over the whole sequence."""
    if kwargs.get("window") is not None:
        raise ValueError("tiny_transformer has full attention; use local_transformer for a window")
    return TinyTransformer(**kwargs)


def local_transformer(window: int = DEFAULT_WINDOW, **kwargs) -> TinyTransformer:
    """The same transformer with every layer restricted to the last ``window`` positions."""
    if window is None:
        raise ValueError("local_transformer needs an int window >= 1; use tiny_transformer for full attention")
    return TinyTransformer(window=window, **kwargs)


def nope_transformer(**kwargs) -> TinyTransformer:
    """Full causal attention with no positional encoding (NoPE): a length baseline whose positions
    do not rotate past what it was trained on. Introduced in chapter 8."""
    if kwargs.get("positions", "none") != "none":
        raise ValueError(f"this model fixes positions='none'; got positions={kwargs['positions']!r}")
    return tiny_transformer(**{**kwargs, "positions": "none"})


MODELS = {"tiny_transformer": tiny_transformer, "local_transformer": local_transformer,
          "nope_transformer": nope_transformer}
