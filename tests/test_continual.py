"""Continual learning curves (chapter 8): evaluations at the stated steps, every task each time,
and forgetting measured from the curve."""

import pytest

from memorylib.continual import forgetting_curves
from memorylib.registry import build_task


def phases():
    return [("lookup", build_task("associative_lookup", seq_len=48, num_pairs=2, num_queries=2, min_distance=18)),
            ("needle", build_task("needle_recall", seq_len=96, filler="predictable"))]


def test_curves_have_an_evaluation_of_every_task_at_each_step():
    r = forgetting_curves("local_transformer", phases(), steps=5, eval_every=2, batch_size=4, num_examples=8,
                          model_kwargs={"d_model": 16, "num_heads": 2})
    assert r["step"] == [0, 1, 3, 5, 6, 8, 10]           # before training, then after 1, 3, 5 updates per phase
    assert set(r["accuracy"]) == {"lookup", "needle"} and all(len(v) == 7 for v in r["accuracy"].values())
    assert all(lo <= a <= hi for a, (lo, hi) in zip(r["accuracy"]["lookup"], r["ci"]["lookup"]))
    assert r["forgetting"] == {"lookup": round(max(r["accuracy"]["lookup"]) - r["accuracy"]["lookup"][-1], 4)}
    again = forgetting_curves("local_transformer", phases(), steps=5, eval_every=2, batch_size=4, num_examples=8,
                              model_kwargs={"d_model": 16, "num_heads": 2})
    assert again["accuracy"] == r["accuracy"]            # deterministic given the seed


def test_bad_phases():
    with pytest.raises(ValueError, match="distinct names"):
        forgetting_curves("local_transformer", phases() + phases()[:1], steps=2)
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        forgetting_curves("local_transformer", phases(), steps=0)


def test_joint_training_sees_every_task_for_as_many_steps_as_the_phases():
    from memorylib.continual import joint_training

    r = joint_training("local_transformer", phases(), steps=3, batch_size=4, num_examples=8,
                       model_kwargs={"d_model": 16, "num_heads": 2})
    assert r["steps"] == 6 and set(r["accuracy"]) == {"lookup", "needle"}
    assert all(lo <= r["accuracy"][t] <= hi for t, (lo, hi) in r["ci"].items())
    again = joint_training("local_transformer", phases(), steps=3, batch_size=4, num_examples=8,
                           model_kwargs={"d_model": 16, "num_heads": 2})
    assert again["accuracy"] == r["accuracy"]
    with pytest.raises(ValueError, match="non-empty list"):
        joint_training("local_transformer", [])


def test_each_phase_can_train_at_its_own_rate(monkeypatch):
    import memorylib.continual as continual

    kw = dict(steps=3, eval_every=2, batch_size=4, num_examples=8, model_kwargs={"d_model": 16, "num_heads": 2})
    same = forgetting_curves("local_transformer", phases(), lr=3e-3, **kw)
    split = forgetting_curves("local_transformer", phases(), lr={"lookup": 3e-3, "needle": 3e-3}, **kw)
    assert split["accuracy"] == same["accuracy"] and split["lr"] == {"lookup": 3e-3, "needle": 3e-3}
    used, train = [], continual.train
    monkeypatch.setattr(continual, "train", lambda net, task, **k: used.append(k["lr"]) or train(net, task, **k))
    forgetting_curves("local_transformer", phases(), lr={"needle": 1e-1, "lookup": 3e-3}, **kw)
    assert used == [3e-3, 1e-1]                              # in the phases' order
    with pytest.raises(ValueError, match=r"a rate for every phase \['lookup', 'needle'\], got rates for \['lookup'\]"):
        forgetting_curves("local_transformer", phases(), lr={"lookup": 1e-3}, steps=2)
