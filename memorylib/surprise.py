"""Surprise: how unexpected a token was, measured *before* the memory sees it. Introduced in
chapter 4.

A next-token prediction head reads the local features at ``t - 1`` (which depend on tokens
``<= t - 1`` only) and predicts ``x_t``; it is trained on every position by an auxiliary
next-token loss, so its predictions mean something everywhere, not only at the answers. The
surprise of token ``t`` is taken from that earlier prediction::

    s_t = 1 - p_{t-1}(x_t)          (kind "prob": in [0, 1])
    s_t = -log p_{t-1}(x_t)         (kind "nll":  in [0, inf))

and the first token, which nothing predicts, gets the surprise of a uniform guess
(``1 - 1/V`` or ``log V``). The *momentum* form carries past surprise with a decay, as in
Titans (Behrouz et al. 2025), where past surprise is the momentum of the memory's gradient::

    S_t = eta * S_{t-1} + s_t          (eta = 0: the plain form)

A surprise gate turns it into a write strength, ``sigmoid((S_t - threshold) / temperature)``,
that multiplies the memory's write gate.

The surprise is computed from detached logits: the answer loss cannot teach the prediction head
to be "surprised" on purpose, which would make it one more learned write gate. Only the
auxiliary next-token loss trains the head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import check_choice, check_number

SURPRISE_KINDS = ("prob", "nll")


def token_surprise(logits: torch.Tensor, tokens: torch.Tensor, kind: str = "prob") -> torch.Tensor:
    """Surprise of every token under the prediction made one step earlier.

    logits: (batch, seq_len, vocab) where ``logits[:, t]`` predicts ``tokens[:, t + 1]``;
    tokens: (batch, seq_len) int64. Returns (batch, seq_len): ``s_0`` is the surprise of a uniform
    guess and ``s_t`` (t >= 1) uses only ``logits[:, t - 1]`` and ``tokens[:, t]``, so it never
    depends on a token after ``t``.
    """
    check_choice("surprise kind", kind, SURPRISE_KINDS)
    if logits.dim() != 3 or tokens.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (batch, seq_len, vocab) and tokens (batch, seq_len); got "
                         f"{tuple(logits.shape)} and {tuple(tokens.shape)}")
    V = logits.shape[-1]
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    first = torch.full((logp.shape[0], 1), -math.log(V), dtype=logp.dtype, device=logp.device)
    logp = torch.cat([first, logp], dim=1).to(logits.dtype)
    return -logp if kind == "nll" else 1 - logp.exp()


def momentum_surprise(surprise: torch.Tensor, momentum: float) -> torch.Tensor:
    """``S_t = momentum * S_{t-1} + s_t`` along the last dimension (``S_{-1} = 0``).

    surprise: (..., seq_len). ``momentum = 0`` returns the input unchanged.
    """
    check_number("momentum", momentum, 0, 1, high_open=True)
    if momentum == 0 or surprise.shape[-1] == 0:
        return surprise
    out, carry = [], torch.zeros_like(surprise[..., 0])
    for t in range(surprise.shape[-1]):
        carry = momentum * carry + surprise[..., t]
        out.append(carry)
    return torch.stack(out, dim=-1)


def surprise_gate(surprise: torch.Tensor, threshold: float, temperature: float) -> torch.Tensor:
    """Write strength from surprise: ``sigmoid((surprise - threshold) / temperature)`` in (0, 1)."""
    check_number("temperature", temperature, 0, low_open=True)
    check_number("threshold", threshold)
    return torch.sigmoid((surprise - threshold) / temperature)
