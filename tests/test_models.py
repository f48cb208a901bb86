"""Model contract: shapes, registry, and causality for every registered model."""

import pytest
import torch

from memorylib.registry import build_model, model_names
from memorylib.tasks import TokenLayout

VOCAB = TokenLayout().vocab_size


def random_tokens(batch, seq_len, seed=0):
    return torch.randint(1, VOCAB, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", model_names())
def test_output_shape(name):
    model = build_model(name)
    for seq_len in (1, 7, 50):
        assert model(random_tokens(3, seq_len)).shape == (3, seq_len, VOCAB)


@pytest.mark.parametrize("name", model_names())
def test_causality_future_tokens_never_change_past_logits(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    tokens = random_tokens(2, 64)
    with torch.no_grad():
        base = model(tokens)
        for t in (0, 5, 31, 62):
            changed = tokens.clone()
            changed[:, t + 1:] = random_tokens(2, 63 - t, seed=t + 1)
            out = model(changed)
            assert torch.allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-5), f"position <= {t} saw the future"
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:], atol=1e-5)  # the test can fail


@pytest.mark.parametrize("window,layers", [(4, 1), (4, 2), (8, 3)])
def test_windowed_model_sees_exactly_its_receptive_field(window, layers):
    torch.manual_seed(0)
    model = build_model("local_transformer", window=window, num_layers=layers).eval()
    rf = model.receptive_field
    assert rf == layers * (window - 1) + 2   # attention reach plus the previous-token mix
    tokens, t = random_tokens(1, 64), 50
    with torch.no_grad():
        base = model(tokens)[0, t]
        far = tokens.clone()
        far[0, :t - rf + 1] = random_tokens(1, t - rf + 1, seed=9)   # everything out of reach
        assert torch.allclose(model(far)[0, t], base, atol=1e-5)
        near = tokens.clone()
        near[0, t - rf + 1] = (near[0, t - rf + 1] % (VOCAB - 1)) + 1      # the farthest token in reach
        assert not torch.allclose(model(near)[0, t], base, atol=1e-5)


def test_full_attention_has_no_receptive_field_limit_and_window_can_be_set_later():
    model = build_model("tiny_transformer").eval()
    assert model.receptive_field is None
    tokens = random_tokens(1, 40)
    with torch.no_grad():
        full = model(tokens)
        model.window = 4
        windowed = model(tokens)
    assert torch.allclose(full[:, :4], windowed[:, :4], atol=1e-5)
    assert not torch.allclose(full[:, 20:], windowed[:, 20:], atol=1e-4)


def test_registry_builds_independent_models_with_options():
    a = build_model("local_transformer", window=8, d_model=32, num_heads=2)
    b = build_model("local_transformer")
    assert a.window == 8 and b.window == 16 and a.embed.embedding_dim == 32
    with pytest.raises(ValueError, match="tiny_transformer has full attention"):
        build_model("tiny_transformer", window=8)


def test_gradients_reach_every_parameter():
    model = build_model("tiny_transformer")
    model(random_tokens(2, 20)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
