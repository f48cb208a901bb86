"""The slot memory (chapter 2): shapes, gates at their extremes, addressing, every write policy,
bounds, trace, and the model around it. Causality of every registered model is in test_models.py."""


import pytest
import torch
import torch.nn.functional as F

from memorylib import slot_memory as sm
from memorylib.registry import build_model, build_task
from memorylib.training import answer_loss, train

B, T, D_MODEL = 3, 12, 16


def memory(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("num_slots", 4)
    kwargs.setdefault("slot_dim", 8)
    return sm.SlotMemory(D_MODEL, **kwargs)


def force_gates(mem, write=None, erase=None, read=None, alloc=None):
    """Pin gates to (almost exactly) 0 or 1 whatever the features: zero weights, +-30 biases."""
    with torch.no_grad():
        for i, value in enumerate((write, erase, read, alloc)):
            if value is not None:
                mem.gates.weight[i].zero_()
                mem.gates.bias[i] = 30.0 if value else -30.0
    return mem


def features(seed=0, batch=B, length=T, scale=1.0):
    return scale * torch.randn(batch, length, D_MODEL, generator=torch.Generator().manual_seed(seed))


# --- the pure functions --------------------------------------------------------------------


def test_pure_functions_shapes_and_values():
    g = torch.Generator().manual_seed(1)
    q, K, V = torch.randn(2, 3, 5, generator=g), torch.randn(2, 4, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    scores = sm.cosine_scores(q, K)
    assert scores.shape == (2, 3, 4) and scores.abs().max() <= 1 + 1e-6
    assert torch.allclose(scores, F.cosine_similarity(q[:, :, None], K[:, None], dim=-1), atol=1e-6)
    empty = K.clone()
    empty[:, 2] = 0
    assert torch.all(sm.cosine_scores(q, empty)[:, :, 2] == 0)
    w = sm.address(scores, 5.0)
    assert torch.allclose(w, torch.softmax(5.0 * scores, -1)) and torch.allclose(w.sum(-1), torch.ones(2, 3))
    top = sm.address(scores, 5.0, top_k=2)
    assert torch.all((top > 0).sum(-1) == 2) and torch.allclose(top.sum(-1), torch.ones(2, 3))
    best2 = scores.topk(2, dim=-1).indices
    assert torch.all(top.gather(-1, best2) > 0)
    assert torch.allclose(sm.address(scores, 5.0, top_k=4), w)      # k >= slots is dense
    assert sm.read(w, V).shape == (2, 3, 5)
    one_hot = F.one_hot(torch.tensor([[1, 3, 0], [2, 2, 1]]), 4).float()
    assert torch.equal(sm.read(one_hot, V),
                       V.gather(1, torch.tensor([[1, 3, 0], [2, 2, 1]])[..., None].expand(-1, -1, 5)))


def test_a_query_equal_to_a_stored_key_gets_the_most_weight():
    K = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(2))
    for i in range(6):
        assert int(sm.address(sm.cosine_scores(K[:, i:i + 1], K), 8.0).argmax()) == i


@pytest.mark.parametrize("erase", [0.0, 0.3, 1.0])
def test_write_gates_at_their_extremes(erase):
    g = torch.Generator().manual_seed(3)
    M, content = torch.randn(2, 4, 5, generator=g), torch.randn(2, 5, generator=g)
    slot1 = F.one_hot(torch.tensor([1, 1]), 4).float()
    e = torch.full((2,), erase)
    # write gate 0: nothing changes, whatever the erase gate
    assert torch.equal(sm.write(M, slot1, torch.zeros(2), e, content), M)
    out = sm.write(M, slot1, torch.ones(2), e, content)
    untouched = [0, 2, 3]
    assert torch.equal(out[:, untouched], M[:, untouched])           # weight-0 slots unchanged
    assert torch.allclose(out[:, 1], (1 - erase) * M[:, 1] + content)
    if erase == 1.0:
        assert torch.equal(out[:, 1], content)                        # replaced
        emptied = sm.write(M, slot1, torch.ones(2), e, torch.zeros(2, 5))
        assert torch.all(emptied[:, 1] == 0)                          # erase 1, add 0: empty
    if erase == 0.0:
        assert torch.allclose(out[:, 1], M[:, 1] + content)          # added on top


# --- the module ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", sm.WRITE_POLICIES)
@pytest.mark.parametrize("heads,top_k", [(1, None), (2, 2)])
def test_forward_shapes_for_every_policy(policy, heads, top_k):
    mem = memory(write_policy=policy, num_heads=heads, top_k=top_k)
    reads, state, trace = mem(features())
    assert reads.shape == (B, T, heads * 8) and trace is None
    assert state.keys.shape == state.values.shape == (B, 4, 8) and state.age.shape == (B, 4)
    _, _, trace = mem(features(), trace=True, keep_states=True)
    for key in ("read", "write", "age_before"):
        assert trace[key].shape == (B, T, 4), key
    for key in ("write_gate", "erase", "read_gate"):
        assert trace[key].shape == (B, T), key
    assert trace["keys"].shape == trace["values"].shape == (B, T, 4, 8)
    assert torch.equal(trace["values"][:, -1], state.values)


def test_write_gate_zero_leaves_memory_unchanged_and_erase_one_replaces():
    mem = force_gates(memory(write_policy="lru"), write=False)
    start = mem.initial_state(B)
    start.values.normal_()
    start.keys.normal_()
    _, state, _ = mem(features(),
                      state=sm.SlotState(start.keys.clone(), start.values.clone(), start.age, start.pointer))
    assert torch.allclose(state.values, start.values, atol=1e-10) and torch.allclose(state.keys, start.keys, atol=1e-10)
    mem = force_gates(memory(write_policy="lru", num_slots=2), write=True, erase=True)
    h = features(length=3)
    _, _, trace = mem(h, trace=True, keep_states=True)
    p = mem.projections(h)
    # token 2 goes to slot 0 again (least recently used) and fully replaces token 0's value there
    assert torch.allclose(trace["values"][:, 2, 0], p["value"][:, 2], atol=1e-6)


def test_fixed_erase_pins_the_gate_and_no_forget_adds():
    mem = force_gates(memory(write_policy="fifo", num_slots=1, fixed_erase=0.0), write=True)
    h = features(length=3)
    _, state, trace = mem(h, trace=True)
    assert torch.all(trace["erase"] == 0)
    p = mem.projections(h)
    assert torch.allclose(state.values[:, 0], p["value"].sum(1), atol=1e-5)   # every write added on top


def test_fifo_visits_slots_in_order_and_moves_only_with_the_write_gate():
    mem = force_gates(memory(write_policy="fifo", num_slots=4), write=True)
    _, _, trace = mem(features(length=10), trace=True)
    assert trace["write"].argmax(-1)[0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    mem = force_gates(memory(write_policy="fifo", num_slots=4), write=False)
    _, state, _ = mem(features(length=10))
    assert torch.all(state.pointer < 1e-6)


def test_lru_writes_every_slot_once_then_the_least_recently_used():
    mem = force_gates(memory(write_policy="lru", num_slots=4), write=True, read=False)
    _, _, trace = mem(features(length=9), trace=True)
    order = trace["write"].argmax(-1)[0].tolist()
    assert sorted(order[:4]) == [0, 1, 2, 3] and order[4:8] == order[:4] and order[8] == order[0]
    # reading a slot counts as using it: with reads on and writes off, ages grow by less than 1
    mem = force_gates(memory(write_policy="lru", num_slots=4), write=False, read=True)
    _, _, trace = mem(features(length=3), trace=True)
    read_weights = trace["read"][:, 0]
    assert torch.allclose(trace["age_before"][:, 1], 1 - read_weights, atol=1e-6)
    assert torch.all(trace["age_before"][:, 1] < 1)


def test_random_policy_is_seeded_uniform_and_ignores_content():
    a = force_gates(memory(write_policy="random", num_slots=4, seed=1), write=True)
    def slots(mem, h):
        return mem(h, trace=True)[2]["write"].argmax(-1)

    first, again = slots(a, features(0, length=400)), slots(a, features(5, length=400))
    assert torch.equal(first, again)                                  # depends on position, not content
    other = force_gates(memory(write_policy="random", num_slots=4, seed=2), write=True)
    assert not torch.equal(first, slots(other, features(0, length=400)))
    counts = torch.bincount(first.flatten(), minlength=4).float() / first.numel()
    assert torch.all((counts - 0.25).abs() < 0.06)
    # every row of the batch gets the same draws, whatever the batch's size: position only
    assert bool((first == first[:1]).all())
    assert torch.equal(slots(a, features(0, length=400)[:1])[0], first[0])


def content_memory(num_slots):
    mem = force_gates(memory(write_policy="content", num_slots=num_slots), write=True, erase=True, read=False)
    with torch.no_grad():                 # no per-token preference: the match alone decides
        mem.gates.weight[3].zero_()
        mem.gates.bias[3] = 0.0
    return mem


def test_content_policy_writes_a_repeated_key_onto_its_slot():
    mem = content_memory(2)               # both slots filled before the repeat (no empty slot)
    h = features(length=3)
    h[:, 2] = h[:, 0]                     # token 2 repeats token 0's key (and everything else)
    _, _, trace = mem(h, trace=True)
    w = trace["write"]
    assert torch.equal(w[:, :2].argmax(-1), torch.tensor([[0, 1]] * B))   # new keys: fresh slots
    # the least recently used slot is 0 as well here, so check the content half points there too
    assert torch.all(w[:, 2, 0] > 0.9)
    mem = content_memory(2)
    h[:, 2] = h[:, 1]                     # now repeat token 1's key: LRU says slot 0, the match slot 1
    _, _, trace = mem(h, trace=True)
    assert torch.all(trace["write"][:, 2].argmax(-1) == 1) and torch.all(trace["write"][:, 2, 1] > 0.7)


@pytest.mark.xfail(strict=True, reason="known limitation: the content half of a write leaves a faint "
                   "copy of the key in empty slots, and cosine ignores scale, so that copy matches the key "
                   "as well as its real slot; fixing it changes every trained model "
                   "(memorylib/slot_memory.py docstring)")
def test_a_faint_residue_in_an_empty_slot_does_not_attract_a_repeated_key():
    mem = content_memory(4)
    h = features(length=4)
    h[:, 3] = h[:, 1]
    _, _, trace = mem(h, trace=True)
    assert torch.all(trace["write"][:, 3, 1] > 0.7)


def test_content_only_starts_from_distinct_keys():
    mem = memory(write_policy="content_only")
    state = mem.initial_state(2)
    assert torch.equal(state.keys[0], state.keys[1]) and state.keys[0].norm(dim=-1).min() > 0
    assert torch.all(memory().initial_state(2).keys == 0)


def test_memory_stays_bounded():
    h = features(length=2000, batch=2, scale=10.0)
    full = force_gates(memory(write_policy="content"), write=True, erase=True)
    _, _, trace = full(h, trace=True, keep_states=True)
    assert trace["values"].abs().max() <= 1.0 and trace["keys"].abs().max() <= 1.0
    # learned (untrained) gates: the excess over 1 is at most the un-erased write mass
    mem = memory(write_policy="content")
    _, _, trace = mem(h, trace=True, keep_states=True)
    unerased = (trace["write"] * (1 - trace["erase"][..., None])).cumsum(1)    # (B, T, S)
    assert torch.all(trace["values"].abs().amax(-1) <= 1.0 + unerased + 1e-5)
    # the bound is not vacuous: never erasing, memory grows past 1
    never = force_gates(memory(write_policy="fifo", num_slots=1, fixed_erase=0.0), write=True)
    _, state, _ = never(h[:, :50])
    assert state.values.abs().max() > 1.0


def test_decay_shrinks_values_and_fixes_the_slot_count():
    mem = force_gates(memory(decay=True, num_slots=3), write=False)
    start = mem.initial_state(1)
    start.values.fill_(1.0)
    _, state, _ = mem(features(batch=1, length=5), state=start)
    assert torch.allclose(state.values,
                          torch.sigmoid(mem.decay_logit)[None, :, None].detach() ** 5 * torch.ones(1, 3, 8))
    mem.num_slots = 5
    with pytest.raises(ValueError, match="num_slots=5 cannot change on a memory with decay gates"):
        mem(features())


def test_utilization_loss_rewards_spread_writes():
    assert sm.slot_usage_entropy(torch.ones(5, 4)) == pytest.approx(1.0)
    assert sm.slot_usage_entropy(F.one_hot(torch.zeros(5, dtype=torch.long), 4).float()) == pytest.approx(0.0, abs=1e-6)
    assert memory()(features())[0] is not None and float(memory().utilization_loss()) == 0.0
    collapsed = force_gates(memory(write_policy="fifo", num_slots=4, utilization_weight=0.5), write=False)
    collapsed(features())                 # pointer never moves: every (tiny) write lands in slot 0
    assert float(collapsed.utilization_loss().detach()) == pytest.approx(0.5, abs=1e-3)
    mem = memory(utilization_weight=0.5)
    mem(features())
    loss = mem.utilization_loss()
    assert 0 < float(loss.detach()) < 0.5 and loss.requires_grad
    loss.backward()
    assert mem.gates.weight.grad.abs().sum() > 0


def test_trace_is_consistent_with_the_gates():
    mem = memory(write_policy="content")
    _, _, trace = mem(features(), trace=True)
    assert torch.allclose(trace["write"].sum(-1), trace["write_gate"], atol=1e-5)
    assert torch.allclose(trace["read"].sum(-1), trace["read_gate"], atol=1e-5)
    assert torch.all(trace["age_before"][:, 0] == 0)
    idle = force_gates(memory(write_policy="lru"), write=False, read=False)
    _, _, trace = idle(features(), trace=True)
    assert torch.allclose(trace["age_before"][0, :, 0], torch.arange(T, dtype=torch.float), atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    ({"write_policy": "lifo"}, r"write_policy must be one of .* got 'lifo'"),
    ({"top_k": 0}, r"top_k must be None or an int >= 1, got 0"),
    ({"fixed_erase": 1.5}, r"fixed_erase must be None \(learned\) or a number in \[0, 1\], got 1.5"),
    ({"num_slots": 0}, r"num_slots must be an int >= 1, got 0"),
    ({"utilization_weight": -1}, r"utilization_weight must be a number >= 0, got -1"),
])
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sm.SlotMemory(D_MODEL, **kwargs)


def test_bad_features_and_states():
    mem = memory()
    with pytest.raises(ValueError, match=r"h must have shape \(batch, seq_len, d_model\), got \(3, 16\)"):
        mem(torch.zeros(3, 16))
    with pytest.raises(ValueError, match="state has 2 slots, the memory 4"):
        mem(features(), state=memory(num_slots=2).initial_state(B))


# --- the model ---------------------------------------------------------------------------------


def test_registered_variants_carry_their_settings():
    assert build_model("slot_memory").memory.write_policy == "content"
    assert build_model("no_forget").memory.fixed_erase == 0.0
    assert build_model("fifo_memory").memory.write_policy == "fifo"
    assert build_model("random_write").memory.write_policy == "random"
    assert build_model("lru_memory").memory.write_policy == "lru"
    m = build_model("topk_lru_memory").memory
    assert (m.top_k, m.num_heads, m.write_policy, m.utilization_weight) == (2, 4, "lru", 0.1)
    assert isinstance(m.value, torch.nn.Sequential)
    with pytest.raises(ValueError, match=r"this model fixes fixed_erase=0.0; got fixed_erase=0.5"):
        build_model("no_forget", fixed_erase=0.5)
    with pytest.raises(ValueError, match="needs an int window"):
        build_model("slot_memory", window=None)


def test_model_trace_recall_and_slot_count():
    torch.manual_seed(0)
    model = build_model("slot_memory", d_model=32, slot_dim=16, num_slots=4).eval()
    tokens = build_task("changing_facts").sample(2).tokens
    with torch.no_grad():
        plain = model(tokens)
        logits, trace = model(tokens, return_trace=True)
        assert torch.equal(plain, logits) and trace["write"].shape == (2, tokens.shape[1], 4)
        answers = model.recall(tokens, tokens[:, 1:7:3])
        assert answers.shape == (2, tokens.shape[1], 2) and answers.dtype == torch.long
        model.num_slots = 7
        assert model(tokens, return_trace=True)[1]["write"].shape[-1] == 7


def test_gradients_reach_the_memory_and_a_tiny_run_learns():
    torch.manual_seed(0)
    model = build_model("slot_memory", d_model=32, slot_dim=16, num_slots=4)
    task = build_task("associative_lookup", seq_len=24, num_pairs=2, num_queries=2, min_distance=3)
    batch = task.sample(16, seed=1)
    answer_loss(model(batch.tokens), batch).backward()
    mem = model.memory
    for name, p in [("query", mem.query.weight), ("key", mem.key.weight), ("value", mem.value.weight),
                    ("gates", mem.gates.weight), ("sharpness", mem.log_sharpness),
                    ("write sharpness", mem.log_write_sharpness), ("threshold", mem.match_threshold)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        before = float(answer_loss(model(batch.tokens), batch))
    train(model, task, steps=120, batch_size=32, lr=1e-2, progress=False)
    with torch.no_grad():
        after = float(answer_loss(model(batch.tokens), batch))
    assert after < before - 1.0, (before, after)
