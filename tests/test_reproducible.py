"""The numerical environment (memorylib/reproducible.py): what a fingerprint certifies and what
same_numerics compares. The test session runs with the environment applied (conftest.py)."""

import torch

from memorylib import reproducible


def test_the_session_runs_in_the_reference_environment():
    assert reproducible.is_reference()
    assert torch.get_num_threads() == 2
    assert not reproducible.is_reference({**reproducible.NUMERIC_ENV, "MKL_CBWR": "AUTO"})
    env = {}
    assert reproducible.apply(env) == reproducible.NUMERIC_ENV and reproducible.is_reference(env)


def test_fingerprint_is_stable_and_leaves_the_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    reproducible.fingerprint.cache_clear()
    first = reproducible.fingerprint()
    assert torch.equal(torch.rand(3), expected)          # the global random stream is untouched
    reproducible.fingerprint.cache_clear()
    assert reproducible.fingerprint() == first and len(first) == 16
    int(first, 16)


def test_same_numerics_needs_the_same_fingerprint():
    here = reproducible.fingerprint()
    assert reproducible.same_numerics({"fingerprint": here})
    assert not reproducible.same_numerics({"fingerprint": "0" * 16})
    assert not reproducible.same_numerics({})               # a sweep that recorded none


def test_committed_surprise_sweeps_record_their_fingerprint():
    import json
    import pathlib
    root = pathlib.Path(__file__).resolve().parents[1]
    for name in ("ch04_surprise.json", "ch04_surprise_long.json"):
        record = json.loads((root / "book" / "results" / name).read_text())
        assert len(record["fingerprint"]) == 16 and record["numeric_env"] == reproducible.NUMERIC_ENV
