"""Full-softmax cross-entropy over a table, fused and computed in chunks of rows.

Every ID loss of the models here is a softmax over the whole catalogue: ``(M, e)`` states
times the ``(N, e)`` item table gives ``(M, N)`` logits, then ``F.cross_entropy``, which keeps
the logits, their float copy and their log-softmax for the backward pass, and allocates a
zero-filled ``(M, N)`` gradient: several ``(M, N)`` float tensors per loss and step, taken
from and returned to malloc at every step.

:func:`softmax_cross_entropy` computes the same loss and gradients without keeping the logits:
the forward pass runs chunks of rows, keeping only each row's log-sum-exp; the backward pass
recomputes a chunk's logits, turns them into ``softmax - onehot`` in place, and multiplies back.
Each chunk's logits stay small enough for the cache, and peak memory drops by the size of the
logits and their gradients: 300 bf16 steps of the default MIIR peak at 835 MiB instead of 1,233,
for 0.99x the step time in bf16 and 0.93x in float32 (``bench/bench_softmax.py``,
``bench/results/softmax.md``).

A ``bias`` per table row is added to every row's logits (the log-Q correction of a sampled
softmax, ``miir.models.miir.IdSoftmax``); it gets no gradient.

Precision follows autocast: under an autocast context the two products run in its dtype (as
autocast runs ``h @ table.T``), the softmax and the gradient accumulation of the table in
float32.

With ``keep=True`` (or :data:`KEEP_16BIT`), under a 16-bit compute dtype, the forward pass
keeps each row's softmax, rounded to that dtype, for the backward pass instead of having it
recompute the logits: one ``(M, N)`` product and four elementwise passes fewer per loss, for
``M x N`` 16-bit values held from the forward pass to the backward (about 27 MB for the default
MIIR's two item-ID losses on amazon-beauty). The target's probability is kept in float32, so
its gradient ``p - 1`` is rounded once, as when recomputed. Same loss; the whole gradient of a
default MIIR batch within 6e-4 of the recomputed one (relative norm); timed alone a default bf16
step takes 0.89x the time, SASRec's 0.82x (``bench/results/softmax_keep.md``), and three seeds
of the default land level with their records (``bench/results/softmax_keep/same_keys.md``), but
real training epochs took 1.08x the time with it (``bench/epoch_time.py``,
``bench/results/epoch_time.md``), so it is off by default. In float32 the softmax is always
recomputed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CHUNK = 128  # rows of logits at a time: 128 x 12,101 float32 = 6 MB (64-128 were fastest)
LOG2E = 1.0 / math.log(2.0)
KEEP_16BIT = False  # keep the softmax from the forward pass under a 16-bit compute dtype


def _exp_(x: Tensor) -> Tensor:
    """``x.exp_()`` as ``2 ** (x log2 e)``, in place: on the CPU torch's ``exp`` over a chunk
    of float32 logits takes about 3x the time of its ``exp2`` (AVX-512, 1.5 M values: 640 against
    220 us), and the multiplication costs one cheap pass; within 1e-6 (relative) of ``exp``.
    With the max-subtracted sum below it replaces ``torch.logsumexp`` (about 2.5x slower)."""
    return x.mul_(LOG2E).exp2_()


def _compute_dtype(h: Tensor, table: Tensor) -> torch.dtype:
    device = h.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(h.dtype, table.dtype)


class _SoftmaxCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, h: Tensor, table: Tensor, target: Tensor, chunk: int, bias: Tensor | None, keep: bool
    ) -> Tensor:  # type: ignore[override]
        dtype = _compute_dtype(h, table)
        keep = keep and dtype.itemsize == 2
        with torch.autocast(h.device.type, enabled=False):
            hc, tc = h.to(dtype), table.to(dtype)
            lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            picked = torch.empty_like(lse)
            probs = (
                torch.empty(h.shape[0], table.shape[0], dtype=dtype, device=h.device)
                if keep
                else None
            )
            for start in range(0, h.shape[0], chunk):
                rows = slice(start, start + chunk)
                logits = (hc[rows] @ tc.T).float()  # (c, N)
                if bias is not None:
                    logits += bias
                picked[rows] = logits.gather(1, target[rows, None]).squeeze(1)
                top = logits.amax(dim=1, keepdim=True)
                e = _exp_(logits.sub_(top))  # in place: the logits are not needed again
                total = e.sum(dim=1, keepdim=True)
                lse[rows] = (top + total.log()).squeeze(1)
                if probs is not None:
                    probs[rows] = e.div_(total)  # rounded to the compute dtype
        # the target's softmax in float32, so that its gradient (p - 1) is rounded once
        p_target = (picked - lse).exp() if probs is not None else None
        ctx.save_for_backward(hc, tc, target, lse, bias, probs, p_target)
        ctx.chunk = chunk
        ctx.dtypes = (h.dtype, table.dtype)
        return lse - picked

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        hc, tc, target, lse, bias, kept, p_target = ctx.saved_tensors
        need_h, need_table = ctx.needs_input_grad[:2]
        grad_h = torch.empty_like(hc) if need_h else None
        grad_table = (
            torch.zeros(tc.shape, dtype=torch.float32, device=tc.device) if need_table else None
        )
        grad = grad.float()
        with torch.autocast(hc.device.type, enabled=False):
            for start in range(0, hc.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                idx = torch.arange(min(ctx.chunk, hc.shape[0] - start), device=hc.device)
                if kept is None:
                    probs = (hc[rows] @ tc.T).float()  # (c, N): recomputed
                    if bias is not None:
                        probs += bias
                    _exp_(probs.sub_(lse[rows, None]))  # softmax
                    probs[idx, target[rows]] -= 1.0  # d ce / d logits
                else:  # the forward's softmax, turned into the gradient in place (freed after)
                    probs = kept[rows]
                    probs[idx, target[rows]] = (p_target[rows] - 1.0).to(probs.dtype)
                d = probs.mul_(grad[rows, None]).to(hc.dtype)
                if grad_h is not None:
                    grad_h[rows] = d @ tc
                if grad_table is not None:
                    grad_table += (d.T @ hc[rows]).float()
        h_dtype, table_dtype = ctx.dtypes
        return (
            grad_h.to(h_dtype) if grad_h is not None else None,
            grad_table.to(table_dtype) if grad_table is not None else None,
            None,
            None,
            None,
            None,
        )


def softmax_cross_entropy(
    h: Tensor,
    table: Tensor,
    target: Tensor,
    chunk: int = CHUNK,
    bias: Tensor | None = None,
    keep: bool | None = None,
) -> Tensor:
    """(M, e) states, (N, e) table, (M,) target rows of the table -> (M,) float32
    cross-entropy of ``softmax(h @ table.T)``: ``F.cross_entropy((h @ table.T).float(), target,
    reduction="none")`` without keeping the ``(M, N)`` logits (see the module's docstring).
    ``bias`` (N,): added to every row's logits (no gradient). ``keep``: keep the softmax for
    the backward pass under a 16-bit compute dtype (default :data:`KEEP_16BIT`, off)."""
    if h.ndim != 2 or table.ndim != 2 or h.shape[1] != table.shape[1]:
        raise ValueError(f"states {tuple(h.shape)} and table {tuple(table.shape)} do not match")
    if target.shape != h.shape[:1]:
        raise ValueError(f"{target.shape[0]} targets for {h.shape[0]} states")
    if bias is not None:
        if bias.shape != table.shape[:1]:
            raise ValueError(f"bias {tuple(bias.shape)} for a table of {table.shape[0]} rows")
        bias = bias.detach().float()
    keep = KEEP_16BIT if keep is None else keep
    return _SoftmaxCrossEntropy.apply(h, table, target, chunk, bias, keep)
