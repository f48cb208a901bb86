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


@torch.no_grad()
def survival(model, task, num_examples: int = 256, seed: int = 0, batch_size: int = 32,
             max_delta: int | None = None, bin_width: int = 3) -> dict:
    """How long a written fact stays retrievable, for facts still true and facts overwritten.
    Introduced in chapter 3.

    On held-out sequences of ``task`` (drawn like :func:`memorylib.training.predict` draws
    them), every fact cell ``SET k v`` (value at position ``p``) is followed forward: at each
    later position ``p + delta`` the memory is probed with ``model.recall`` ("what would you
    answer to ``ASK k`` now?"). The fact is *live* there if no later ``SET k`` came at or before
    ``p + delta``, *overwritten* otherwise. Returns, per bin of ``bin_width`` tokens of delta,
    the share of probes that returned ``v`` (``p``), their count ``n`` and a 95 % Wilson interval,
    for both statuses; JSON-ready.
    """
    from .stats import wilson_interval
    from .tasks import derive_seed, make_generator

    layout = task.layout
    gen = make_generator(derive_seed(seed, "eval"))
    T = task.seq_len
    max_delta = T if max_delta is None else max_delta
    num_bins = max_delta // bin_width + 1
    hits = {s: torch.zeros(num_bins) for s in ("live", "overwritten")}
    counts = {s: torch.zeros(num_bins) for s in ("live", "overwritten")}
    done, facts = 0, 0
    while done < num_examples:
        n = min(batch_size, num_examples - done)
        tokens = task.sample(n, gen).tokens
        cells = tokens.view(n, -1, 3)[:, : T // 3]                          # (n, cells, 3)
        is_set = cells[:, :, 0] == layout.SET
        # the distinct keys set in each sequence, padded by repeating the first one
        key_lists = [sorted(set(cells[b, is_set[b], 1].tolist())) for b in range(n)]
        width = max(len(k) for k in key_lists)
        probe = torch.tensor([k + [k[0]] * (width - len(k)) for k in key_lists])
        answers = model.recall(tokens, probe, layout)                        # (n, T, P)
        # one row per fact: sequence b, probe column, value v, position p, when it was overwritten
        b_idx, c_idx = is_set.nonzero(as_tuple=True)
        keys, vals = cells[b_idx, c_idx, 1], cells[b_idx, c_idx, 2]
        col = torch.tensor([key_lists[b].index(k) for b, k in zip(b_idx.tolist(), keys.tolist())])
        pos = 3 * c_idx + 2
        same = (b_idx[:, None] == b_idx[None, :]) & (keys[:, None] == keys[None, :]) & (pos[None, :] > pos[:, None])
        overwritten_at = torch.where(same, pos[None, :], torch.full_like(same, T, dtype=torch.long)).min(dim=1).values
        delta = torch.arange(max_delta + 1)
        at = pos[:, None] + delta[None, :]                                    # (facts, deltas)
        inside = at < T
        got = answers[b_idx[:, None], at.clamp(max=T - 1), col[:, None]] == vals[:, None]
        live = at < overwritten_at[:, None]
        bins = (delta // bin_width).expand_as(at)
        for status, mask in (("live", inside & live), ("overwritten", inside & ~live)):
            hits[status].index_add_(0, bins[mask], got[mask].float())
            counts[status].index_add_(0, bins[mask], torch.ones(int(mask.sum())))
        facts += len(b_idx)
        done += n
    out = {"delta": [i * bin_width for i in range(num_bins)], "bin_width": bin_width, "num_facts": facts,
           "num_examples": num_examples}
    for status in ("live", "overwritten"):
        k, n = hits[status].long().tolist(), counts[status].long().tolist()
        ci = [wilson_interval(a, b) if b else (0.0, 0.0) for a, b in zip(k, n)]
        out[status] = {"p": [round(a / b, 4) if b else 0.0 for a, b in zip(k, n)], "n": n,
                       "ci_low": [round(c[0], 4) for c in ci], "ci_high": [round(c[1], 4) for c in ci]}
    return out
