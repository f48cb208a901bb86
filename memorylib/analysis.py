"""Measurements of what a memory did: slot statistics from a trace. Introduced in chapter 2.

Every function takes the trace of :meth:`memorylib.slot_memory.SlotMemory.forward`
(``model(tokens, return_trace=True)``) or a model, and returns plain numbers ready for JSON.
"""

from __future__ import annotations

import math

import torch

from .slot_memory import slot_usage_entropy


@torch.no_grad()
def slot_statistics(trace: dict) -> dict:
    """Summary numbers of one traced batch.

    * ``write_entropy``: normalised entropy (0..1) of how all write mass is shared among slots
      (1: every slot written equally; 0: one slot takes every write: addressing collapse);
    * ``read_entropy``: normalised entropy of the read weights, averaged over the tokens that
      read (read gate > 0.5); 0: each read looks at one slot, 1: reads are spread evenly;
    * ``mean_lifetime``: tokens a slot's content had lived when it was written over (the age of
      each written slot, weighted by write mass);
    * ``writes_per_token``: mean write mass per token (1 = a full write at every token);
    * ``write_share``: the fraction of all write mass that went to each slot.
    """
    write, read, age = trace["write"], trace["read"], trace["age_before"]
    S = write.shape[-1]
    r = lambda x: round(float(x), 4)  # noqa: E731
    reading = trace["read_gate"] > 0.5
    if bool(reading.any()) and S > 1:
        w = read[reading] / read[reading].sum(-1, keepdim=True).clamp_min(1e-12)
        read_entropy = float((-(w * w.clamp_min(1e-12).log()).sum(-1) / math.log(S)).mean())
    else:
        read_entropy = float("nan")
    share = write.reshape(-1, S).sum(0)
    share = share / share.sum().clamp_min(1e-12)
    return {
        "write_entropy": r(slot_usage_entropy(write)),
        "read_entropy": r(read_entropy),
        "mean_lifetime": r((write * age).sum() / write.sum().clamp_min(1e-12)),
        "writes_per_token": r(write.sum(-1).mean()),
        "write_share": [r(x) for x in share],
    }


@torch.no_grad()
def slot_monitor(model, batch) -> dict:
    """For ``train(monitor=slot_monitor)``: the scalar :func:`slot_statistics` of ``model`` on
    the training batch, run in eval mode without gradients."""
    was_training = model.training
    model.eval()
    _, trace = model(batch.tokens, return_trace=True)
    model.train(was_training)
    return {k: v for k, v in slot_statistics(trace).items() if not isinstance(v, list)}
