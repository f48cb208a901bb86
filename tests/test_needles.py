"""The needle family: any split of a stream gives the same tokens, the haystack is what it says,
the answers are those a plain reading of the tokens gives, and the keyless floor is what the
variant implies (1 for one needle, 1/N among N keys)."""

import pytest
import torch

from memorylib.needles import NeedleFamilyStream
from memorylib.tasks import CELL, TokenLayout, markov_table, reference_labels

LAY = TokenLayout()


def whole(gen):
    return gen.piece(0, gen.seq_len)


@pytest.mark.parametrize("haystack", ["random", "markov"])
def test_any_split_gives_the_same_stream(haystack):
    gen = NeedleFamilyStream("multi_key", 9000, 3, num_needles=4, haystack=haystack, seed=5)
    one = whole(gen)
    again = NeedleFamilyStream("multi_key", 9000, 3, num_needles=4, haystack=haystack, seed=5)
    cuts = [0, 1, 100, 4095, 4097, 8192, 8999, 9000]
    assert torch.equal(torch.cat([again.piece(a, b) for a, b in zip(cuts, cuts[1:])], 1), one)
    assert not torch.equal(one, whole(NeedleFamilyStream("multi_key", 9000, 3, num_needles=4, haystack=haystack,
                                                         seed=6)))


def test_the_markov_haystack_follows_its_table_across_blocks():
    gen = NeedleFamilyStream("single", 10000, 2, haystack="markov")
    t = whole(gen)
    table = markov_table(LAY)
    both = LAY.is_filler(t[:, :-1]) & LAY.is_filler(t[:, 1:])
    prev, nxt = t[:, :-1][both] - LAY.filler_start, t[:, 1:][both]
    assert bool(((nxt == table[prev, 0]) | (nxt == table[prev, 1])).all())


@pytest.mark.parametrize("variant,kwargs", [("single", {}), ("multi_key", {"num_needles": 8}),
                                            ("multi_query", {"num_needles": 8, "num_queries": 4}),
                                            ("update", {"num_needles": 4})])
def test_answers_are_what_the_tokens_say(variant, kwargs):
    gen = NeedleFamilyStream(variant, 600, 16, haystack="random", min_distance=48, seed=1, **kwargs)
    tokens = whole(gen)
    labels, _ = reference_labels(tokens, LAY)
    assert torch.equal(labels[:, gen.query_positions], gen.targets)
    assert bool((tokens[:, gen.query_positions] == gen.asked_keys).all())
    assert bool((tokens[:, gen.query_positions - 1] == LAY.ASK).all())
    if variant == "update":       # every key stated early and again late; the stale value is the asked key's first
        n = gen.num_needles
        assert bool((gen.cells[:, :n].max(1).values < gen.cells[:, n:].min(1).values).all())
        assert bool((gen.stale != gen.targets).all())
        firsts = gen.values[:, :n][gen.keys[:, :n] == gen.asked_keys]
        assert torch.equal(firsts, gen.stale.squeeze(1))


def test_multi_value_asks_the_values_of_one_key_in_the_order_stated():
    gen = NeedleFamilyStream("multi_value", 900, 8, num_needles=3, num_distractors=4, haystack="random", seed=2)
    tokens = whole(gen)
    assert bool((gen.asked_keys == gen.asked_keys[:, :1]).all())
    for b in range(8):
        key = int(gen.asked_keys[b, 0])
        cells = sorted(c for c, k in zip(gen.cells[b].tolist(), gen.keys[b].tolist()) if k == key)
        assert len(cells) == 3 and [int(tokens[b, c * CELL + 2]) for c in cells] == gen.targets[b].tolist()
        assert len(set(gen.keys[b].tolist())) == 1 + 4 and len(set(gen.values[b].tolist())) == 15


