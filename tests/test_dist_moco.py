"""MoCo on 2 gloo processes x batch B equals 1 process x batch 2B: loss, gradients, queue, key encoder."""


import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gloo import in_processes, needs_gloo
from replearn.methods import METHODS, MethodOptions

B, D_IN, STEPS = 4, 10, 2
QUEUE = 20  # 16 keys a step (2 views x 2B): the second push wraps around the queue's end


def _method():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(D_IN, 12), nn.ReLU())  # BN-free: batch statistics would differ
    backbone.out_dim = 12
    return METHODS.get("moco")(backbone, MethodOptions(temperature=0.3, proj_hidden=16, proj_dim=6,
                                                      args={"queue_size": QUEUE, "momentum": 0.8}))


def _batches():
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(2 * B, D_IN, generator=g) for _ in range(2)] for _ in range(STEPS)]


class _Step(nn.Module):
    """DDP syncs gradients of what runs through its forward, so the step goes through one."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, views, index):
        return self.method.training_step(views, index)[0]


def _train(model, method, batches, sl):
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    losses, grads = [], []
    for views in batches:
        loss = model([v[sl] for v in views], torch.arange(2 * B)[sl])
        opt.zero_grad()
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in method.parameters() if p.requires_grad])
        opt.step()
        method.after_step()
    return losses, grads


def _worker(rank, world):
    method = _method()
    losses, grads = _train(DDP(_Step(method)), method, _batches(), slice(rank * B, (rank + 1) * B))
    for loss in losses:
        dist.all_reduce(loss, op=dist.ReduceOp.SUM)
    return {"losses": [x.item() / world for x in losses], "grads": grads, "state": method.state_dict()}

@needs_gloo
def test_two_processes_equal_one_process_with_double_batch():
    got = in_processes(_worker, 2)[0]
    method = _method()
    losses, grads = _train(_Step(method), method, _batches(), slice(None))
    for a, b in zip(got["losses"], losses, strict=True):
        assert abs(a - b.item()) < 1e-6
    for step_got, step_ref in zip(got["grads"], grads, strict=True):
        for g, r in zip(step_got, step_ref, strict=True):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=1e-5)
    state = method.state_dict()
    assert int(state["queue.filled"]) == QUEUE and int(state["queue.ptr"]) == (STEPS * 4 * B) % QUEUE
    for key in state:  # the queue (same rows in the same order) and the EMA key encoder
        torch.testing.assert_close(got["state"][key], state[key], atol=1e-6, rtol=1e-5, msg=key)
