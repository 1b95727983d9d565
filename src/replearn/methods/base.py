"""The method contract and registry.

A method is an ``nn.Module`` holding its networks and state (EMA copies, queues, prototypes) as
submodules and buffers, so checkpoints and DDP see them. It names its view recipe and number of
views and turns a list of augmented views into a loss. Everything else (data, devices, optimiser,
logging) lives in ``replearn.train``, which calls, in this order:

    bind_data(data)                       once, before training (group ids, dataset size)
    on_dataset_features(feats)            before the first epoch and after each epoch, when
                                          ``needs_dataset_features`` (k-means for DeepCluster, PCL)
    set_progress(step, total, epoch, E)   before each step (momentum and temperature schedules)
    make_views(images, recipe, ...)       the batch's views (multi-crop overrides it)
    training_step(views, index)           -> (loss, logs); the collapse alarm watches logs["features"]
                                          (backbone) and logs["embeddings"] (what the loss compares)
    after_step()                          after each optimiser step (EMA update, normalisation)
    export(folder)                        at each epoch end on rank 0, beside encoder.pt: files that
                                          evaluation needs besides the backbone (clip's text encoder)
    pictures(images, mean, std)           at each epoch end on rank 0 (generative methods): named
                                          image grids saved as PNG in the run folder's pictures/

A method whose parts have their own optimiser (FactorVAE's TC critic, InfoGAN's discriminator)
lists them in ``extra_optimizers()``; ``training_step`` then returns the sum of every part's loss,
each behind stop-gradients so that one backward pass gives every parameter the gradient of its
own part's loss alone, and each optimiser steps its own parameters.

Method-specific hyper-parameters live in the method's ``Args`` dataclass; users set them with
``--method-args key=value,...`` (or a ``method_args:`` mapping in the YAML config).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from replearn.config import _closest, coerce
from replearn.errors import ReplearnError
from replearn.registry import Registry

METHODS: Registry = Registry("method")


@dataclass
class MethodOptions:
    """Options every method may read (filled from the pretraining config)."""

    temperature: float = 0.2
    proj_hidden: int = 512
    proj_dim: int = 128
    args: dict[str, Any] = field(default_factory=dict)  # checked against the method's Args
    channels: int = 3  # of the training images (a decoder's output)
    image_size: int = 32
    width: int = 32  # the backbone's width, which a decoder mirrors


def parse_args(cls: type, given: dict[str, Any], method: str) -> Any:
    """``given`` (strings from the command line or YAML values) -> an instance of the ``Args``
    dataclass ``cls``; an unknown key or a wrong type is a ReplearnError naming the valid keys."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    out = {}
    for key, value in (given or {}).items():
        name = key.replace("-", "_")
        if name not in names:
            hint = _closest(name, names) if names else f"method {method} takes no method arguments"
            raise ReplearnError(f"method {method} has no argument '{key}'", hint)
        out[name] = coerce(name, value, hints[name])
    return cls(**out)


class Method(nn.Module):
    views: str = "simclr"  # default view recipe
    n_views: int = 2
    paper: str = ""  # the paper, as "Authors, Title, venue year (arXiv id)"
    needs_dataset_features: bool = False
    default_backbone: str = "convnet"  # the backbone when the config names none

    @dataclass
    class Args:
        """Method-specific hyper-parameters (none here)."""

    def __init__(self, backbone: nn.Module, opts: MethodOptions):
        super().__init__()
        self.backbone = backbone
        name = getattr(type(self), "registered_name", type(self).__name__.lower())
        self.args = parse_args(type(self).Args, opts.args, name)
        self.step, self.total_steps, self.epoch, self.max_epochs = 0, 1, 0, 1

    # -- called by the trainer -------------------------------------------------------------
    def bind_data(self, data) -> None:
        """Sees the training ImageSet once before training (its size, group ids)."""

    def set_progress(self, step: int, total_steps: int, epoch: int, max_epochs: int) -> None:
        self.step, self.total_steps, self.epoch, self.max_epochs = step, max(1, total_steps), epoch, max(1, max_epochs)

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / self.total_steps)

    def make_views(self, images: torch.Tensor, recipe, size: int, mean, std, generator) -> list[torch.Tensor]:
        """uint8 (N, C, H, W) -> the list of augmented float views ``training_step`` takes."""
        return [recipe(images, size, mean, std, generator) for _ in range(self.n_views)]

    def training_step(self, views: list[torch.Tensor], index: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """views: float tensors (N, C, H, W); index: dataset ids (N,) -> (loss, logs)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step (EMA update, queue push, prototype normalisation)."""

    def dataset_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of evaluation views that ``on_dataset_features`` clusters (eval mode)."""
        return self.backbone(x)

    def on_dataset_features(self, features: torch.Tensor) -> None:
        """features: float32 (N, D) of every training image, in dataset order."""

    def fresh_parameters(self) -> list[nn.Parameter]:
        """Parameters that ``on_dataset_features`` has just redrawn (DeepCluster's head): the trainer
        drops their optimiser state, so old moments do not push the new values."""
        return []

    def export(self, folder: Path) -> None:
        """Writes files beside ``encoder.pt`` in the run folder that evaluation needs besides the
        backbone (clip: ``text_encoder.pt``, or ``partner_encoder.pt`` on image pairs); nothing by default."""

    def extra_optimizers(self) -> list[dict]:
        """Parameter sets stepped by their own Adam, as ``{"params": [...], "lr": ..., "betas": (...)}``
        (lr unscaled by batch size, constant); every other parameter steps with the run's optimiser."""
        return []

    def encoder_spec(self) -> dict:
        """What ``encoder.pt``'s spec needs besides the backbone's (a generative method's latent head)."""
        return {}

    def pictures(self, images: torch.Tensor, mean, std) -> dict[str, Any]:
        """uint8 images (a fixed sample of the training set) -> {name: an image grid (C, H, W) in
        [0, 1], saved as name.png, or a dict, saved as name.json}; nothing by default."""
        return {}

    def sample_weights(self) -> torch.Tensor | None:
        """Per-image sampling weights for the coming epoch (None: a plain permutation)."""
        return None
