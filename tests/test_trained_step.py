"""bench/bench_trained_step.py: the variants swap the loss, the dropout bits and the
floating-point mode of a step, and put everything back."""

from __future__ import annotations

import subprocess

import pytest
import torch

import miir.models.layers as layers
import miir.models.miir as miir_model
import miir.models.softmax as softmax
from helpers import load_bench


def test_variants_swap_what_they_name_and_restore_it() -> None:
    bench = load_bench("bench_trained_step")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=bench.ROOT, capture_output=True, check=False
    )
    if head.returncode != 0:
        pytest.skip("not a git checkout: no earlier loss to load")
    old = bench.module_at("HEAD", "src/miir/models/softmax.py", "softmax_at_head")
    loss, bits = miir_model.softmax_cross_entropy, layers.dropout_multipliers
    assert old.softmax_cross_entropy is not loss  # a module of its own, from git
    tiny = torch.tensor(1e-39)  # subnormal in float32
    mode, fill = (
        torch.are_deterministic_algorithms_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    has_mode = torch.set_flush_denormal(True)  # False on a CPU without flush-to-zero
    torch.set_flush_denormal(False)
    for name in bench.VARIANTS:
        with bench.variant(name, old):
            swapped_loss = miir_model.softmax_cross_entropy is old.softmax_cross_entropy
            assert swapped_loss == (name in ("before", "torch exp"))
            assert (layers.dropout_multipliers is bench.torch_bits) == (
                name in ("before", "torch bits")
            )
            assert ((tiny * 1.0).item() == 0.0) == (name == "flush" and has_mode)
            assert torch.are_deterministic_algorithms_enabled()
            assert (name == "keep") == softmax.KEEP_16BIT
            assert torch.utils.deterministic.fill_uninitialized_memory == (
                name in ("before", "fill")
            )
        assert miir_model.softmax_cross_entropy is loss and layers.dropout_multipliers is bits
        assert (tiny * 1.0).item() != 0.0
        assert torch.are_deterministic_algorithms_enabled() == mode  # as before the block
        assert softmax.KEEP_16BIT is False
        assert torch.utils.deterministic.fill_uninitialized_memory == fill
    with pytest.raises(ValueError, match="bit-table"):
        bench.torch_bits((4, 4), 0.5, torch.float32, torch.device("cpu"))
    torch.manual_seed(0)
    m = bench.torch_bits((100, 100), 0.1, torch.float32, torch.device("cpu"))
    assert abs((m == 0).float().mean().item() - 0.1) < 0.02
