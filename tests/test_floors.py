"""The keyless floor: the best strategy that ignores the asked key. It never reads the asked key,
is causal, answers hand-made streams as the rule says, and reaches the floor the generators imply
(a stated value not yet asked, a chain end not yet given, the only value of a needle stream)."""

import pytest
import torch

from memorylib.floors import KeylessBaseline, keyless_floor, rule_for
from memorylib.registry import build_task
from memorylib.tasks import CELL, TokenLayout

LAY = TokenLayout()
K = lambda i: LAY.key_start + i          # noqa: E731
V = lambda i: LAY.value_start + i        # noqa: E731
F = LAY.filler_start


def stream(*cells, pad=2):
    out = []
    for cell in cells:
        out += list(cell)
    out += [F] * (pad * CELL)
    return torch.tensor([out])


def guess_at(model, tokens, cell):
    return int(model(tokens)[0, cell * CELL + 1].argmax())


def test_facts_rule_answers_a_value_not_yet_asked_and_the_majority_value():
    m = KeylessBaseline("facts")
    s = stream((LAY.SET, K(0), V(5)), (LAY.SET, K(1), V(7)), (LAY.SET, K(2), V(7)), (LAY.ASK, K(9), V(0)))
    assert guess_at(m, s, 3) == V(7)                       # two of three candidates hold v7
    s = stream((LAY.SET, K(0), V(5)), (LAY.SET, K(1), V(7)), (LAY.ASK, K(1), V(7)), (LAY.ASK, K(9), V(0)))
    assert guess_at(m, s, 3) == V(5)                       # k1 was asked: k0 is the only candidate
    s = stream((LAY.SET, K(0), V(5)), (LAY.SET, K(0), V(6)), (LAY.ASK, K(9), V(0)))
    assert guess_at(m, s, 2) == V(6)                       # a key's value is its latest


def test_facts_rule_opens_a_new_round_after_a_new_fact():
    m = KeylessBaseline("facts")
    s = stream((LAY.SET, K(0), V(5)), (LAY.SET, K(1), V(7)), (LAY.ASK, K(0), V(5)), (LAY.ASK, K(1), V(7)),
               (LAY.SET, K(0), V(9)), (LAY.ASK, K(9), V(0)))
    assert guess_at(m, s, 5) in (V(9), V(7)) and guess_at(m, s, 5) == V(9)   # tie: the value stated last


def test_chains_rule_answers_an_end_not_yet_given():
    m = KeylessBaseline("chains")
    s = stream((LAY.SET, K(0), K(1)), (LAY.SET, K(3), K(4)), (LAY.SET, K(1), K(2)), (LAY.SET, K(4), K(5)),
               (LAY.ASK, K(0), K(2)), (LAY.ASK, K(9), K(0)))
    assert guess_at(m, s, 4) == K(2)                       # the ends are k2 and k5; k2 first
    assert guess_at(m, s, 5) == K(5)                       # k2 was given: k5


@pytest.mark.parametrize("name,kwargs", [("associative_lookup", {}), ("changing_facts", {}), ("multi_hop", {}),
                                         ("needle_recall", {})])
def test_it_never_reads_the_asked_key_and_is_causal(name, kwargs):
    task = build_task(name, **kwargs)
    m = KeylessBaseline(rule_for(task))
    batch = task.sample(8, seed=1)
    logits = m(batch.tokens)
    for b, t in batch.answer_mask.nonzero().tolist():         # change one asked key at a time
        other = batch.tokens.clone()
        other[b, t] = LAY.key_start + (other[b, t] - LAY.key_start + 17) % LAY.num_keys
        assert torch.equal(m(other)[b, t], logits[b, t])
    cut = batch.tokens.shape[1] // 2
    later = batch.tokens.clone()
    later[:, cut:] = F
    assert torch.equal(m(later)[:, :cut], m(batch.tokens)[:, :cut])


def test_floors_of_the_default_tasks_are_what_the_generators_imply():
    # lookup: 8 pairs, 8 questions, the i-th among 8 - i candidates (a little more: repeated values)
    lookup = keyless_floor(build_task("associative_lookup"), num_examples=512)["accuracy"]
    assert sum(1 / n for n in range(1, 9)) / 8 <= lookup < 0.40
    assert keyless_floor(build_task("needle_recall"), num_examples=64)["accuracy"] == 1.0
    hops = keyless_floor(build_task("multi_hop"), num_examples=512)["accuracy"]
    assert abs(hops - sum(1 / n for n in range(1, 5)) / 4) < 0.03      # 4 chains: 1/4, 1/3, 1/2, 1
    changing = keyless_floor(build_task("changing_facts"), num_examples=512)["accuracy"]
    assert sum(1 / n for n in (6, 5, 4, 3)) / 4 <= changing < 0.30     # 6 keys, 4 distinct questions a round
    assert rule_for(build_task("length_extrapolation", base="multi_hop", seq_len=168)) == "chains"


def test_bad_rule_is_named():
    with pytest.raises(ValueError, match="rule must be one of"):
        KeylessBaseline("oracle")
