"""Barlow Twins and VICReg standardise over the global batch: 2 gloo processes x B give the loss
and the gradients of 1 process x 2B (and a loss over the local batch alone would not)."""


import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from gloo import in_processes, needs_gloo
from replearn.losses.redundancy import barlow_twins_loss, vicreg_loss

B, D_IN, D_OUT = 6, 10, 5
LOSSES = {"barlow": lambda z1, z2: barlow_twins_loss(z1, z2, lambd=0.1), "vicreg": vicreg_loss}


def _model():
    torch.manual_seed(0)  # BN-free: the only batch statistics are the loss's own
    return torch.nn.Sequential(torch.nn.Linear(D_IN, 16), torch.nn.ReLU(), torch.nn.Linear(16, D_OUT))


def _data():
    g = torch.Generator().manual_seed(1)
    v1 = torch.randn(2 * B, D_IN, generator=g)
    return v1, v1 + 0.3 * torch.randn(2 * B, D_IN, generator=g)


def _step(model, loss_fn, v1, v2):
    model.zero_grad()
    z = model(torch.cat([v1, v2]))
    loss = loss_fn(z[: len(v1)], z[len(v1) :])
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


def _worker(rank, world):
    model = DDP(_model())
    v1, v2 = _data()
    sl = slice(rank * B, (rank + 1) * B)
    return {name: _step(model, fn, v1[sl], v2[sl]) for name, fn in LOSSES.items()}

@needs_gloo
def test_two_processes_equal_one_process_with_double_batch():
    ranks = in_processes(_worker, 2)
    v1, v2 = _data()
    for name, fn in LOSSES.items():
        loss, grads = _step(_model(), fn, v1, v2)
        local_loss, _ = _step(_model(), fn, v1[:B], v2[:B])
        assert abs(local_loss - loss) > 1e-3  # the check below can tell global from local statistics
        for got in ranks:  # every process holds the global batch's loss
            got_loss, got_grads = got[name]
            assert abs(got_loss - loss) < 1e-5 * max(1.0, abs(loss)), name
            for g, ref in zip(got_grads, grads, strict=True):
                torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-4)
