"""The full model (chapter 7): local attention + learned memory gated by surprise + sidecar.
Streaming in pieces equals one call, the carried state has a constant size, the switches do what
they say, and bad options get clear errors. (Causality: tests/test_models.py covers every
registered model, these included.)"""

import pytest
import torch

from memorylib.models import FullMemoryModel
from memorylib.registry import build_model
from memorylib.tasks import TokenLayout

VOCAB = TokenLayout().vocab_size
SMALL = dict(d_model=32, num_heads=2, key_dim=8, value_dim=8, hidden=8, sidecar_dim=8, window=6)


def tokens(batch, seq_len, seed=0):
    return torch.randint(1, VOCAB, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return FullMemoryModel(**{**SMALL, **kwargs}).double().eval()


@pytest.mark.parametrize("kwargs", [dict(kind="delta"), dict(kind="linear"), dict(kind="delta", forget=True),
                                    dict(kind="mlp", momentum=True, forget=True, chunk_size=4),
                                    dict(sidecar=0), dict(surprise=False, sidecar=3),
                                    dict(sidecar_rank="recency", sidecar=3), dict(sidecar_rank="random", sidecar=3),
                                    dict(sidecar_rank="write", sidecar=3), dict(sidecar_rank="learned", sidecar=3)])
def test_streaming_in_pieces_equals_one_call(kwargs):
    m, x = model(**kwargs), tokens(2, 61)
    with torch.no_grad():
        whole = m(x)
    outs, state = [], None
    for lo, hi in [(0, 1), (1, 9), (9, 10), (10, 40), (40, 61)]:
        logits, state = m.stream(x[:, lo:hi], state)
        outs.append(logits)
    assert (torch.cat(outs, 1) - whole).abs().max() < 1e-10
    last, _ = m.stream(x[:, 40:], m.stream(x[:, :40])[1], last_only=True)
    assert last.shape == (2, 1, VOCAB) and (last[:, 0] - whole[:, -1]).abs().max() < 1e-10


def test_sidecar_ranked_by_recency_keeps_the_latest_tokens():
    from memorylib.sidecar import sidecar_weights

    m, x = model(sidecar=3, sidecar_rank="recency"), tokens(2, 30)
    with torch.no_grad():
        h = m.features(x)
        sig = m._signals(x, h)
        weights, _ = sidecar_weights(*m._side_inputs(h), m._rank_scores(sig, m._gated_inputs(h, sig)), 3)
    t = torch.arange(30)
    allowed = (t[None, :] < t[:, None]) & (t[None, :] >= t[:, None] - 3)      # the 3 tokens before t
    assert bool((weights[:, ~allowed] == 0).all()) and bool((weights[:, allowed] > 0).all())
    random = model(sidecar=3, sidecar_rank="random")
    assert not torch.equal(random._rank_scores({"surprise": torch.zeros(1, 8)}, {}, 0),
                           random._rank_scores({"surprise": torch.zeros(1, 8)}, {}, 8))


def test_a_keep_cost_without_a_learned_keep_score_is_refused():
    with pytest.raises(ValueError, match="keep_weight is the cost of a learned keep score.*sidecar_rank='surprise'"):
        model(keep_weight=0.1)
    assert model(sidecar_rank="learned", keep_weight=0.0).keep_weight == 0.0


def test_a_learned_keep_score_ranks_the_cache_and_is_trained_by_its_reads_and_its_cost():
    from memorylib.sidecar import sidecar_weights

    m, x = model(sidecar=3, sidecar_rank="learned"), tokens(2, 30)
    plain = model(sidecar=3)
    with torch.no_grad():                                # made last: every other weight is full_memory's
        assert all(torch.equal(p, plain.state_dict()[k]) for k, p in m.state_dict().items() if k in plain.state_dict())
        h = m.features(x)
        sig = m._signals(x, h)
        weights, _ = sidecar_weights(*m._side_inputs(h), m._rank_scores(sig, m._gated_inputs(h, sig)), 3,
                                     bias=m._read_bias(sig))
    for b in range(2):                                   # the query at t reads the 3 best scores before t
        for t in (4, 17, 29):
            best = sorted(range(t), key=lambda j: (-sig["keep"][b, j].item(), j))[:3]
            assert sorted(weights[b, t].nonzero().flatten().tolist()) == sorted(best)
    m.train()                                            # trained under the same top 3
    m.zero_grad()
    out = m(x)
    assert float(m.auxiliary_loss().detach()) > float(m._aux.detach())
    (out.pow(2).mean() + m.auxiliary_loss()).backward()
    assert m.keep.weight.grad.abs().sum() > 0
    cost = m.keep_weight * torch.sigmoid(m.keep(m.features(x))).mean()
    assert torch.allclose(m.auxiliary_loss() - m._aux, cost)
    with torch.no_grad():
        m.eval()
        m(x)
    assert float(m.auxiliary_loss()) == float(m._aux if m._aux is not None else 0)


def state_after(m, length, piece=37):
    state = None
    for lo in range(0, length, piece):
        _, state = m.stream(tokens(1, min(piece, length - lo), seed=lo), state)
    assert state.seen == length
    return state


def test_carried_state_has_a_constant_size():
    m = model()                                 # the delta-rule memory: a fixed matrix
    sizes = {length: state_after(m, length).nbytes() for length in (m.receptive_field, 50, 400, 2000)}
    assert len(set(sizes.values())) == 1, sizes
    state = state_after(m, 100)
    assert state.sidecar.keys.shape == (1, m.sidecar, m.sidecar_dim)
    assert state.context.shape == (1, m.receptive_field)


def test_mlp_memory_state_is_bounded_by_one_unfinished_chunk():
    m = model(kind="mlp", chunk_size=4)         # the weights plus at most chunk_size - 1 pending tokens
    sizes = [state_after(m, length).nbytes() for length in range(m.receptive_field, m.receptive_field + 8)]
    assert max(sizes) == max(state_after(m, length).nbytes() for length in range(400, 408))
    assert len(set(sizes)) == 4                 # one size per pending count 0..3, repeating


def test_surprise_gate_scales_the_memory_learning_rate():
    m, x = model(), tokens(2, 30)
    with torch.no_grad():
        _, gated = m(x, return_trace=True)
        m.surprise = False
        _, plain = m(x, return_trace=True)
    gate = gated["surprise_gate"]
    read, source = gated["sidecar_read"], gated["sidecar_from"]
    assert read.shape == source.shape == (2, 30) and (read[:, 0] == 0).all() and (read <= 1).all()
    assert (source < torch.arange(30)).all() and (source[:, 0] == -1).all()     # only earlier tokens
    assert torch.allclose(gated["lr"], plain["lr"] * gate[:, None, :])
    assert gate.min() > 0 and gate.max() < 1 and gated["surprise"].shape == (2, 30)
    assert not torch.allclose(gated["lr"], plain["lr"])       # the gate did something


def test_sidecar_switch_and_capacity():
    m, x = model(), tokens(2, 40)
    with torch.no_grad():
        with_side = m(x)
        m.sidecar = 0
        without = m(x)
        _, trace = m(x, return_trace=True)
        m.side_qkv.weight.add_(1.0)            # unused when the sidecar is off
        assert torch.equal(m(x), without)
    assert trace["sidecar_read"] is None and trace["sidecar_from"] is None
    assert not torch.allclose(with_side, without)


def test_registered_ablations_fix_their_switch():
    assert build_model("full_memory").sidecar == 16
    assert build_model("no_sidecar").sidecar == 0
    assert build_model("full_no_surprise").surprise is False
    assert build_model("full_no_erase").kind == "linear"
    with pytest.raises(ValueError, match="this model fixes sidecar=0; got sidecar=8"):
        build_model("no_sidecar", sidecar=8)


def test_auxiliary_loss_trains_the_prediction_head_and_gradients_reach_every_parameter():
    m = FullMemoryModel(**SMALL)
    x = tokens(2, 30)
    logits = m(x)
    aux = m.auxiliary_loss()
    assert aux.item() > 0
    (logits.logsumexp(-1).mean() + aux).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    with torch.no_grad():
        m(x)
    assert m.auxiliary_loss().item() == 0.0      # no gradient, no auxiliary loss


@pytest.mark.parametrize("kwargs,match", [
    (dict(sidecar=-1), r"sidecar must be an int >= 0, got -1"),
    (dict(sidecar=2.5), r"sidecar must be an int >= 0, got 2.5"),
    (dict(sidecar_dim=0), r"sidecar_dim must be an int >= 1, got 0"),
    (dict(aux_weight=-0.1), r"aux_weight must be a number >= 0, got -0.1"),
    (dict(temperature=0), r"temperature must be a number > 0, got 0"),
    (dict(kind="lstm"), r"kind must be one of \('linear', 'delta', 'mlp'\), got 'lstm'"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FullMemoryModel(**{**SMALL, **kwargs})


def test_bad_stream_input():
    m = model()
    _, state = m.stream(tokens(2, 5))
    with pytest.raises(ValueError, match="the state is for a batch of 2, got 3 sequences"):
        m.stream(tokens(3, 5), state)
    with pytest.raises(ValueError, match=r"seq_len >= 1, got \(2, 0\)"):
        m.stream(tokens(2, 0), state)
    with pytest.raises(ValueError, match="token"):
        m.stream(torch.full((2, 3), VOCAB), state)


@pytest.mark.parametrize("kwargs", [dict(kind="delta"), dict(kind="linear", sidecar=3),
                                    dict(kind="mlp", momentum=True, forget=True, chunk_size=4), dict(sidecar=0),
                                    dict(sidecar_rank="learned", sidecar=3)])
def test_probe_with_the_models_own_features_gives_its_own_logits(kwargs):
    m, x = model(**kwargs), tokens(2, 37)
    with torch.no_grad():
        own, h = m(x), m.features(x)
        at = [0, 5, 17, 36]
        probed = m.probe_logits(x, h[:, at])                     # (B, T, P, vocab)
    for p, t in enumerate(at):
        assert torch.allclose(probed[:, t, p], own[:, t], atol=1e-10), t


def test_recall_answers_per_position_and_probe_and_never_looks_ahead():
    m, x = model(), tokens(2, 40)
    keys = torch.tensor([[3, 9], [4, 4]])
    answers = m.recall(x, keys)
    assert answers.shape == (2, 40, 2) and answers.dtype == torch.long
    y = x.clone()
    y[:, 25:] = tokens(2, 15, seed=1)                            # change the future of position 24
    assert torch.equal(m.recall(y, keys)[:, :25], answers[:, :25])
    assert torch.equal(answers[1, :, 0], answers[1, :, 1])       # the same probe twice, the same answers
