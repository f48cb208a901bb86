"""Task generators: labels re-derived independently, the distance promise, determinism, layout."""

import pytest
import torch

from memorylib.models import DEFAULT_WINDOW
from memorylib.registry import build_model, build_task, task_names
from memorylib.tasks import (
    CELL,
    DEFAULT_MIN_DISTANCE,
    IGNORE,
    LengthExtrapolation,
    TokenLayout,
    derive_seed,
    reference_labels,
)

GENERATORS = ["associative_lookup", "changing_facts", "needle_recall", "multi_hop"]
VARIANTS = [
    ("associative_lookup", {}),
    ("associative_lookup", {"min_distance": 1, "seq_len": 100}),
    ("associative_lookup", {"num_pairs": 16, "num_queries": 4, "seq_len": 200, "filler": "predictable"}),
    ("changing_facts", {}),
    ("changing_facts", {"num_active_keys": 3, "updates_per_phase": 9, "queries_per_phase": 2, "num_phases": 3,
                        "seq_len": 301}),
    ("needle_recall", {}),
    ("needle_recall", {"filler": "random", "depth": 0.0}),
    ("needle_recall", {"depth": 1.0, "seq_len": 600}),
    ("multi_hop", {}),
    ("multi_hop", {"num_chains": 8, "num_queries": 3, "min_distance": 10, "seq_len": 120}),
]


@pytest.mark.parametrize("name,kwargs", VARIANTS)
def test_labels_match_an_independent_parse_of_the_tokens(name, kwargs):
    task = build_task(name, **kwargs)
    batch = task.sample(32, seed=3)
    targets, distance = reference_labels(batch.tokens, task.layout, hops=2 if name == "multi_hop" else 1)
    assert torch.equal(targets, batch.targets)
    assert torch.equal(distance, batch.distance)


@pytest.mark.parametrize("name,kwargs", VARIANTS)
def test_every_answer_is_the_next_token_and_beyond_min_distance(name, kwargs):
    task = build_task(name, **kwargs)
    b = task.sample(64, seed=1)
    mask = b.answer_mask
    assert b.tokens.shape == (64, task.seq_len) and b.tokens.dtype == torch.long
    assert mask.any()
    pos = mask.nonzero()
    assert torch.equal(b.targets[mask], b.tokens[pos[:, 0], pos[:, 1] + 1])
    assert int(b.distance[mask].min()) >= task.min_distance
    assert (b.distance[~mask] == -1).all() and (b.targets[~mask] == IGNORE).all()
    # the evidence really is `distance` back: the token there states the answer (or its hop)
    ev = b.tokens[pos[:, 0], pos[:, 1] - b.distance[mask]]
    if name == "multi_hop":
        assert task.layout.is_key(ev).all()
    else:
        assert torch.equal(ev, b.targets[mask])
    assert int(b.tokens.min()) >= 1 and int(b.tokens.max()) < task.vocab_size  # PAD never generated


def test_default_distance_lies_beyond_the_default_local_models_reach():
    local = build_model("local_transformer")
    assert local.window == DEFAULT_WINDOW
    assert DEFAULT_MIN_DISTANCE >= local.receptive_field >= DEFAULT_WINDOW
    for name in GENERATORS:
        b = build_task(name).sample(128, seed=0)
        assert int(b.distance[b.answer_mask].min()) >= local.receptive_field


@pytest.mark.parametrize("name", GENERATORS)
def test_deterministic_from_a_seed_and_different_across_seeds(name):
    task = build_task(name)
    a, b, c = task.sample(16, seed=5), task.sample(16, seed=5), task.sample(16, seed=6)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.tokens, c.tokens)


def test_train_and_eval_seeds_are_distinct_streams():
    assert derive_seed(0, "train") != derive_seed(0, "eval")
    task = build_task("associative_lookup")
    train = task.sample(256, seed=derive_seed(0, "train")).tokens
    held_out = task.sample(256, seed=derive_seed(0, "eval")).tokens
    shared = {tuple(r) for r in train.tolist()} & {tuple(r) for r in held_out.tolist()}
    assert not shared


def test_changing_facts_overwrites_and_records_the_stale_value():
    task = build_task("changing_facts")
    b = task.sample(128, seed=2)
    mask = b.answer_mask
    has_stale = b.stale[mask] >= 0
    assert has_stale.float().mean() > 0.5            # most answers overwrote something
    assert (b.stale[mask][has_stale] != b.targets[mask][has_stale]).all()
    assert task.layout.is_value(b.stale[mask][has_stale]).all()
    # the stale value was really stated for that key earlier in the stream
    lay = task.layout
    for i, t in mask.nonzero().tolist()[:200]:
        if b.stale[i, t] < 0:
            continue
        key, row = int(b.tokens[i, t]), b.tokens[i, :t].tolist()
        stated = [row[c + 2] for c in range(0, len(row) - 2, CELL) if row[c] == lay.SET and row[c + 1] == key]
        assert int(b.stale[i, t]) in stated and stated[-1] == int(b.targets[i, t])


