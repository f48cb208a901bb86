"""The book's models, one family per file, each readable in one sitting.

* :mod:`.transformer`: the contract every model keeps (``logits = model(tokens)``, causal), the
  rotary attention blocks, :class:`LocalFeatures` (the front of every model) and chapter 1's two
  transformers;
* :mod:`.base`: what the memory models share behind their memory: one read-out and the surprise
  head;
* :mod:`.slots`: the slot memory models of chapters 2 to 4;
* :mod:`.learned`: the memories written by gradient steps, chapters 5 and 6;
* :mod:`.full`: the full model of chapters 7 and 8.

:data:`MODELS` maps every registered name to its factory (:mod:`memorylib.registry` builds from
it); the names below are importable from ``memorylib.models`` as before the split.
"""

from ..checks import check_tokens
from . import full, learned, slots, transformer
from .base import MemoryModel, fixed, prediction_loss
from .full import FullMemoryModel, FullRun, FullStreamState
from .learned import MEMORY_KINDS, LearnedMemoryModel
from .slots import SlotMemoryModel, SurpriseMemoryModel, query_snippet
from .transformer import (
                          DEFAULT_WINDOW,
                          Block,
                          CausalSelfAttention,
                          LocalFeatures,
                          TinyTransformer,
                          check_window,
                          local_transformer,
                          rotary,
                          tiny_transformer,
                          window_mask,
)

MODELS = {**transformer.MODELS, **slots.MODELS, **learned.MODELS, **full.MODELS}
"""Every model of the book by its registry name."""

__all__ = ["DEFAULT_WINDOW", "MEMORY_KINDS", "MODELS", "Block", "CausalSelfAttention", "FullMemoryModel", "FullRun",
           "FullStreamState", "LearnedMemoryModel", "LocalFeatures", "MemoryModel", "SlotMemoryModel",
           "SurpriseMemoryModel", "TinyTransformer", "check_tokens", "check_window", "fixed", "local_transformer",
           "prediction_loss", "query_snippet", "rotary", "tiny_transformer", "window_mask"]
