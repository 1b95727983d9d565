"""Contrastive losses as pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from replearn import dist


def nt_xent(z: torch.Tensor, indexes: torch.Tensor, temperature: float = 0.5, gather: bool = True,
            chunk: int | None = None) -> torch.Tensor:
    """NT-Xent / InfoNCE over all views in a batch (SimCLR, arXiv:2002.05709; SupCon's positives).

    ``z`` (N, D) holds every view of the local batch; items with equal ``indexes`` (N,) are
    positives of each other (instance ids give SimCLR, class labels give SupCon), every other item
    is a negative. For anchor i with positives P(i):
        loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / T) / sum_{a != i} exp(s_ia / T) ),
    s = cosine similarity; the result is the mean over anchors that have a positive. Under DDP the
    candidates (and their indexes) are gathered from every process with gradients, while anchors
    stay local, so W processes x N equal 1 process x W*N. Computed in float32, ``chunk`` anchors
    at a time (default: as many as keep the block's logits within ``CHUNK_ELEMENTS``).
    """
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0]
    if gather:
        cand, cand_idx, offset = dist.gather(z), dist.gather(indexes), dist.rank() * n
    else:
        cand, cand_idx, offset = z, indexes, 0
    rows = chunk or max(1, min(n, CHUNK_ELEMENTS // max(1, cand.shape[0])))
    return _NTXent.apply(z, cand, indexes, cand_idx, offset, 1.0 / temperature, rows)


CHUNK_ELEMENTS = 1 << 22  # anchors x candidates held at once (16 MB of float32 logits)


class _NTXent(torch.autograd.Function):
    """NT-Xent of ``nt_xent``'s docstring on normalised ``z`` (anchors) and ``cand``, over blocks of
    ``rows`` anchors: a block's logits (rows x candidates) are made, reduced to each anchor's
    log-sum-exp, mean positive logit and positive count, and dropped; the backward makes them again
    block by block. Memory is one block instead of the half-dozen (anchors x candidates) tensors
    of the plain autograd graph, whatever the number of processes gathered.

    With l_ia = s_ia / T (l_ii = -inf), A the anchors that have a positive and m = 1 / |A|:
    loss = m sum_{i in A} (logsumexp_a l_ia - mean_{p in P(i)} l_ip), and
    d loss / d l_ia = m [i in A] (softmax_a(l_i)_a - [a in P(i)] / |P(i)|)."""

    @staticmethod
    def _block(z, cand, idx, cand_idx, offset, inv_t, start, stop):
        logits = (z[start:stop] @ cand.T).mul_(inv_t)  # (rows, M)
        r = torch.arange(stop - start, device=z.device)
        self_col = r + start + offset
        logits[r, self_col] = float("-inf")
        pos = idx[start:stop, None] == cand_idx[None, :]
        pos[r, self_col] = False
        return logits, pos

    @staticmethod
    def forward(ctx, z, cand, idx, cand_idx, offset: int, inv_t: float, rows: int):
        with torch.autocast(z.device.type, enabled=False):  # float32 logits, as the backward makes them
            return _NTXent._forward(ctx, z, cand, idx, cand_idx, offset, inv_t, rows)

    @staticmethod
    def _forward(ctx, z, cand, idx, cand_idx, offset: int, inv_t: float, rows: int):
        n = z.shape[0]
        lse, pos_mean, n_pos = (torch.empty(n, device=z.device, dtype=z.dtype) for _ in range(3))
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            logits, pos = _NTXent._block(z, cand, idx, cand_idx, offset, inv_t, start, stop)
            lse[start:stop] = torch.logsumexp(logits, 1)
            n_pos[start:stop] = pos.sum(1)
            pos_mean[start:stop] = torch.where(pos, logits, 0.0).sum(1) / n_pos[start:stop].clamp(min=1)
        has = n_pos > 0
        ctx.save_for_backward(z, cand, idx, cand_idx, lse, n_pos, has)
        ctx.offset, ctx.inv_t, ctx.rows = offset, inv_t, rows
        return (lse - pos_mean)[has].mean()

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast(grad.device.type, enabled=False):
            return _NTXent._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        z, cand, idx, cand_idx, lse, n_pos, has = ctx.saved_tensors
        n = z.shape[0]
        scale = grad * ctx.inv_t / has.sum()  # d loss / d s = (d loss / d logits) / T
        gz = torch.zeros_like(z) if ctx.needs_input_grad[0] else None
        gcand = torch.zeros_like(cand) if ctx.needs_input_grad[1] else None
        for start in range(0, n, ctx.rows):
            stop = min(n, start + ctx.rows)
            logits, pos = _NTXent._block(z, cand, idx, cand_idx, ctx.offset, ctx.inv_t, start, stop)
            g = logits.sub_(lse[start:stop, None]).exp_()  # softmax over the candidates
            g.sub_(pos / n_pos[start:stop, None].clamp(min=1))
            g.mul_(has[start:stop, None] * scale)
            if gz is not None:
                gz[start:stop] = g @ cand
            if gcand is not None:
                gcand.addmm_(g.T, z[start:stop])
        return gz, gcand, None, None, None, None, None
