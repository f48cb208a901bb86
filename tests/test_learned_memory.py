"""Models with a learned memory (chapter 5): the chunked and the token-by-token forms give the same
model, gradients reach every parameter, a tiny run learns; store-and-recall and its figure."""

import pytest
import torch

from memorylib.figures import recall_by_age_figure
from memorylib.models import LearnedMemoryModel
from memorylib.recall import recalled, store_and_recall
from memorylib.registry import build_model
from memorylib.tasks import TokenLayout

VOCAB = TokenLayout().vocab_size
NAMES = ["linear_memory", "delta_memory", "gated_delta_memory", "mlp_memory", "titans_memory"]


def tokens(batch=2, seq_len=29, seed=0):
    return torch.randint(1, VOCAB, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_chunked_model_equals_token_by_token_model_in_float64(name):
    torch.manual_seed(0)
    model = build_model(name, chunk_size=1 if name in ("mlp_memory", "titans_memory") else 8).double().eval()
    x = tokens()
    chunked = model(x)
    model.reference = True
    reference = model(x)
    assert (chunked - reference).abs().max() < 1e-10


@pytest.mark.parametrize("name", NAMES + ["full_memory", "full_learned_keep"])
def test_the_fast_forms_give_the_same_model_and_gradients_in_float64(name):
    """``fast=True`` (an attribute, like ``chunk_size``) runs the fast chunked forms: the same
    logits and parameter gradients as the default forms, in float64, at the default chunk size."""
    torch.manual_seed(0)
    model = build_model(name).double()
    x = tokens(seq_len=45)
    runs = []
    for fast in (False, True):
        model.fast = fast
        model.zero_grad()
        logits = model(x)
        logits.logsumexp(-1).sum().backward()
        runs.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = runs
    assert (a - b).abs().max() < 1e-10
    assert ga.keys() == gb.keys() and all((ga[n] - gb[n]).abs().max() < 1e-9 for n in ga)
    assert build_model(name, fast=True).fast


@pytest.mark.parametrize("name", ["mlp_memory", "titans_memory"])
def test_mlp_chunks_are_an_approximation_of_the_model(name):
    torch.manual_seed(0)
    model = build_model(name, chunk_size=16, max_lr=1.0).double().eval()
    x = tokens()
    chunked = model(x)
    model.reference = True
    assert (chunked - model(x)).abs().max() > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = build_model(name)
    model(tokens()).logsumexp(-1).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


def test_trace_and_options():
    model = build_model("titans_memory")
    _, trace = model(tokens(), return_trace=True)
    assert (trace["lr"].shape == (2, 1, 29) and trace["retain"].shape == (2, 1, 29)
            and trace["momentum"].shape == (2, 1, 29))
    assert float(trace["lr"].detach().max()) <= model.max_lr
    _, trace = build_model("delta_memory")(tokens(), return_trace=True)
    assert trace["retain"] is None and trace["momentum"] is None and float(trace["lr"].detach().max()) < 1
    with pytest.raises(ValueError, match="momentum applies to kind='mlp' only"):
        LearnedMemoryModel(kind="delta", momentum=True)
    with pytest.raises(ValueError, match=r"kind must be one of \('linear', 'delta', 'mlp'\), got 'slots'"):
        LearnedMemoryModel(kind="slots")
    with pytest.raises(ValueError, match="this model fixes kind='delta'; got kind='mlp'"):
        build_model("delta_memory", kind="mlp")
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got 0"):
        build_model("delta_memory", chunk_size=0)


def test_a_tiny_run_overfits_one_batch():
    from memorylib.registry import build_task
    from memorylib.training import answer_loss
    torch.manual_seed(0)
    task = build_task("associative_lookup", seq_len=24, num_pairs=2, num_queries=2, min_distance=4)
    batch = task.sample(16, seed=0)
    model = build_model("delta_memory", d_model=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = answer_loss(model(batch.tokens), batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_store_and_recall():
    small = store_and_recall("delta", 4, dim=32, trials=8)
    assert small["accuracy"] == 1.0 and small["n"] == 32       # 4 random unit keys in 32 dims: no loss
    crowded = store_and_recall("additive", 256, dim=16, trials=4)
    assert crowded["accuracy"] < 0.5 and crowded["ci"][0] <= crowded["accuracy"] <= crowded["ci"][1]
    assert len(crowded["by_age"]) == 256
    mlp = store_and_recall("mlp", 8, dim=16, trials=4, passes=10)
    assert mlp["accuracy"] > 0.9
    # forgetting: with strong retention decay the newest pairs are recalled, the oldest are not
    fading = store_and_recall("additive", 64, dim=16, trials=8, retain=0.8)
    assert fading["by_age"][0] > 0.9 and sum(fading["by_age"][-16:]) / 16 < 0.2
    with pytest.raises(ValueError, match=r"retain must be in \(0, 1\], got 1.5"):
        store_and_recall("delta", 4, retain=1.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        store_and_recall("slots", 4)


def test_recalled_picks_the_nearest_value():
    values = torch.eye(3)[None, None]                           # three orthogonal values
    reads = torch.tensor([[[[1.0, 0.1, 0], [0.9, 0.2, 0], [0, 0, 1.0]]]])
    assert recalled(reads, values).tolist() == [[True, False, True]]


def test_recall_by_age_figure():
    fig = recall_by_age_figure({1.0: {"a": [1.0, 0.5], "b": [0.2, 0.1]}, 0.9: {"a": [1.0, 0.0], "b": [0.3, 0.0]}})
    assert len(fig.data) == 4 and [t.visible for t in fig.data] == [True, True, False, False]
    assert [s["label"] for s in fig.layout.sliders[0].steps] == ["1.0", "0.9"]
    assert fig.layout.sliders[0].steps[1]["args"][0]["visible"] == [False, False, True, True]
    with pytest.raises(ValueError, match="curves must hold at least one retention"):
        recall_by_age_figure({})


@pytest.mark.parametrize("name", NAMES)
def test_untrained_default_models_stay_finite_on_the_longest_default_task(name):
    # at max_lr = 1.0 an untrained MLP memory overflowed to NaN within ~45 tokens
    from memorylib.registry import build_task
    torch.manual_seed(0)
    batch = build_task("changing_facts").sample(4, seed=0)
    with torch.no_grad():
        assert build_model(name)(batch.tokens).isfinite().all()
