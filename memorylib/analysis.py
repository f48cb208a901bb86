"""Measurements of what a memory did. Introduced in chapter 2 (slot statistics) and chapter 3
(survival of written facts).

Every function takes the trace of :meth:`memorylib.slot_memory.SlotMemory.forward`
(``model(tokens, return_trace=True)``) or a model, and returns plain numbers ready for JSON.
Shapes: ``B`` sequences, ``T`` tokens, ``S`` slots.
"""

from __future__ import annotations

import math

import torch

from .checks import check_int
from .knobs import eval_mode
from .slot_memory import slot_usage_entropy
from .stats import wilson_interval
from .tasks import CELL, TokenLayout, derive_seed, make_generator


def _round(x) -> float:
    return round(float(x), 4)


def slot_lifetimes(write: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How long the content a write replaces had lived, from write mass alone. Introduced in chapter 2.

    write: (B, T, S) write mass (write gate times write address, ``trace["write"]``). Returns
    ``(lifetime, weight)``, both (B, T, S): ``lifetime[b, t, s]`` is the number of tokens since
    slot ``s`` was last written (a soft count, like the memory's age: a write of mass ``w`` keeps
    a fraction ``1 - w`` of the count), plus one, so a slot rewritten every 4 tokens has lifetime 4;
    ``weight[b, t, s]`` is the write mass at ``t`` times how full the slot was before it
    (``1 - prod(1 - w)`` over earlier writes), so a first write into an empty slot weighs nothing.
    """
    if write.dim() != 3:
        raise ValueError(f"write must have shape (batch, seq_len, num_slots), got {tuple(write.shape)}")
    write = write.float()
    since = torch.zeros_like(write[:, 0])           # (B, S) tokens since the last write
    filled = torch.zeros_like(write[:, 0])          # (B, S) how much content the slot holds
    lifetime, weight = [], []
    for t in range(write.shape[1]):
        w = write[:, t]
        lifetime.append(since + 1)
        weight.append(w * filled)
        since = (since + 1) * (1 - w)
        filled = filled + w * (1 - filled)
    return torch.stack(lifetime, dim=1), torch.stack(weight, dim=1)


@torch.no_grad()
def slot_statistics(trace: dict) -> dict:
    """Summary numbers of one traced batch. Introduced in chapter 2.

    trace: from ``model(tokens, return_trace=True)``; uses ``write``, ``read`` (B, T, S) and
    ``read_gate`` (B, T). Returns floats (rounded to 4 digits) and one list:

    * ``write_entropy``: normalised entropy (0..1) of how all write mass is shared among slots
      (:func:`~memorylib.slot_memory.slot_usage_entropy`; 1: every slot written equally, 0: one
      slot takes every write, i.e. addressing collapse);
    * ``read_entropy``: normalised entropy (0..1) of each token's read distribution over slots
      (the read weights, mean over heads, renormalised), averaged over the tokens that *read*,
      i.e. whose read gate is above 0.5: a token that barely reads says nothing about how focused
      reads are. 0: each read looks at one slot; 1: reads are spread evenly. NaN if no token reads;
      1.0 with a single slot (the convention of ``slot_usage_entropy``);
    * ``mean_lifetime``: how many tokens a slot's content had lived when it was written over
      (:func:`slot_lifetimes`, weighted by write mass; writes into empty slots do not count).
      Computed from the write mass rather than ``trace["age_before"]`` because the memory's age
      is also reset by reads (it is a "least recently *used*" count, not a lifetime). Content still
      alive at the end of the sequence is not counted, so long lifetimes are under-represented in
      short sequences. NaN if nothing was written over;
    * ``writes_per_token``: mean write mass per token (1 = a full write at every token);
    * ``write_share``: list, the fraction of all write mass that went to each slot.
    """
    write, read = trace["write"], trace["read"]
    S = write.shape[-1]
    reading = trace["read_gate"] > 0.5
    if S == 1:
        read_entropy = 1.0
    elif bool(reading.any()):
        w = read[reading] / read[reading].sum(-1, keepdim=True).clamp_min(1e-12)   # (reads, S)
        read_entropy = float((-(w * w.clamp_min(1e-12).log()).sum(-1) / math.log(S)).mean())
    else:
        read_entropy = math.nan
    lifetime, weight = slot_lifetimes(write)
    mass = float(weight.sum())
    mean_lifetime = float((lifetime * weight).sum()) / mass if mass > 1e-12 else math.nan
    share = write.reshape(-1, S).sum(0)
    share = share / share.sum().clamp_min(1e-12)
    return {
        "write_entropy": _round(slot_usage_entropy(write)),
        "read_entropy": _round(read_entropy),
        "mean_lifetime": _round(mean_lifetime),
        "writes_per_token": _round(write.sum(-1).mean()),
        "write_share": [_round(x) for x in share],
    }


@torch.no_grad()
def slot_monitor(model, batch) -> dict:
    """For ``train(monitor=slot_monitor)``: the scalar entries of :func:`slot_statistics` of
    ``model`` on the training batch (``batch.tokens``: (B, T)), run in eval mode without
    gradients; the model's mode is restored afterwards. Introduced in chapter 2."""
    with eval_mode(model):
        _, trace = model(batch.tokens, return_trace=True)
    return {k: v for k, v in slot_statistics(trace).items() if not isinstance(v, list)}


def _latest_set(tokens: torch.Tensor, layout: TokenLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """For every position and key: where the latest ``SET key v`` at or before it put its value,
    and that value. tokens: (B, T) -> two (B, T, num_keys) int64 tensors, -1 before any SET."""
    B, T = tokens.shape
    cells = T // CELL
    pos = torch.full((B, T, layout.num_keys), -1, dtype=torch.long)
    val = torch.full((B, T, layout.num_keys), -1, dtype=torch.long)
    c = tokens[:, : cells * CELL].reshape(B, cells, CELL)
    b, cell = ((c[:, :, 0] == layout.SET) & layout.is_key(c[:, :, 1])).nonzero(as_tuple=True)
    p = CELL * cell + 2                                    # the value token's position
    k = c[b, cell, 1] - layout.key_start
    pos[b, p, k] = p
    val[b, p, k] = c[b, cell, 2]
    pos = pos.cummax(dim=1).values                         # carry the latest SET forward in time
    val = val.gather(1, pos.clamp_min(0))                  # the value stored at that SET
    val = torch.where(pos >= 0, val, torch.full_like(val, -1))
    return pos, val


@torch.no_grad()
def survival(model, task, num_examples: int = 256, seed: int = 0, batch_size: int = 32,
             max_delta: int | None = None, bin_width: int = CELL) -> dict:
    """How long a written fact stays retrievable, for facts still true and facts overwritten.
    Introduced in chapter 3.

    On held-out sequences of ``task`` (a task of fact cells ``SET k v``, such as changing facts,
    drawn from ``derive_seed(seed, "eval")`` like :func:`memorylib.training.predict` draws them),
    every fact cell ``SET k v`` (value token at position ``p``) is followed forward. At each
    ``p + delta < seq_len`` (``0 <= delta <= max_delta``, default ``seq_len``) the memory is
    probed with ``model.recall(tokens, probe_keys)`` (``probe_keys``: (B, P) the distinct keys set
    in each sequence, padded by repeating one; ``recall`` returns (B, T, P) the answer to
    "``ASK k``?" after each position), and the probe is a hit if it returns ``v``. Its status there:

    * ``live``: no later ``SET k`` happened at or before ``p + delta``;
    * ``overwritten``: a later ``SET k w`` did, and the key's value at ``p + delta`` differs from
      ``v``. Probes where a later fact set ``k`` back to ``v`` itself are left out (a hit there is
      right for another reason); their number is ``restated_probes``.

    Deltas are binned in bins of ``bin_width`` tokens (default: one cell). Returns a JSON-ready
    dict: ``delta`` (each bin's first delta), ``bin_width``, and per status ``{"p", "n",
    "ci_low", "ci_high"}``: the share of hits, the number of probes and a 95 % Wilson interval
    per bin (all 0.0 where ``n`` is 0); ``num_facts``, ``num_examples``, ``restated_probes``.
    """
    check_int("num_examples", num_examples, 1)
    check_int("batch_size", batch_size, 1)
    check_int("bin_width", bin_width, 1)
    layout = getattr(task, "layout", None) or TokenLayout()
    T = task.seq_len
    max_delta = T if max_delta is None else check_int("max_delta", max_delta, 0)
    num_bins = max_delta // bin_width + 1
    delta = torch.arange(max_delta + 1)
    bins = delta // bin_width
    hits = {s: torch.zeros(num_bins, dtype=torch.long) for s in ("live", "overwritten")}
    counts = {s: torch.zeros(num_bins, dtype=torch.long) for s in ("live", "overwritten")}
    facts = restated = done = 0
    gen = make_generator(derive_seed(seed, "eval"))
    with eval_mode(model):
        while done < num_examples:
            n = min(batch_size, num_examples - done)
            tokens = task.sample(n, gen).tokens                                     # (n, T)
            latest_pos, latest_val = _latest_set(tokens, layout)                    # (n, T, K)
            cells = tokens[:, : (T // CELL) * CELL].reshape(n, -1, CELL)
            is_fact = (cells[:, :, 0] == layout.SET) & layout.is_key(cells[:, :, 1])
            # probes: the distinct keys set in each sequence, padded by repeating the first
            key_lists = [sorted(set(cells[b, is_fact[b], 1].tolist())) or [layout.key_start] for b in range(n)]
            width = max(len(k) for k in key_lists)
            probe = torch.tensor([k + [k[0]] * (width - len(k)) for k in key_lists])
            answers = model.recall(tokens, probe, layout)
            if tuple(answers.shape) != (n, T, width):
                raise ValueError(f"model.recall must return (batch, seq_len, num_probes) = {(n, T, width)}, "
                                 f"got {tuple(answers.shape)}")
            # one row per fact: sequence b, probe column, key, value, value position p
            b_idx, c_idx = is_fact.nonzero(as_tuple=True)
            keys, vals, pos = cells[b_idx, c_idx, 1], cells[b_idx, c_idx, 2], CELL * c_idx + 2
            col = torch.tensor([key_lists[b].index(k) for b, k in zip(b_idx.tolist(), keys.tolist())],
                               dtype=torch.long)
            at = pos[:, None] + delta[None, :]                                      # (facts, deltas)
            inside = at < T
            t = at.clamp(max=T - 1)
            k = (keys - layout.key_start)[:, None].expand_as(t)
            b = b_idx[:, None].expand_as(t)
            live = latest_pos[b, t, k] == pos[:, None]
            changed = latest_val[b, t, k] != vals[:, None]
            got = answers[b, t, col[:, None].expand_as(t)] == vals[:, None]
            status_bins = bins[None, :].expand_as(t)
            for status, mask in (("live", inside & live), ("overwritten", inside & ~live & changed)):
                counts[status] += torch.bincount(status_bins[mask], minlength=num_bins)
                hits[status] += torch.bincount(status_bins[mask & got], minlength=num_bins)
            restated += int((inside & ~live & ~changed).sum())
            facts += len(b_idx)
            done += n
    out = {"delta": [i * bin_width for i in range(num_bins)], "bin_width": bin_width, "num_facts": facts,
           "num_examples": num_examples, "restated_probes": restated}
    for status in ("live", "overwritten"):
        part = {"p": [], "n": [], "ci_low": [], "ci_high": []}
        for k_, n_ in zip(hits[status].tolist(), counts[status].tolist()):
            lo, hi = wilson_interval(k_, n_) if n_ else (0.0, 0.0)
            for key, value in zip(part, (k_ / n_ if n_ else 0.0, n_, lo, hi)):
                part[key].append(value if key == "n" else _round(value))
        out[status] = part
    return out


# --- what a model writes, by the role of the token (chapter 8) --------------------------------

ROLES = ("fact: SET", "fact: key", "fact: value", "question: ASK", "question: key", "question: answer", "filler")
"""The roles of :func:`token_roles`, in index order."""


def token_roles(tokens: torch.Tensor, layout: TokenLayout | None = None) -> torch.Tensor:
    """The role of every token, as an index into :data:`ROLES`: the three tokens of a fact cell
    ``SET k v``, the three of a question cell ``ASK k v`` (the last is the answer, fed in after
    the model has predicted it), or ``filler``; -1 for anything else (padding, a stray token).
    tokens: (B, T) int64 -> (B, T) int64. Introduced in chapter 8."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape (batch, seq_len), got {tuple(tokens.shape)}")
    layout = layout or TokenLayout()
    B, T = tokens.shape
    roles = torch.full((B, T), -1, dtype=torch.long)
    roles[layout.is_filler(tokens)] = ROLES.index("filler")
    cells = T // CELL
    head = tokens[:, : cells * CELL].reshape(B, cells, CELL)[:, :, 0]            # (B, cells) first token
    for first, offset in ((layout.SET, 0), (layout.ASK, 3)):
        b, c = (head == first).nonzero(as_tuple=True)
        for i in range(CELL):
            roles[b, CELL * c + i] = offset + i
    return roles


def write_strength(model, tokens: torch.Tensor) -> torch.Tensor:
    """How strongly ``model`` writes each token into its memory, (B, T): the write gate of a slot
    memory (chapters 2-4, surprise included), or the learning rate of a learned memory (chapter 5;
    for the full model, after its surprise gate), averaged over memory heads. Introduced in chapter 8."""
    with torch.no_grad():
        _, trace = model(tokens, return_trace=True)
    if "write_gate" in trace:
        return trace["write_gate"].float()
    if "lr" in trace:
        return trace["lr"].float().mean(1)
    raise ValueError(f"{type(model).__name__}'s trace has no write gate or learning rate; keys: {sorted(trace)}")


@torch.no_grad()
def write_by_role(model, task, num_examples: int = 256, seed: int = 0, batch_size: int = 64) -> dict:
    """Mean write strength (:func:`write_strength`) per token role (:data:`ROLES`) on held-out
    sequences of ``task`` (drawn from ``derive_seed(seed, "eval")``, like
    :func:`memorylib.training.evaluate`). Returns ``{role: {"mean", "n"}}`` for the roles that occur.
    Introduced in chapter 8."""
    check_int("num_examples", num_examples, 1)
    check_int("batch_size", batch_size, 1)
    layout = getattr(task, "layout", None) or TokenLayout()
    sums = torch.zeros(len(ROLES), dtype=torch.float64)
    counts = torch.zeros(len(ROLES), dtype=torch.long)
    gen = make_generator(derive_seed(seed, "eval"))
    with eval_mode(model):
        done = 0
        while done < num_examples:
            n = min(batch_size, num_examples - done)
            tokens = task.sample(n, gen).tokens
            roles, write = token_roles(tokens, layout), write_strength(model, tokens)
            keep = roles >= 0
            sums += torch.bincount(roles[keep], weights=write[keep].double(), minlength=len(ROLES))
            counts += torch.bincount(roles[keep], minlength=len(ROLES))
            done += n
    return {role: {"mean": _round(sums[i] / counts[i]), "n": int(counts[i])}
            for i, role in enumerate(ROLES) if counts[i] > 0}


# --- what a model carries: state and parameters (chapter 8's matched budgets) -------------------


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@torch.no_grad()
def state_bytes(model) -> dict:
    """The bytes a model carries per sequence to go on with a stream, in float32 (the book's dtype):
    ``{"memory", "context", "per_token"}``. ``memory``: what the memory holds, of a fixed size
    (slots with their ages; a matrix per head; an MLP's weights and momentum; the sidecar's cache);
    ``context``: the local attention's keys and values over its window, which every windowed model
    carries alike; ``per_token``: what grows with every token (full attention's key-value cache;
    0 for every memory model). Two memories are compared at matched state when their ``memory``
    is about equal. Introduced in chapter 8."""
    from .models import FullMemoryModel, LearnedMemoryModel, SlotMemoryModel
    from .ttt import MLPMemoryState

    p = next(model.parameters())
    d_model, layers = model.embed.embedding_dim, len(model.blocks)
    kv_per_token = 2 * layers * d_model * p.element_size()
    window = model.window
    out = {"memory": 0, "context": 0 if window is None else kv_per_token * window,
           "per_token": kv_per_token if window is None else 0}
    if isinstance(model, SlotMemoryModel):
        _, state, _ = model.memory(torch.zeros(1, 1, d_model, dtype=p.dtype))
        out["memory"] = _nbytes(state.keys, state.values, state.age)
    elif isinstance(model, LearnedMemoryModel):
        H, Dk, Dv = model.memory_heads, model.key_dim, model.value_dim
        if model.kind == "mlp":
            mlp = MLPMemoryState.initial(model.w1, model.w2, 1)
            out["memory"] = _nbytes(mlp.w1, mlp.w2, *([mlp.s1, mlp.s2] if model.use_momentum else []))
        else:
            out["memory"] = H * Dv * Dk * p.element_size()
        if isinstance(model, FullMemoryModel) and model.sidecar > 0:
            K, D = model.sidecar, model.sidecar_dim
            out["memory"] += K * (2 * D * p.element_size() + p.element_size() + 8)   # keys, values, surprise, position
    return out


def num_parameters(model) -> int:
    """The number of trained parameters (every element of every parameter)."""
    return sum(p.numel() for p in model.parameters())


def frontier_points(points: list[dict], cell: str) -> dict:
    """The recall–state frontier at one cell (e.g. ``"multi_key N=8, random"``) from the rows of a
    frontier record (``experiments/frontier.py``: each with ``family``, ``size``, ``seed``,
    ``state_bytes`` and ``cells[cell]["accuracy"]``): ``{family: [point, ...]}`` with the points of
    each family in order of state, each ``{"size", "state_bytes", "seeds", "mean", "low", "high"}``
    (``low``/``high``: the lowest and highest seed). A size measured at different state sizes
    (which would mean mixed records) is an error. Introduced in chapter 7."""
    grouped: dict = {}
    for row in points:
        if cell not in row["cells"]:
            raise ValueError(f"the frontier row {row['model']!r} (seed {row['seed']}) has no cell {cell!r}; "
                             f"its cells: {sorted(row['cells'])}")
        entry = grouped.setdefault(row["family"], {}).setdefault(row["size"], {"state": set(), "acc": {}})
        entry["state"].add(int(row["state_bytes"]))
        entry["acc"][row["seed"]] = float(row["cells"][cell]["accuracy"])
    out = {}
    for family, sizes in grouped.items():
        curve = []
        for size, entry in sizes.items():
            if len(entry["state"]) != 1:
                raise ValueError(f"{family}, size {size}: rows of different state sizes {sorted(entry['state'])}")
            acc = [entry["acc"][s] for s in sorted(entry["acc"])]
            curve.append({"size": size, "state_bytes": entry["state"].pop(), "seeds": sorted(entry["acc"]),
                          "mean": _round(sum(acc) / len(acc)), "low": _round(min(acc)), "high": _round(max(acc))})
        out[family] = sorted(curve, key=lambda p: p["state_bytes"])
    return out


def frontier_curves(record: dict) -> tuple[dict, dict]:
    """Every cell of a frontier record: ``(curves, floors)`` with ``curves[N][haystack]`` as
    :func:`frontier_points` gives it and ``floors[N][haystack]`` the keyless floor's accuracy on the
    same sequences. Introduced in chapter 7."""
    spec = record["eval"]
    curves, floors = {}, {}
    for n in spec["needles"]:
        for haystack in spec["haystacks"]:
            cell = f"multi_key N={n}, {haystack}"
            curves.setdefault(n, {})[haystack] = frontier_points(record["points"], cell)
            floors.setdefault(n, {})[haystack] = float(record["floors"][cell]["accuracy"])
    return curves, floors


def family_summary(cells: list[dict]) -> dict:
    """The needle family's table from the cell rows of ``experiments/needle_family.py`` (each with
    ``model``, ``seed``, ``cell`` = ``"<variant and sizes>, <haystack>, <length>"`` and the fields of
    :func:`memorylib.needles.stream_family`): ``{length: {haystack: {variant: {model: entry}}}}``, each
    entry ``{"seeds", "mean", "low", "high", "intervals", "floor", "other_needle_rate",
    "stale_rate", "value_cached", "streams"}``: the mean accuracy over training seeds, the lowest and
    highest seed, each seed's 95 % interval over streams, the keyless floor (the same streams for
    every seed), and the means over seeds of the error rates (None where not measured). A cell
    measured twice for one seed is an error. Rows of a leakage control (``control`` set) are left
    out: they are read against chance, not against the floor. Introduced in chapter 7."""
    grouped: dict = {}
    for row in cells:
        if row.get("control"):
            continue
        variant, haystack, length = row["cell"].rsplit(", ", 2)
        entry = (grouped.setdefault(int(length), {}).setdefault(haystack, {}).setdefault(variant, {})
                 .setdefault(row["model"], {}))
        if row["seed"] in entry:
            raise ValueError(f"{row['model']!r} seed {row['seed']}: cell {row['cell']!r} is in the record twice")
        entry[row["seed"]] = row

    def mean(rows, key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return _round(sum(values) / len(values)) if values else None

    out: dict = {}
    for length, by_haystack in sorted(grouped.items()):
        for haystack, by_variant in by_haystack.items():
            for variant, by_model in by_variant.items():
                for model, by_seed in by_model.items():
                    rows = [by_seed[s] for s in sorted(by_seed)]
                    acc = [r["accuracy"] for r in rows]
                    out.setdefault(length, {}).setdefault(haystack, {}).setdefault(variant, {})[model] = {
                        "seeds": sorted(by_seed), "mean": _round(sum(acc) / len(acc)), "low": _round(min(acc)),
                        "high": _round(max(acc)), "intervals": [list(r["ci"]) for r in rows],
                        "floor": rows[0]["floor"]["accuracy"], "other_needle_rate": mean(rows, "other_needle_rate"),
                        "stale_rate": mean(rows, "stale_rate"), "value_cached": mean(rows, "value_cached"),
                        "streams": rows[0]["trials"]}
    return out
