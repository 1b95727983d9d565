"""State that outlives a batch: a FIFO queue of keys (MoCo, SwAV) and a per-image memory bank
(PIRL, instance discrimination). Both are buffers, so checkpoints hold them and resume is exact."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from replearn import dist


class Queue(nn.Module):
    """A FIFO queue of ``size`` vectors of ``dim``; ``push`` adds the keys of every process (rank
    order), so all processes hold the same queue, equal to one process with the whole batch."""

    def __init__(self, size: int, dim: int, normalize: bool = True):
        super().__init__()
        init = torch.randn(size, dim)
        self.register_buffer("items", F.normalize(init, dim=1) if normalize else init)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # how many real keys it holds

    def __len__(self) -> int:
        return self.items.shape[0]

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        keys = dist.gather(keys.detach()).to(self.items.dtype)
        k, size = keys.shape[0], len(self)
        if k >= size:
            self.items.copy_(keys[-size:])
            self.ptr.zero_()
        else:
            pos = (self.ptr + torch.arange(k, device=keys.device)) % size
            self.items[pos] = keys
            self.ptr.copy_((self.ptr + k) % size)
        self.filled.copy_(torch.clamp(self.filled + k, max=size))


class MemoryBank(nn.Module):
    """One vector per dataset image, updated as ``bank[i] <- normalize(m * bank[i] + (1 - m) * x)``
    with the indices and vectors of every process."""

    def __init__(self, n: int, dim: int):
        super().__init__()
        self.register_buffer("bank", F.normalize(torch.randn(n, dim), dim=1))

    @torch.no_grad()
    def update(self, index: torch.Tensor, x: torch.Tensor, momentum: float) -> None:
        index, x = dist.gather(index), dist.gather(x.detach()).to(self.bank.dtype)
        mixed = momentum * self.bank[index] + (1 - momentum) * F.normalize(x, dim=1)
        self.bank[index] = F.normalize(mixed, dim=1)
