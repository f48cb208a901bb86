"""The experiment runner (chapters 2-3): a run reproduces itself and records what it did.
Slot statistics, survival, figures and widgets are tested in test_slot_figures.py."""

import json

import pytest

from memorylib.experiments import run, summarize
from memorylib.registry import build_task


def test_run_reproduces_itself_and_records_what_it_did():
    task = build_task("associative_lookup", seq_len=30, num_pairs=2, num_queries=2, min_distance=6)
    kwargs = {"d_model": 32, "slot_dim": 16, "num_slots": 4}
    a = run("slot_memory", task, seed=3, steps=6, batch_size=8, model_kwargs=kwargs, num_examples=16,
            pretrain={"task": task, "steps": 4, "lr": 1e-2})
    b = run("slot_memory", task, seed=3, steps=6, batch_size=8, model_kwargs=kwargs, num_examples=16,
            pretrain={"task": task, "steps": 4, "lr": 1e-2})
    assert a["eval"] == b["eval"] and a["history"] == b["history"]
    assert a["pretrain_history"]["step"][-1] == 3 and a["history"]["step"][-1] == 5
    json.dumps(a)
    s = summarize([a, b], "accuracy", "train")
    assert s["n"] == 2 and s["std"] == 0.0 and s["mean"] == a["eval"]["train"]["accuracy"]
    with pytest.raises(ValueError, match="at least one row"):
        summarize([], "accuracy", "train")


def test_starting_from_first_stage_weights_reproduces_the_two_stage_run():
    """Chapter 3 trains only its second stage live, from the weights a sweep saved after the first."""
    first = build_task("associative_lookup", seq_len=30, num_pairs=2, num_queries=2, min_distance=6)
    second = build_task("changing_facts", seq_len=60, num_active_keys=2, updates_per_phase=3,
                        queries_per_phase=1, num_phases=2, min_distance=6)
    kwargs = {"d_model": 32, "slot_dim": 16, "num_slots": 4}
    both = run("slot_memory", second, seed=5, steps=5, batch_size=8, lr=3e-3, warmup=2, model_kwargs=kwargs,
               num_examples=16, pretrain={"task": first, "steps": 4, "lr": 1e-2})
    stage1, net = run("slot_memory", first, seed=5, steps=4, batch_size=8, lr=1e-2, warmup=50,
                      model_kwargs=kwargs, num_examples=16, return_model=True)
    assert stage1["history"] == both["pretrain_history"]
    stage2 = run("slot_memory", second, seed=5, steps=5, batch_size=8, lr=3e-3, warmup=2, model_kwargs=kwargs,
                 num_examples=16, start_from=net.state_dict())
    assert stage2["history"] == both["history"] and stage2["eval"] == both["eval"]
    # without the first stage's weights the second stage ends elsewhere (the test can fail)
    fresh = run("slot_memory", second, seed=5, steps=5, batch_size=8, lr=3e-3, warmup=2, model_kwargs=kwargs,
                num_examples=16)
    assert fresh["history"] != both["history"]
    with pytest.raises(ValueError, match="not both"):
        run("slot_memory", second, steps=1, model_kwargs=kwargs, start_from=net.state_dict(),
            pretrain={"task": first, "steps": 1})
