"""The method contract and registry.

A method is an ``nn.Module`` holding its networks and state (EMA copies, queues) as submodules and
buffers, so checkpoints and DDP see them. It names its view recipe and number of views and turns
a list of augmented views into a loss. Everything else (data, devices, optimiser, logging) lives in
``replearn.train``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from replearn.registry import Registry

METHODS: Registry = Registry("method")


@dataclass
class MethodOptions:
    """Options every method may read (filled from the pretraining config)."""

    temperature: float = 0.2
    proj_hidden: int = 512
    proj_dim: int = 128


class Method(nn.Module):
    views: str = "simclr"  # default view recipe
    n_views: int = 2

    def __init__(self, backbone: nn.Module, opts: MethodOptions):
        super().__init__()
        self.backbone = backbone

    def training_step(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """views: ``n_views`` float tensors (N, C, H, W); index: dataset ids (N,) -> (loss, logs)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step (EMA update, queue push)."""
