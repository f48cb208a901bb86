"""Long needle streams (chapter 7): the generator is chapter 1's needle task at any length, any
split into pieces gives the same stream, the leakage controls leave the answer nowhere before the
query, and the evaluator never feeds a model the answer token."""

import numpy as np
import pytest
import torch

from memorylib.models import FullMemoryModel
from memorylib.registry import build_model, build_task
from memorylib.streaming import NeedleStream, stream_needle
from memorylib.tasks import TokenLayout

LAY = TokenLayout()


def whole(gen):
    return gen.piece(0, gen.seq_len)


@pytest.mark.parametrize("seq_len", [96, 192, 1000])
def test_equals_chapter_one_needle_task(seq_len):
    batch = build_task("needle_recall", seq_len=seq_len, filler="predictable").sample(8, seed=3)
    gen = NeedleStream(seq_len, 8, seed=3)
    assert torch.equal(whole(gen), batch.tokens)
    assert torch.equal(batch.targets[:, gen.answer_position], gen.targets)
    assert (batch.targets[:, :gen.answer_position] == -100).all()
    assert torch.allclose(gen.depth.float(), batch.extras["depth"])


@pytest.mark.parametrize("filler", ["predictable", "random"])
def test_any_split_gives_the_same_stream(filler):
    gen = NeedleStream(9000, 3, seed=1, filler=filler)
    one = whole(gen)
    cuts = [0, 1, 17, 4095, 4096, 4100, 8191, 9000]
    assert torch.equal(torch.cat([gen.piece(a, b) for a, b in zip(cuts, cuts[1:])], 1), one)
    if filler == "random":
        assert LAY.is_filler(one).float().mean() > 0.99 and one[:, :50].unique().numel() > 20


def test_depths_span_the_stream_and_keep_min_distance():
    gen = NeedleStream(3000, 3, depths=[0.0, 0.5, 1.0])
    tok = whole(gen)
    cells = gen.needle_cell.squeeze(1)
    assert cells[0] == 0 and (tok[:, 0] == LAY.SET)[0]
    assert gen.answer_position - gen.needle_position[2] >= 48 > gen.answer_position - gen.needle_position[2] - 3
    for b in range(3):
        assert tok[b, cells[b] * 3 + 1] == gen.key[b, 0] and tok[b, cells[b] * 3 + 2] == gen.targets[b]
    with pytest.raises(ValueError, match=r"depths must be 3 numbers in \[0, 1\]"):
        NeedleStream(3000, 3, depths=[0.0, 0.5, 1.5])


def test_leakage_controls_leave_the_answer_nowhere_before_the_query():
    for mode in ("removed", "shuffled"):
        gen = NeedleStream(600, 64, seed=2, mode=mode)
        before = whole(gen)[:, :gen.answer_position + 1]
        assert not (before == gen.targets[:, None]).any(), mode
        assert (before == LAY.SET).any(1).tolist() == [mode == "shuffled"] * 64
    ok = NeedleStream(600, 64, seed=2, mode="other_key")
    tok = whole(ok)
    assert not (tok[:, :ok.answer_position] == ok.key).any()          # the asked key appears only in the query
    assert (tok[:, :ok.answer_position] == ok.targets[:, None]).any(1).all()   # the value is there, filed elsewhere
    with pytest.raises(ValueError, match=r"mode must be one of .*got 'peek'"):
        NeedleStream(600, 2, mode="peek")


class Recorder(FullMemoryModel):
    """Records every token it is fed."""

    def stream(self, tokens, state=None, last_only=False):
        self.fed.append(tokens)
        return super().stream(tokens, state, last_only)


def test_evaluator_stops_at_the_query_and_reports_constant_state():
    torch.manual_seed(0)
    m = Recorder(d_model=16, num_heads=2, key_dim=8, value_dim=8, sidecar_dim=8)
    results = {}
    for seq_len in (600, 3000):
        m.fed = []
        r = stream_needle(m, seq_len, 6, num_depths=3, piece=128, batch_size=4, progress=False)
        gen = NeedleStream(seq_len, 1)
        for rows in (4, 2):                     # two batches of streams, each fed up to the scored token
            assert sum(t.shape[1] for t in m.fed if t.shape[0] == rows) == gen.answer_position + 1
        assert max(t.shape[1] for t in m.fed) == 128
        results[seq_len] = r
    assert results[600]["state_bytes"] == results[3000]["state_bytes"] > 0
    r = results[3000]
    assert r["trials"] == 6 and r["by_depth"]["depth"] == [0.0, 0.5, 1.0] and r["by_depth"]["n"] == [2, 2, 2]
    assert 0 <= r["ci"][0] <= r["accuracy"] <= r["ci"][1] <= 1
    assert r["stored_value_rate"] == r["accuracy"]          # mode "needle": the stored value is the target


def test_evaluator_rejects_models_that_cannot_stream():
    with pytest.raises(ValueError, match="LearnedMemoryModel has no stream method"):
        stream_needle(build_model("delta_memory"), 600, 2, progress=False)
    with pytest.raises(ValueError, match="trials must be an int >= 1, got 0"):
        stream_needle(build_model("full_memory"), 600, 0, progress=False)


def test_a_trained_needle_model_would_be_caught_reading_the_future():
    """The evaluator scores the prediction at ``ASK k``; a model fed one more token (the answer)
    could copy it. The stream it is fed ends exactly at the scored position."""
    gen = NeedleStream(600, 4, seed=5)
    tok = whole(gen)
    assert torch.equal(tok[:, gen.answer_position + 1], gen.targets)       # the answer is the next token
    assert (tok[:, gen.answer_position - 1] == LAY.ASK).all()
    assert np.all(gen.answer_position + 1 <= gen.seq_len)


def test_sidecar_lifetimes_track_entries_and_flag_the_needle():
    from memorylib.streaming import sidecar_lifetimes

    torch.manual_seed(0)
    m = FullMemoryModel(d_model=16, num_heads=2, key_dim=8, value_dim=8, sidecar_dim=8, sidecar=4).eval()
    gen = NeedleStream(900, 2, seed=1, depths=[0.2, 0.9])
    r = sidecar_lifetimes(m, gen, piece=50)
    assert r["end"] == gen.answer_position and (r["lifetime"] >= 0).all()
    assert (r["position"] < r["end"]).all() and (r["censored"] == (r["position"] + 1 + r["lifetime"] == r["end"])).all()
    for b in range(2):            # at most 4 entries still cached per stream at the end
        assert r["censored"][r["stream"] == b].sum() <= 4
    cell = gen.needle_cell.squeeze(1) * 3
    flagged = [(s, p) for s, p, n in zip(r["stream"], r["position"], r["needle"]) if n]
    assert all(cell[s] <= p < cell[s] + 3 for s, p in flagged)
    with pytest.raises(ValueError, match="has no sidecar"):
        sidecar_lifetimes(build_model("no_sidecar"), gen)
