"""2 processes x batch B on gloo give the same loss and gradients as 1 process x batch 2B."""


import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from gloo import in_processes, needs_gloo
from replearn.losses import nt_xent

B, D_IN, D_OUT = 6, 10, 4


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, 16), torch.nn.ReLU(), torch.nn.Linear(16, D_OUT))


def _data():
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(2 * B, D_IN, generator=g), torch.randn(2 * B, D_IN, generator=g)
    return v1, v2


def _step(model, v1, v2, idx):
    z = model(torch.cat([v1, v2]))
    loss = nt_xent(z, idx.repeat(2), temperature=0.3)
    loss.backward()
    return loss


def _worker(rank, world):
    model = DDP(_model())
    v1, v2 = _data()
    sl = slice(rank * B, (rank + 1) * B)
    loss = _step(model, v1[sl], v2[sl], torch.arange(2 * B)[sl])
    dist.all_reduce(loss.detach(), op=dist.ReduceOp.SUM)
    return {"loss": loss.item() / world, "grads": [p.grad for p in model.parameters()]}

@needs_gloo
def test_two_processes_equal_one_process_with_double_batch():
    got = in_processes(_worker, 2)[0]
    model = _model()
    v1, v2 = _data()
    loss = _step(model, v1, v2, torch.arange(2 * B))
    assert abs(got["loss"] - loss.item()) < 1e-6
    for g, p in zip(got["grads"], model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-5)
