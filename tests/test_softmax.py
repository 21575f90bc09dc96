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


@pytest.mark.parametrize("keep", [False, True])
def test_under_bf16_autocast_it_is_as_close_to_float32_as_the_autocast_reference(keep) -> None:
    """Recomputing the softmax in the backward pass or keeping it from the forward pass,
    rounded to bf16 (``keep``, an option under a 16-bit dtype): as exact as autocast's own."""
    g = torch.Generator().manual_seed(0)
    h0, t0 = torch.randn(300, 32, generator=g), torch.randn(2000, 32, generator=g) * 0.2
    target, weights = torch.randint(2000, (300,), generator=g), torch.rand(300, generator=g)
    exact = run(reference, h0, t0, target, weights)
    ref = run(reference, h0, t0, target, weights, bf16=True)

    def fn(h, t, y):
        return softmax_cross_entropy(h, t, y, 64, keep=keep)

    got = run(fn, h0, t0, target, weights, bf16=True)
    for e, r, o in zip(exact, ref, got, strict=True):
        err_ref, err_got = ((r - e).norm() / e.norm()).item(), ((o - e).norm() / e.norm()).item()
        assert 0 < err_got < 1.5 * err_ref + 1e-6  # bf16 products: not exact, no worse
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32


def test_the_kept_softmax_gives_the_recomputed_gradients_to_bf16_rounding() -> None:
    """Under bf16 the kept and the recomputed softmax give the same loss (the forward pass is
    the same computation) and gradients that differ by bf16 roundings of the softmax only;
    in float32 ``keep`` changes nothing (the softmax is always recomputed there)."""
    g = torch.Generator().manual_seed(3)
    h0, t0 = torch.randn(50, 16, generator=g), torch.randn(300, 16, generator=g) * 0.5
    bias = torch.rand(300, generator=g)
    bias[290:] = float("-inf")
    target, weights = torch.randint(290, (50,), generator=g), torch.rand(50, generator=g)
    for bf16 in (True, False):
        kept, recomputed = (
            run(
                lambda h, t, y, k=k: softmax_cross_entropy(h, t, y, 16, bias, keep=k),
                h0,
                t0,
                target,
                weights,
                bf16=bf16,
            )
            for k in (True, False)
        )
        torch.testing.assert_close(kept[0], recomputed[0], rtol=1e-6, atol=1e-6)
        for a, b in zip(kept[1:], recomputed[1:], strict=True):
            if bf16:  # a few roundings of a bf16 softmax: within 2% of the gradient's size
                assert 0 < ((a - b).norm() / b.norm()).item() < 0.02
            else:
                assert torch.equal(a, b)
        assert torch.equal(kept[2][290:], torch.zeros(10, 16))  # padding rows: no gradient


def test_a_kept_softmax_cannot_be_used_twice() -> None:
    """The backward pass turns the kept softmax into its gradient in place: a second backward
    through the same graph is refused by autograd, not computed from the overwritten values."""
    h = torch.randn(6, 4).requires_grad_()
    table = torch.randn(9, 4).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce = softmax_cross_entropy(h, table, torch.arange(6), keep=True).sum()
    ce.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        ce.backward()


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


def test_the_benchmarks_forms_swap_the_loss_and_restore_it() -> None:
    """``bench/bench_softmax.py`` times the forms by swapping them in: inside ``form(name)`` the
    models compute that form, the same loss (bias included), and the default comes back after."""
    import miir.models.fields  # the modules whose loss the bench swaps
    import miir.models.miir
    import miir.models.sasrec
    from helpers import load_bench
    from miir.models import softmax

    bench = load_bench("bench_softmax")
    g = torch.Generator().manual_seed(4)
    h, table = torch.randn(7, 5, generator=g), torch.randn(11, 5, generator=g)
    target, bias = torch.randint(11, (7,), generator=g), torch.rand(11, generator=g)
    want = softmax_cross_entropy(h, table, target, bias=bias)
    default = softmax.KEEP_16BIT
    for name, keep in (("unfused", False), ("recompute", False), ("keep", True)):
        with bench.form(name):
            assert softmax.KEEP_16BIT is keep
            loss = miir.models.miir.softmax_cross_entropy(h, table, target, bias=bias)
            torch.testing.assert_close(loss, want)
            unfused = miir.models.sasrec.softmax_cross_entropy is bench.unfused_cross_entropy
            assert unfused is (name == "unfused")
        assert softmax.KEEP_16BIT is default
        assert miir.models.sasrec.softmax_cross_entropy is softmax_cross_entropy
    with pytest.raises(ValueError, match="unknown form 'fused'"), bench.form("fused"):
        pass
