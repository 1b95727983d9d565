"""Run a function in several gloo processes (DDP's CPU stand-in) and collect what each returns.

``in_processes(fn, 2)`` calls ``fn(rank, world)`` in 2 fresh processes joined in one process group;
``fn`` must be a module-level function (it is pickled into the children) and return something
``torch.save`` can write. The tests compare 2 processes x batch B against 1 process x batch 2B.
"""

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

needs_gloo = __import__("pytest").mark.skipif(not dist.is_gloo_available(), reason="gloo backend missing")


def _entry(rank, world, tmp, fn):
    # A file store in the call's own folder: no TCP port to race for with other processes (a free
    # port picked and released can be taken again before the group binds it).
    dist.init_process_group("gloo", init_method=f"file://{Path(tmp) / 'store'}", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, world), Path(tmp) / f"{rank}.pt")
        dist.barrier()  # no rank tears gloo down while another still talks to it (it aborts otherwise)
    finally:
        dist.destroy_process_group()


def in_processes(fn, world: int = 2) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_entry, args=(world, tmp, fn), nprocs=world, join=True)
        return [torch.load(Path(tmp) / f"{r}.pt", weights_only=False) for r in range(world)]
