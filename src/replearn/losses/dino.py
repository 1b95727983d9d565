"""DINO's self-distillation loss and centre update (arXiv:2104.14294), pure functions."""

from __future__ import annotations

import torch
import torch.distributed as tdist
import torch.nn.functional as F

from replearn import dist


def _float(x: torch.Tensor) -> torch.Tensor:
    """float32 at least (bf16/fp16 under autocast -> float32; float64 stays, for tests)."""
    return x if x.dtype == torch.float64 else x.float()


def dino_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """Cross-entropy between the centred, sharpened teacher and the student, over view pairs.

    ``student`` (V, N, K): student outputs of all V views of N images; ``teacher`` (G, N, K):
    teacher outputs of the first G views (the global crops, G <= V); ``center`` (K,). With
    P_t = softmax((teacher_g - center) / teacher_temp) (no gradient) and
    log P_s = log_softmax(student_v / student_temp),
        loss = mean over pairs (g < G, v != g) of  -1/N sum_n sum_k P_t[g, n, k] log P_s[v, n, k],
    (the teacher's view g and the student's view v are different crops). A per-process mean over N,
    which DDP averages. Float32 at least.
    """
    v, n = student.shape[0], student.shape[1]
    g = teacher.shape[0]
    with torch.no_grad():
        p_t = F.softmax((_float(teacher) - _float(center)) / teacher_temp, dim=-1)  # (G, N, K)
    log_p_s = F.log_softmax(_float(student) / student_temp, dim=-1)  # (V, N, K)
    ce = -torch.einsum("gnk,vnk->gv", p_t.to(log_p_s.dtype), log_p_s) / n  # (G, V)
    pair = torch.ones(g, v, dtype=torch.bool, device=ce.device)
    pair[torch.arange(g), torch.arange(g)] = False
    return ce[pair].mean()


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """DINO's centre: ``momentum * center + (1 - momentum) * mean of the teacher outputs``.

    ``teacher`` (..., K): this process's teacher outputs (all global views); the mean is over the
    rows of every process (sums and counts all_reduced), so W processes x N give the centre of
    1 process x W*N. Returns a new float32 (K,) tensor; the method keeps it as a buffer.
    """
    t = _float(teacher).reshape(-1, teacher.shape[-1])
    total = torch.cat([t.sum(0), torch.tensor([float(t.shape[0])], dtype=t.dtype, device=t.device)])
    if dist.is_dist():
        tdist.all_reduce(total)
    batch_center = total[:-1] / total[-1]
    return momentum * _float(center) + (1 - momentum) * batch_center
