"""Training lowers the loss; evaluation is held out, JSON-ready and has honest intervals."""

import json
import math

import numpy as np
import pytest
import torch

from memorylib.registry import build_model, build_task
from memorylib.stats import bootstrap_interval, wilson_interval
from memorylib.training import answer_loss, evaluate, evaluate_length_extrapolation, train


def test_a_tiny_run_lowers_the_loss():
    torch.manual_seed(0)
    task = build_task("associative_lookup", seq_len=48, num_pairs=2, num_queries=2, min_distance=3)
    model = build_model("tiny_transformer", d_model=32, num_heads=2)
    batch = task.sample(64, seed=123)
    with torch.no_grad():
        before = float(answer_loss(model(batch.tokens), batch))
    out = train(model, task, steps=80, batch_size=16, lr=3e-3, progress=False)
    with torch.no_grad():
        after = float(answer_loss(model(batch.tokens), batch))
    assert after < before - 0.5, (before, after)
    assert len(out["history"]["loss"]) == 9 and out["history"]["step"][-1] == 79


def test_evaluate_returns_a_json_ready_dict_with_an_interval_around_the_accuracy():
    torch.manual_seed(0)
    task = build_task("associative_lookup")
    res = evaluate(build_model("tiny_transformer"), task, num_examples=64, batch_size=32)
    json.dumps(res)
    assert res["num_examples"] == 64 and res["num_answers"] == 64 * 8
    assert res["ci"][0] <= res["accuracy"] <= res["ci"][1]
    assert res["min_distance"] >= task.min_distance and res["chance"] == round(1 / 64, 4)
    bins = res["by_distance"]
    assert sum(bins["count"]) == res["num_answers"]
    assert all(lo < hi for lo, hi in zip(bins["lo"], bins["hi"]))
    assert res["stale_rate"] is None
    assert evaluate(build_model("tiny_transformer"), task, num_examples=64)["accuracy"] <= 0.2  # untrained


def test_evaluation_is_deterministic_and_reports_stale_answers():
    torch.manual_seed(1)
    model = build_model("tiny_transformer")
    task = build_task("changing_facts")
    a = evaluate(model, task, num_examples=32, seed=3)
    assert a == evaluate(model, task, num_examples=32, seed=3)
    assert a["stale_rate"] is not None and 0 <= a["stale_rate"] <= 1


def test_length_extrapolation_evaluates_every_factor():
    proto = build_task("length_extrapolation", seq_len=96, factors=(1, 2), num_pairs=4, num_queries=4)
    res = evaluate_length_extrapolation(build_model("tiny_transformer"), proto, num_examples=16)
    assert set(res) == {1, 2} and res[2]["max_distance"] > res[1]["max_distance"]


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert math.isclose(lo, 0.4902, abs_tol=1e-3) and math.isclose(hi, 0.9433, abs_tol=1e-3)
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(10, 10)[1] == 1
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(5, 3)


def test_bootstrap_interval_covers_the_truth_and_widens_with_clustering():
    rng = np.random.default_rng(0)
    counts = np.full(500, 8)
    correct = rng.binomial(8, 0.7, size=500)
    lo, hi = bootstrap_interval(correct, counts)
    mean = correct.sum() / counts.sum()
    assert lo < mean < hi
    assert 0.02 < hi - lo < 0.04     # binomial width for 4000 independent answers: 2 * 1.96 * 0.0072
    clustered = np.where(rng.random(500) < 0.7, 8, 0)      # all-or-nothing sequences
    lo2, hi2 = bootstrap_interval(clustered, counts)
    assert hi2 - lo2 > 2 * (hi - lo)


def test_train_rejects_bad_arguments():
    task, model = build_task("associative_lookup"), build_model("tiny_transformer")
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        train(model, task, steps=0)
    with pytest.raises(ValueError, match="lr must be a number > 0, got 0"):
        train(model, task, steps=1, lr=0)


def test_fisher_exact_known_values():
    from memorylib.stats import fisher_exact
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: two-sided p = 34/70
    assert math.isclose(fisher_exact(3, 4, 1, 4), 34 / 70)
    assert math.isclose(fisher_exact(3, 3, 0, 3), 0.1)          # three seeds against three
    assert math.isclose(fisher_exact(2, 3, 0, 3), 0.4)
    assert fisher_exact(2, 2, 2, 2) == 1.0 and fisher_exact(0, 5, 0, 7) == 1.0
    assert math.isclose(fisher_exact(10, 10, 0, 10), 2 / math.comb(20, 10))
    assert fisher_exact(0, 3, 3, 3) == fisher_exact(3, 3, 0, 3)   # symmetric in the groups
    with pytest.raises(ValueError, match="hits=4, n=3"):
        fisher_exact(4, 3, 0, 3)


def test_the_validation_stream_is_another_held_out_stream():
    from memorylib.experiments import run
    from memorylib.training import predict

    task = build_task("associative_lookup", seq_len=48, num_pairs=4, num_queries=4, min_distance=18)
    net = build_model("local_transformer", d_model=16, num_heads=2)
    test, val = (predict(net, task, num_examples=16, seed=0, split=s) for s in ("eval", "validation"))
    assert not np.array_equal(test["target"], val["target"])
    assert np.array_equal(val["target"], predict(net, task, num_examples=16, seed=0, split="validation")["target"])
    with pytest.raises(ValueError, match="split must be one of"):
        predict(net, task, num_examples=4, split="test")
    r = run("local_transformer", task, steps=2, batch_size=4, warmup=1, num_examples=8,
            model_kwargs={"d_model": 16, "num_heads": 2}, validation_tasks={"train": task})
    assert set(r["validation"]) == {"train"} and r["validation"]["train"]["num_examples"] == 8
    assert "validation" not in run("local_transformer", task, steps=2, batch_size=4, warmup=1, num_examples=8,
                                   model_kwargs={"d_model": 16, "num_heads": 2})
