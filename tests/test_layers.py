"""The fast dropout and the transformer block against their PyTorch references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import load_bench
from miir.models.layers import Block, dropout, dropout_multipliers, random_words


@pytest.mark.parametrize("p", [0.5, 0.25, 0.125, 0.1, 0.3])
def test_dropout_multipliers_have_the_right_law(p: float) -> None:
    torch.manual_seed(0)
    m = dropout_multipliers((400, 500), p, torch.float32, torch.device("cpu"))
    values = m.unique()
    assert len(values) == 2 and values[0] == 0.0
    assert values[1].item() == pytest.approx(1 / (1 - p), rel=1e-6)
    assert abs((m == 0).float().mean().item() - p) < 0.005  # 200k draws: sd about 0.001
    assert abs(m.mean().item() - 1.0) < 0.01  # inverted dropout keeps the expectation
    # neighbouring elements are independent (the bit path packs 8 per byte)
    z = (m == 0).float().view(-1)
    both = (z[:-1] * z[1:]).mean().item()
    assert abs(both - p * p) < 0.005


def test_dropout_is_seeded_and_backpropagates_through_the_same_mask() -> None:
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.5, True)
    torch.manual_seed(3)
    assert torch.equal(y, dropout(x, 0.5, True))
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 2.0)
    assert torch.equal(dropout(x, 0.5, False), x)
    bf = dropout(x.detach().bfloat16(), 0.5, True)
    assert bf.dtype == torch.bfloat16


def test_block_matches_transformer_encoder_layer() -> None:
    """Without dropout, our block computes exactly what nn.TransformerEncoderLayer does."""
    torch.manual_seed(0)
    ours = Block(16, 4, 0.0).eval()
    ref = nn.TransformerEncoderLayer(16, 4, 64, 0.0, activation="gelu", batch_first=True).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(ours.qkv.bias)
        ref.self_attn.out_proj.load_state_dict(ours.proj.state_dict())
        for a, b in (("linear1", "ff1"), ("linear2", "ff2"), ("norm1", "ln1"), ("norm2", "ln2")):
            getattr(ref, a).load_state_dict(getattr(ours, b).state_dict())
    x = torch.randn(3, 10, 16)
    pad = torch.zeros(3, 10, dtype=torch.bool)
    pad[0, :4] = True
    mask = torch.zeros(3, 1, 1, 10).masked_fill(pad[:, None, None, :], float("-inf"))
    got = ours(x, mask)
    want = ref(x, src_key_padding_mask=pad)
    assert torch.allclose(got[~pad], want[~pad], atol=1e-5)
    # the training path (manual attention, used with dropout) agrees with SDPA when p = 0
    ours.train()
    ours.p = 1e-12
    assert torch.allclose(ours(x, mask)[~pad], got[~pad], atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.3])
def test_dropout_multipliers_take_their_bits_from_sfc64_seeded_by_torch(p, dtype) -> None:
    """The bits of today's form are numpy SFC64's, seeded by one draw from torch's generator;
    bench/bench_dropout.py's earlier forms (torch.randint's bits) agree with each other."""
    shape = (7, 33, 5)
    n = 7 * 33 * 5
    torch.manual_seed(5)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    words = torch.from_numpy(np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int64))
    keep = words.view(torch.int16)[:n].view(shape) >= round(p * 65536) - 32768
    torch.manual_seed(5)
    today = dropout_multipliers(shape, p, dtype, torch.device("cpu"))
    assert today.dtype == dtype
    assert torch.equal(today != 0, keep)
    assert torch.equal(today[keep], torch.full_like(today[keep], 1 / (1 - p)))
    bench = load_bench("bench_dropout")
    torch.manual_seed(5)
    oldest = bench.bool_float32_multipliers(shape, p, dtype)
    torch.manual_seed(5)
    assert torch.equal(oldest, bench.torch_bits_multipliers(shape, p, dtype))


def test_random_words_are_seeded_by_torch_and_cover_every_bit() -> None:
    torch.manual_seed(11)
    a = random_words(5000, torch.device("cpu"))
    torch.manual_seed(11)
    assert torch.equal(a, random_words(5000, torch.device("cpu")))
    assert not torch.equal(a, random_words(5000, torch.device("cpu")))  # the stream moved on
    assert a.dtype == torch.int64 and a.shape == (5000,)
    bits = ((a[:, None] >> torch.arange(64)) & 1).float().mean(0)  # each bit's share of ones
    assert bits.min() > 0.46 and bits.max() < 0.54  # 5000 draws: sd about 0.007
