"""Building blocks shared by models: a fast dropout, a post-LN transformer layer (which can
record its attention weights) and the Xavier initialisation."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _bit_table(bits: int, p: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(256, 8 // bits): for each random byte, the dropout multipliers of its 8 // bits
    elements, each drawn from ``bits`` bits (kept when its value >= p * 2**bits)."""
    per = 8 // bits
    codes = (
        torch.arange(256, device=device)[:, None] >> (torch.arange(per, device=device) * bits)
    ) & ((1 << bits) - 1)
    keep = codes >= round(p * (1 << bits))  # (256, per)
    return (keep.to(torch.float32) / (1.0 - p)).to(dtype)


def random_words(n: int, device: torch.device) -> Tensor:
    """``n`` random int64 words (every bit uniform). On the CPU they come from numpy's SFC64
    generator seeded by one draw from torch's default generator (so ``torch.manual_seed`` makes
    them reproducible): it fills a buffer about 2x as fast as ``torch.randint`` (whose CPU
    generator, mt19937, runs one word at a time: about 4 ns a word here), and a default MIIR
    step draws about 1.9 M words for its dropout (``bench/results/dropout.md``). Elsewhere
    ``torch.randint``."""
    if device.type != "cpu":
        return torch.randint(-(2**63), 2**63 - 1, (n,), dtype=torch.int64, device=device)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.from_numpy(np.random.SFC64(seed).random_raw(n).view(np.int64))


