"""Bad input gets a clear error that names the value and the allowed range."""

import pytest
import torch

from memorylib.registry import build_model, build_task
from memorylib.tasks import TokenLayout


@pytest.mark.parametrize("name,kwargs,match", [
    ("associative_lookup", {"seq_len": 30}, r"seq_len=30 is too short .* needs seq_len >= \d+"),
    ("associative_lookup", {"num_pairs": 100}, r"num_pairs must be an int in \[1, 64\], got 100"),
    ("associative_lookup", {"num_queries": 9}, r"num_queries must be an int in \[1, 8\], got 9"),
    ("associative_lookup", {"min_distance": 500}, r"seq_len=144 is too short .*min_distance=500"),
    ("associative_lookup", {"min_distance": 0}, r"min_distance must be an int >= 1, got 0"),
    ("associative_lookup", {"filler": "noise"},
     r"filler must be one of \('random', 'predictable', 'markov'\), got 'noise'"),
    ("changing_facts", {"seq_len": 90}, r"seq_len=90 is too short"),
    ("changing_facts", {"queries_per_phase": 7}, r"queries_per_phase must be an int in \[1, 6\], got 7"),
    ("needle_recall", {"depth": 1.5}, r"depth must be None or a float in \[0, 1\], got 1.5"),
    ("needle_recall", {"seq_len": 30}, r"seq_len=30 is too short"),
    ("multi_hop", {"num_chains": 30}, r"num_chains must be an int in \[1, 21\], got 30"),
    ("length_extrapolation", {"factors": (1, 0)}, r"factors must be a non-empty tuple of ints >= 1"),
])
def test_bad_task_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_task(name, **kwargs)


def test_bad_batch_size_and_seed():
    task = build_task("associative_lookup")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        task.sample(0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        task.sample(4, seed=-1)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model 'tiny_transformr' \(did you mean 'tiny_transformer'\?\); "
                                         r"valid models: .*local_transformer.*tiny_transformer"):
        build_model("tiny_transformr")
    with pytest.raises(ValueError, match=r"unknown task 'lookup'.*valid tasks: associative_lookup"):
        build_task("lookup")


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_bad_window(window):
    with pytest.raises(ValueError, match=r"window must be None \(full attention\) or an int >= 1, got"):
        build_model("local_transformer", window=window)


def test_window_set_later_is_checked_too():
    model = build_model("tiny_transformer")
    model.window = 0
    with pytest.raises(ValueError, match="window must be"):
        model(torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("tokens,match", [
    (torch.zeros(2, 8), r"dtype torch.int64 \(long\), got torch.float32"),
    (torch.zeros(2, 8, dtype=torch.int32), r"dtype torch.int64 \(long\), got torch.int32"),
    (torch.zeros(8, dtype=torch.long), r"shape \(batch, seq_len\) with batch >= 1 and seq_len >= 1, got \(8,\)"),
    (torch.full((2, 8), 163), r"token ids must be in \[0, 163\), got values in \[163, 163\]"),
    (torch.full((2, 8), -1), r"token ids must be in \[0, 163\)"),
    ([[1, 2, 3]], r"tokens must be a torch.Tensor"),
])
def test_bad_tokens(tokens, match):
    model = build_model("tiny_transformer")
    with pytest.raises(ValueError, match=match):
        model(tokens)


def test_bad_layout():
    with pytest.raises(ValueError, match=r"TokenLayout.num_keys must be an int >= 2, got 1"):
        TokenLayout(num_keys=1)
