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