def test_needle_predictable_filler_is_a_cycle_and_depth_is_reported():
    task = build_task("needle_recall", filler="predictable", depth=0.5)
    b = task.sample(8, seed=0)
    lay = task.layout
    filler = lay.is_filler(b.tokens)
    nxt = torch.roll(b.tokens, -1, dims=1)
    both = filler & torch.roll(filler, -1, dims=1)
    both[:, -1] = False
    step = (nxt - b.tokens)[both] % lay.num_filler
    assert (step == 1).all()
    assert torch.allclose(b.extras["depth"], torch.full((8,), 0.5), atol=0.05)
    assert (b.answer_mask.sum(1) == 1).all()


def test_multi_hop_answer_is_two_hops_away():
    task = build_task("multi_hop")
    b = task.sample(16, seed=4)
    targets_one_hop, _ = reference_labels(b.tokens, task.layout, hops=1)
    mask = b.answer_mask
    assert (targets_one_hop[mask] != b.targets[mask]).all()


def test_length_extrapolation_protocol_scales_only_the_length():
    proto = build_task("length_extrapolation", seq_len=96, factors=(1, 2, 4, 8), num_pairs=4, num_queries=4)
    assert isinstance(proto, LengthExtrapolation)
    for f in proto.factors:
        t = proto.eval_task(f)
        assert t.seq_len == 96 * f and t.num_pairs == 4
    long = proto.eval_task(8).sample(16, seed=0)
    short = proto.sample(16, seed=0)
    assert long.distance[long.answer_mask].float().mean() > 4 * short.distance[short.answer_mask].float().mean()


def test_layout_is_documented_and_consistent():
    lay = TokenLayout()
    assert (lay.PAD, lay.SET, lay.ASK, lay.key_start) == (0, 1, 2, 3)
    assert (lay.value_start, lay.filler_start, lay.vocab_size) == (67, 131, 163)
    assert [lay.label(t) for t in (0, 1, 2, 3, 67, 131)] == ["PAD", "SET", "ASK", "k0", "v0", "~0"]
    assert set(task_names()) == {"associative_lookup", "changing_facts", "needle_recall", "multi_hop",
                                 "length_extrapolation", "needle_family"}


def test_mixture_draws_whole_batches_from_each_task():
    from memorylib.tasks import TaskMixture
    short = build_task("associative_lookup", seq_len=48, min_distance=1)
    long = build_task("associative_lookup", min_distance=1)
    mix = TaskMixture([short, long], weights=[1, 3])
    g = torch.Generator().manual_seed(0)
    lengths = [mix.sample(2, g).tokens.shape[1] for _ in range(400)]
    assert set(lengths) == {48, 144}
    assert 0.65 < lengths.count(144) / 400 < 0.85
    assert mix.min_distance == 1 and mix.chance == short.chance
    with pytest.raises(ValueError, match="weights must be 2 non-negative numbers"):
        TaskMixture([short, long], weights=[1, -1])
    with pytest.raises(ValueError, match="share one TokenLayout"):
        TaskMixture([short, build_task("associative_lookup", layout=TokenLayout(num_keys=8))])


def test_the_markov_haystack_follows_its_table():
    from memorylib.tasks import markov_table

    lay = TokenLayout()
    table = markov_table(lay)
    assert table.shape == (lay.num_filler, 2) and bool((table[:, 0] != table[:, 1]).all())
    b = build_task("associative_lookup", filler="markov").sample(64, seed=0)
    t = b.tokens
    both = lay.is_filler(t[:, :-1]) & lay.is_filler(t[:, 1:])
    prev, nxt = t[:, :-1][both] - lay.filler_start, t[:, 1:][both]
    first, second = nxt == table[prev, 0], nxt == table[prev, 1]
    assert bool((first | second).all())
    assert 0.45 < float(first.float().mean()) < 0.55               # one bit per token
    assert torch.equal(b.targets[b.answer_mask], reference_labels(t, lay)[0][b.answer_mask])


def test_spaced_updates_restate_a_key_far_from_its_earlier_value():
    task = build_task("changing_facts", seq_len=240, num_active_keys=3, updates_per_phase=6, queries_per_phase=2,
                      min_distance=18, update_spacing=6)
    assert task.config()["update_spacing"] == 6 and "update_spacing" not in build_task("changing_facts").config()
    b = task.sample(32, seed=0)
    lay = task.layout
    sets = (b.tokens[:, 0::3] == lay.SET).nonzero()
    cells = {}
    for row, cell in sets.tolist():
        cells.setdefault(row, []).append(cell)
    for cs in cells.values():
        phases = [cs[i:i + task.updates_per_phase] for i in range(0, len(cs), task.updates_per_phase)]
        for phase in phases:
            assert all(b - a == 6 for a, b in zip(phase, phase[1:]))
    assert torch.equal(b.targets[b.answer_mask], reference_labels(b.tokens, lay)[0][b.answer_mask])


@pytest.mark.parametrize("base", ["associative_lookup", "changing_facts", "multi_hop"])
def test_length_extrapolation_spreads_the_same_facts_over_the_longer_stream(base):
    protocol = build_task("length_extrapolation", base=base, seq_len=192 if base == "changing_facts" else 168)
    means = []
    for factor in protocol.factors:
        b = protocol.eval_task(factor).sample(128, seed=0)
        means.append(float(b.distance[b.answer_mask].float().mean()))
        assert torch.equal(b.targets[b.answer_mask], reference_labels(b.tokens, hops=2 if base == "multi_hop" else 1)
                           [0][b.answer_mask])
    assert all(later > 1.6 * earlier for earlier, later in zip(means, means[1:]))
