"""SwAV and DINO on 2 gloo processes x batch B equal 1 process x batch 2B: Sinkhorn codes, losses,
gradients, the shared queue, DINO's centre and teacher (BN-free tiny networks)."""


import pytest
import torch
import torch.distributed as dist

from gloo import in_processes
from replearn.losses.swav import sinkhorn
from replearn.methods import METHODS, MethodOptions

B, K, STEPS = 4, 6, 3


def _scores():
    return torch.randn(2 * B, K, generator=torch.Generator().manual_seed(0)).tanh()


def _method(name):
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    backbone.out_dim = 8
    if name == "swav":  # a queue of 2 batches (in use from the 3rd step), frozen prototypes at step 0
        args = dict(n_prototypes=K, n_small=2, queue_size=4 * B, queue_start_epoch=0, freeze_prototypes_steps=1)
    else:
        args = dict(out_dim=K, n_small=2, head_bn=False, momentum=0.8)
    method = METHODS.get(name)(backbone, MethodOptions(temperature=0.1, proj_hidden=16, proj_dim=8, args=args))
    if name == "swav":  # BN-free projector: batch statistics would differ between B and 2B
        torch.manual_seed(1)
        method.projector = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    return method


def _views(step):
    g = torch.Generator().manual_seed(10 + step)
    large = [torch.randn(2 * B, 1, 8, 8, generator=g) for _ in range(2)]
    return large + [torch.randn(2 * B, 1, 4, 4, generator=g) for _ in range(2)]


def _train(name, sl, world):
    """STEPS SGD steps on the slice ``sl`` of each batch; gradients averaged as DDP does."""
    method = _method(name)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    record = {"loss": [], "grads": []}
    for step in range(STEPS):
        method.set_progress(step, 10, 0, 1)
        loss, _ = method.training_step([v[sl] for v in _views(step)], torch.arange(2 * B)[sl])
        opt.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in method.parameters() if p.requires_grad]
        loss = loss.detach().clone()
        if world > 1:
            for t in [*grads, loss]:
                dist.all_reduce(t)
                t /= world
        for p, gr in zip([p for p in method.parameters() if p.requires_grad], grads, strict=True):
            p.grad = gr
        record["loss"].append(loss.item())
        record["grads"].append(grads)
        opt.step()
        method.after_step()
    record["state"] = {k: v.clone() for k, v in method.state_dict().items()}
    return record


def _worker(rank, world):
    sl = slice(rank * B, (rank + 1) * B)
    codes = sinkhorn(_scores()[sl], 0.05, 3)
    parts = [torch.empty_like(codes) for _ in range(world)]
    dist.all_gather(parts, codes)
    return {"codes": torch.cat(parts), "swav": _train("swav", sl, world), "dino": _train("dino", sl, world)}

@pytest.fixture(scope="module")
def two_processes():
    return in_processes(_worker, 2)[0]


pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="gloo backend missing")


def test_sinkhorn_codes(two_processes):
    torch.testing.assert_close(two_processes["codes"], sinkhorn(_scores(), 0.05, 3), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["swav", "dino"])
def test_losses_gradients_and_state(two_processes, name):
    got, want = two_processes[name], _train(name, slice(0, 2 * B), 1)
    for step in range(STEPS):
        assert abs(got["loss"][step] - want["loss"][step]) < 1e-5, step
        for g, w in zip(got["grads"][step], want["grads"][step], strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    # after the steps: prototypes, the queue (swav), the centre and the teacher (dino)
    assert got["state"].keys() == want["state"].keys()
    for key, w in want["state"].items():
        torch.testing.assert_close(got["state"][key], w, atol=1e-5, rtol=1e-4, msg=key)
    if name == "swav":
        assert int(want["state"]["queues.0.filled"]) == 4 * B  # the queue was full and in use at step 3