def test_the_keyless_floor_of_each_variant():
    def floor(gen):
        return float((gen.keyless == gen.targets).float().mean())
    assert floor(NeedleFamilyStream("single", 300, 64, haystack="random")) == 1.0
    assert abs(floor(NeedleFamilyStream("multi_key", 600, 512, num_needles=8, haystack="random")) - 1 / 8) < 0.05
    assert abs(floor(NeedleFamilyStream("update", 600, 512, num_needles=4, haystack="random")) - 1 / 4) < 0.06
    mq = NeedleFamilyStream("multi_query", 600, 512, num_needles=4, num_queries=4, haystack="random")
    assert abs(floor(mq) - sum(1 / n for n in (4, 3, 2, 1)) / 4) < 0.05
    mv = NeedleFamilyStream("multi_value", 900, 512, num_needles=3, num_distractors=3, haystack="random")
    first = float((mv.keyless[:, 0] == mv.targets[:, 0]).float().mean())
    assert abs(first - 1 / 4) < 0.06 and bool((mv.keyless[:, 1:] == mv.targets[:, 1:]).all())


def test_depths_put_the_asked_needle_where_asked():
    gen = NeedleFamilyStream("multi_key", 3000, 5, num_needles=8, depths=[0, 0.25, 0.5, 0.75, 1.0],
                             haystack="random")
    assert torch.allclose(gen.depth, torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64), atol=0.01)


@pytest.mark.parametrize("kwargs,match", [
    ({"variant": "haystack"}, "variant must be one of"),
    ({"variant": "single", "num_needles": 2}, "the single needle has num_needles=1"),
    ({"variant": "multi_key", "num_needles": 1}, "needs num_needles >= 2"),
    ({"variant": "multi_key", "num_needles": 4, "haystack": "predictable"}, "haystack must be one of"),
    ({"variant": "multi_key", "num_needles": 4, "num_distractors": 2}, "num_distractors applies to multi_value"),
    ({"variant": "multi_key", "num_needles": 40, "seq_len": 120}, "too short for 40 needles"),
    ({"variant": "multi_query", "num_needles": 4, "num_queries": 5}, "num_queries must be an int in"),
])
def test_bad_family_arguments(kwargs, match):
    args = {"seq_len": 600, "batch_size": 2, **kwargs}
    variant = args.pop("variant")
    with pytest.raises(ValueError, match=match):
        NeedleFamilyStream(variant, **args)


@pytest.mark.parametrize("variant,kwargs", [("multi_key", {"num_needles": 6}), ("update", {"num_needles": 3}),
                                            ("multi_query", {"num_needles": 4, "num_queries": 2})])
def test_the_family_as_a_training_task(variant, kwargs):
    from memorylib.registry import build_model, build_task
    from memorylib.training import evaluate, train

    task = build_task("needle_family", variant=variant, seq_len=240, min_distance=18, **kwargs)
    b = task.sample(16, seed=4)
    assert torch.equal(b.targets[b.answer_mask], reference_labels(b.tokens, LAY)[0][b.answer_mask])
    assert int(b.distance[b.answer_mask].min()) >= 18 and torch.equal(b.tokens, task.sample(16, seed=4).tokens)
    assert (b.stale[b.answer_mask] >= 0).all() == (variant == "update")
    assert task.config()["variant"] == variant
    model = build_model("local_transformer", d_model=16, num_heads=2)
    train(model, task, steps=2, batch_size=4, progress=False)
    assert evaluate(model, task, num_examples=8)["num_answers"] == 8 * task.sample(1).num_answers
    with pytest.raises(ValueError, match="variant must be one of"):
        build_task("needle_family", variant="everything")
    from memorylib.floors import keyless_floor
    if variant != "multi_value":
        assert abs(keyless_floor(task, num_examples=256)["accuracy"] - float((task._stream(256, 1).keyless ==
                                                                              task._stream(256, 1).targets)
                                                                             .float().mean())) < 0.12
    with pytest.raises(ValueError, match="not the floor of multi-value"):
        keyless_floor(build_task("needle_family", variant="multi_value", num_needles=2, num_distractors=1,
                                 seq_len=300, min_distance=18))
