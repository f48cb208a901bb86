"""What every memory model of the book shares behind its memory: the read-out and the surprise head.

A memory model is :class:`~memorylib.models.transformer.LocalFeatures` (windowed attention gives
features ``h``), a memory written from ``h`` and read at every position, and one read-out::

    y = h + fuse(reads) [+ other reads]        # residual: the memory's answer joins the features
    y = y + mlp(norm_mlp(y))
    logits = head(norm(y))

:class:`MemoryModel` builds these modules (:meth:`~MemoryModel.add_readout`) and runs them
(:meth:`~MemoryModel.fuse_reads`, :meth:`~MemoryModel.logits_from`). The surprise models (chapters 4
and 7) add a prediction head that reads ``h_{t-1}`` and predicts ``x_t``, trained by an auxiliary
next-token loss (:meth:`~MemoryModel.add_surprise_head`, :func:`prediction_loss`).

The attribute names (``fuse``, ``norm_mlp``, ``mlp``, ``norm``, ``head``, ``predictor``) and the
order the modules are built in are those of every committed checkpoint: the same seed gives the
same initial weights, and every saved ``state_dict`` loads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_number
from .transformer import LocalFeatures


def prediction_loss(logits: torch.Tensor, tokens: torch.Tensor, weight: float):
    """``weight`` times the next-token cross-entropy of a prediction head (``logits[:, t]``
    predicts ``tokens[:, t + 1]``), or None when there is nothing to train: gradients off, weight
    0 or a single token. The auxiliary loss of the surprise models (chapters 4 and 7)."""
    if not torch.is_grad_enabled() or weight <= 0 or tokens.shape[1] < 2:
        return None
    return weight * F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


class MemoryModel(LocalFeatures):
    """:class:`LocalFeatures` with a memory beside it; subclasses build the memory, then call
    :meth:`add_readout` with the width of what the memory reads."""

    def add_readout(self, read_dim: int) -> None:
        """The read-out's modules: ``fuse`` (reads -> d_model), ``norm_mlp`` and ``mlp``, ``norm``
        and the output ``head``."""
        d_model = self.embed.embedding_dim
        self.fuse = nn.Linear(read_dim, d_model)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, self.vocab_size, bias=False)

    def fuse_reads(self, h: torch.Tensor, reads: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Features ``h (..., d_model)`` with the memory's ``reads (..., read_dim)`` (and ``extra``,
        another read already in ``d_model``, e.g. the sidecar's) added, then the MLP: the
        activations the output head reads."""
        y = h + self.fuse(reads)
        if extra is not None:
            y = y + extra
        return y + self.mlp(self.norm_mlp(y))

    def logits_from(self, y: torch.Tensor) -> torch.Tensor:
        """The output head on activations from :meth:`fuse_reads`."""
        return self.head(self.norm(y))

    def predict_from(self, h: torch.Tensor, reads: torch.Tensor) -> torch.Tensor:
        """Logits from features ``h`` and the memory's reads: :meth:`fuse_reads`, then the head."""
        return self.logits_from(self.fuse_reads(h, reads))

    # --- the surprise head (chapters 4 and 7) ---

    def add_surprise_head(self, threshold: float, temperature: float, aux_weight: float) -> None:
        """A prediction head ``predictor`` (``h_{t-1}`` -> logits for ``x_t``) and the settings of
        the gate built from its surprise: ``sigmoid((S - threshold) / temperature)``; the head is
        trained by :func:`prediction_loss` with weight ``aux_weight``."""
        self.threshold = check_number("threshold", threshold)
        self.temperature = check_number("temperature", temperature, 0, low_open=True)
        self.aux_weight = check_number("aux_weight", aux_weight, 0)
        d_model = self.embed.embedding_dim
        self.predictor = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, self.vocab_size))
        self._aux = None

    def train_surprise_head(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """Keep the head's next-token loss of this forward pass for :meth:`auxiliary_loss`."""
        self._aux = prediction_loss(logits, tokens, self.aux_weight)


def fixed(cls, **defaults):
    """A factory for ``cls`` with some options fixed (an ablation registered by name); giving a
    fixed option another value is an error, never silently overridden."""
    def factory(**kwargs):
        for key in defaults:
            if key in kwargs and kwargs[key] != defaults[key]:
                raise ValueError(f"this model fixes {key}={defaults[key]!r}; got {key}={kwargs[key]!r}")
        return cls(**{**defaults, **kwargs})
    return factory
