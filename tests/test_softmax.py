"""The fused, chunked full-softmax cross-entropy: the loss and both gradients of
``F.cross_entropy((h @ table.T).float(), target)``, in float32 and under bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from miir.models.softmax import softmax_cross_entropy


def run(fn, h0, t0, target, weights, bf16=False):
    h, table = h0.clone().requires_grad_(), t0.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ce = fn(h, table, target)
    (ce * weights).sum().backward()
    return ce.detach(), h.grad, table.grad


def reference(h, table, target):
    return F.cross_entropy((h @ table.T).float(), target, reduction="none")


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(0, 40),
    n=st.integers(1, 60),
    e=st.integers(1, 12),
    chunk=st.integers(1, 17),
    seed=st.integers(0, 2**16),
)
def test_loss_and_gradients_equal_cross_entropy_in_float32(m, n, e, chunk, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    h0, t0 = torch.randn(m, e, generator=g) * 3, torch.randn(n, e, generator=g)
    target, weights = torch.randint(n, (m,), generator=g), torch.rand(m, generator=g)
    want = run(reference, h0, t0, target, weights)
    got = run(lambda h, t, y: softmax_cross_entropy(h, t, y, chunk), h0, t0, target, weights)
    assert got[0].dtype == torch.float32 and got[0].shape == (m,)
    for a, b in zip(got, want, strict=True):
        # float32 sums in another order: a flaky 1.09e-05 at 1e-5 (seed 38224); a wrong softmax
        # or gradient is off by orders of magnitude more
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5)


def test_under_bf16_autocast_it_is_as_close_to_float32_as_the_autocast_reference() -> None:
    g = torch.Generator().manual_seed(0)
    h0, t0 = torch.randn(300, 32, generator=g), torch.randn(2000, 32, generator=g) * 0.2
    target, weights = torch.randint(2000, (300,), generator=g), torch.rand(300, generator=g)
    exact = run(reference, h0, t0, target, weights)
    ref = run(reference, h0, t0, target, weights, bf16=True)
    got = run(softmax_cross_entropy, h0, t0, target, weights, bf16=True)
    for e, r, o in zip(exact, ref, got, strict=True):
        err_ref, err_got = ((r - e).norm() / e.norm()).item(), ((o - e).norm() / e.norm()).item()
        assert 0 < err_got < 1.5 * err_ref + 1e-6  # bf16 products: not exact, no worse
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32


def test_a_table_without_gradient_and_a_state_without_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    h, table, target = (
        torch.randn(9, 4, generator=g),
        torch.randn(7, 4, generator=g),
        torch.arange(9) % 7,
    )
    table.requires_grad_()
    softmax_cross_entropy(h, table, target, 4).sum().backward()
    want = table.grad.clone()
    table.grad = None
    reference(h, table, target).sum().backward()
    torch.testing.assert_close(want, table.grad)
    # a frozen table: only the states get a gradient
    table, h = table.detach(), h.clone().requires_grad_()
    softmax_cross_entropy(h, table, target, 4).sum().backward()
    want, h.grad = h.grad.clone(), None
    reference(h, table, target).sum().backward()
    torch.testing.assert_close(want, h.grad)


def test_mismatched_shapes_are_named() -> None:
    with pytest.raises(ValueError, match=r"states \(3, 4\) and table \(5, 6\)"):
        softmax_cross_entropy(
            torch.zeros(3, 4), torch.zeros(5, 6), torch.zeros(3, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="2 targets for 3 states"):
        softmax_cross_entropy(
            torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long)
        )


def test_a_bias_per_row_of_the_table_is_added_to_every_logit() -> None:
    """``bias`` (the log-Q correction of a sampled softmax; -inf for padding rows): the loss
    and both gradients of the cross-entropy of ``h @ table.T + bias``; padding never wins."""
    g = torch.Generator().manual_seed(2)
    h0, t0 = torch.randn(11, 5, generator=g), torch.randn(9, 5, generator=g)
    bias = torch.rand(9, generator=g) * 2
    bias[7:] = float("-inf")
    target, weights = torch.randint(7, (11,), generator=g), torch.rand(11, generator=g)

    def biased(h, table, y):
        return F.cross_entropy((h @ table.T).float() + bias, y, reduction="none")

    want = run(biased, h0, t0, target, weights)
    got = run(lambda h, t, y: softmax_cross_entropy(h, t, y, 4, bias=bias), h0, t0, target, weights)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5)
    assert torch.equal(got[2][7:], torch.zeros(2, 5))  # the padding rows get no gradient
    with pytest.raises(ValueError, match=r"bias \(8,\) for a table of 9 rows"):
        softmax_cross_entropy(h0, t0, target, bias=bias[:8])