def dropout_multipliers(
    shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """A tensor of ``shape`` holding 0 with probability ``p`` and ``1 / (1 - p)`` otherwise.

    Where ``p`` is a multiple of 1/256 (0.5 in the paper), each element takes only the random
    bits it needs (1 bit for p = 0.5), and whole bytes are turned into multipliers by one table
    lookup; other values use 16 random bits per element (exact to 1/65536). On the CPU this is
    5-10x faster than ``bernoulli_``, which took half of a MIIR training step (see
    bench/results/train.md). The bits come from :func:`random_words`, seeded from torch's
    default generator, so ``torch.manual_seed`` makes them reproducible."""
    n = math.prod(shape)
    bits = next((b for b in (1, 2, 4, 8) if float(p * (1 << b)).is_integer()), None)
    if bits is not None:
        per = 8 // bits
        n_bytes = (n + per - 1) // per
        words = random_words((n_bytes + 7) // 8, device)
        codes = words.view(torch.uint8)[:n_bytes].to(torch.int32)  # (n_bytes,)
        table = _bit_table(bits, p, dtype, device)  # (256, per)
        return F.embedding(codes, table).view(-1)[:n].view(shape)
    words = random_words((n + 3) // 4, device)
    u16 = words.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    keep = u16 >= round(p * 65536) - 32768
    # the mask viewed as uint8: its conversion to float is 3-4x faster than bool's on the CPU;
    # the draw takes 0.65-0.80x the time of the bool-to-float32-then-divide form on quiet
    # cores, with the same values (bench/results/dropout.md)
    return keep.view(torch.uint8).to(dtype).mul_(1.0 / (1.0 - p))


def xavier_init(module: nn.Module) -> None:
    """Xavier-normal initialisation of every matrix (embeddings included), zero biases,
    LayerNorms at identity, learned missing vectors small (the MIIR paper, Section 4.3)."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            nn.init.xavier_normal_(p)
        elif name.endswith(".missing"):
            nn.init.normal_(p, std=0.02)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:  # type: ignore[override]
        multipliers = dropout_multipliers(x.shape, p, x.dtype, x.device)
        ctx.save_for_backward(multipliers)
        return x * multipliers

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (multipliers,) = ctx.saved_tensors
        return grad * multipliers, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout with the fast multipliers on the CPU (``F.dropout`` elsewhere)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return _Dropout.apply(x, p)


class Dropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


class Block(nn.Module):
    """One post-LN transformer layer (Eq. 5 of the MIIR paper): the same computation as
    ``nn.TransformerEncoderLayer(activation="gelu", norm_first=False, batch_first=True)``, with
    dropout on the attention weights, after the attention and feed-forward outputs and inside
    the feed-forward, but with a fused QKV projection, ``F.scaled_dot_product_attention`` at
    inference (fused kernels) and the fast dropout in training."""

    def __init__(self, e: int, heads: int, dropout_p: float) -> None:
        super().__init__()
        if e % heads:
            raise ValueError(f"embedding_size {e} is not divisible by n_heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(e, 3 * e)
        self.proj = nn.Linear(e, e)
        self.ff1 = nn.Linear(e, 4 * e)
        self.ff2 = nn.Linear(4 * e, e)
        self.ln1 = nn.LayerNorm(e)
        self.ln2 = nn.LayerNorm(e)
        self.p = dropout_p

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        record: list[Tensor] | None = None,
    ) -> Tensor:
        """``mask``: an additive float mask (0 or -inf) broadcastable to (B, h, T, T).

        ``record``: when given, the attention weights (B, h, T, T) of this call are appended to
        it. The fused SDPA kernel does not return its weights, so the weights are then computed
        explicitly (softmax of the scaled scores plus the mask) and the output is built from
        those very weights (after attention dropout, in training): what is recorded is what
        the pass used. Without ``record`` the fast path is unchanged."""
        if record is not None:
            scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, h, T, T)
            if mask is not None:
                scores = scores + mask
            probs = torch.softmax(scores, dim=-1)  # (B, h, T, T)
            record.append(probs)
            return dropout(probs, self.p, self.training) @ v  # (B, h, T, d)
        if not self.training or self.p == 0.0 or q.device.type != "cpu":
            p = self.p if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        # CPU training with dropout: SDPA falls back to its math path with bernoulli_ anyway;
        # the same computation with the fast dropout mask.
        scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, h, T, T)
        if mask is not None:
            scores = scores + mask
        probs = dropout(torch.softmax(scores, dim=-1), self.p, True)
        return probs @ v  # (B, h, T, d)

    def forward(self, x: Tensor, mask: Tensor | None, record: list[Tensor] | None = None) -> Tensor:
        """``record``: a list the attention weights (B, h, T, T) are appended to (see
        :meth:`attend`)."""
        B, T, E = x.shape
        q, k, v = (
            self.qkv(x).view(B, T, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
        )  # 3 x (B, h, T, d)
        a = self.attend(q, k, v, mask, record).transpose(1, 2).reshape(B, T, E)  # (B, T, e)
        x = self.ln1(x + dropout(self.proj(a), self.p, self.training))
        hidden = dropout(F.gelu(self.ff1(x)), self.p, self.training)  # (B, T, 4e)
        return self.ln2(x + dropout(self.ff2(hidden), self.p, self.training))

    norm_first = False  # post-LN (:class:`PreLNBlock`: pre-LN)

    def compact(
        self,
        x: Tensor,
        index: Tensor,
        shape: tuple[int, int],
        mask: Tensor | None,
        keep: Tensor | None = None,
    ) -> Tensor:
        """Inference on the real tokens only: what :meth:`forward` computes for them.

        ``x`` (M, e): the states of the M tokens at the flat slots ``index`` (M,) of a
        ``shape`` = (B, T) layout whose other slots are padding (never attended: ``mask`` holds
        them out as keys). The per-token maps (the QKV, output and feed-forward layers, the
        norms) run on the M rows alone; only attention sees the (B, T) layout, with zeros in the
        padding slots. ``keep`` (K,): the rows of ``x`` whose output is wanted (the last layer
        needs only the tokens its caller reads): attention then computes queries only at the
        columns that hold a kept token. Default all. Returns (K, e). No dropout: call it in
        eval mode. ``x`` may hold rows beyond the M (of any value, e.g. zeros that pad M to
        :func:`~miir.models.batch.padded_rows`, so that the per-token maps take a few shapes):
        they go through the per-token maps and never reach attention or a kept row."""
        B, T = shape
        E = x.shape[-1]
        M = len(index)
        rows = self.qkv(self.ln1(x) if self.norm_first else x)  # (M', 3e); bf16 under autocast
        qkv = rows.new_zeros(B * T, 3 * E)
        qkv[index] = rows[:M]
        q, k, v = qkv.view(B, T, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
        if keep is None:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, T, d)
            a = a.transpose(1, 2).reshape(B * T, E)[index]  # (M, e)
            if len(x) > M:
                a = F.pad(a, (0, 0, 0, len(x) - M))  # (M', e)
        else:
            # queries only at the columns that hold a kept token in some row
            slots = index[keep]  # (K,) flat slots b * T + t
            cols, col = torch.unique(slots % T, return_inverse=True)  # (C,), (K,)
            if mask is not None and mask.shape[-2] != 1:
                mask = mask[..., cols, :]  # (B, 1, C, T)
            a = F.scaled_dot_product_attention(q[:, :, cols], k, v, attn_mask=mask)  # (B, h, C, d)
            a = a.transpose(1, 2)[slots // T, col].reshape(len(slots), E)  # (K, e)
            x = x[keep]
        if self.norm_first:
            x = x + self.proj(a)
            return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))
        x = self.ln1(x + self.proj(a))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class PreLNBlock(Block):
    """A pre-LN transformer layer (SASRec Section III.C): ``x + Dropout(Attn(LN(x)))``, then
    ``x + Dropout(FFN(LN(x)))``. The same parameters and fast attention/dropout as
    :class:`~miir.models.layers.Block` (it computes what ``nn.TransformerEncoderLayer(...,
    norm_first=True)`` does)."""

    norm_first = True

    def forward(self, x: Tensor, mask: Tensor | None, record: list[Tensor] | None = None) -> Tensor:
        B, T, E = x.shape
        q, k, v = (
            self.qkv(self.ln1(x)).view(B, T, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
        )  # 3 x (B, h, T, d)
        a = self.attend(q, k, v, mask, record).transpose(1, 2).reshape(B, T, E)  # (B, T, e)
        x = x + dropout(self.proj(a), self.p, self.training)
        hidden = dropout(F.gelu(self.ff1(self.ln2(x))), self.p, self.training)  # (B, T, 4e)
        return x + dropout(self.ff2(hidden), self.p, self.training)
