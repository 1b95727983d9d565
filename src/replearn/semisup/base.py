"""The semi-supervised method contract and registry.

A method is an ``nn.Module`` holding the classifier being trained (``net``: backbone + linear
layer), the EMA copy of it that is evaluated and exported (``ema``, every method has one), and its
own state (running means, augmentation weights) as buffers, so checkpoints carry everything.
``replearn.train.semisup`` calls, in this order:

    bind_labels(labels, n_images)     once, before training (class marginal, per-image state)
    set_progress(step, total)         before each step (ramp-ups and schedules)
    set_graph_scores(scores)          every ``graph_every`` steps (0: never), before that step: label
                                      scores (N, K) of every image, spread from the labels along the
                                      k-NN graph of the EMA model's features (FixMatch's
                                      ``propagate_every``)
    training_step(batch)              -> (loss, logs); ``batch`` is a ``SemiBatch`` of uint8 images:
                                      the method draws its own weak/strong views from them
    after_step()                      after each optimiser step (the EMA update)

``logs`` may hold scalars (logged per epoch) and ``pseudo``: (labels (N,), mask (N,)) of the
unlabelled batch, which the trainer scores against the true labels where the data has them
(a monitor only: no method ever sees those labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from replearn.methods.base import parse_args
from replearn.nn.momentum import ema_update_, frozen_copy
from replearn.registry import Registry
from replearn.views import weak_view

SEMI: Registry = Registry("semi-supervised method")


@dataclass
class SemiOptions:
    n_classes: int
    ema: float = 0.999  # momentum of the evaluated EMA model
    args: dict[str, Any] = field(default_factory=dict)  # checked against the method's Args


@dataclass
class SemiBatch:
    """One step's data: labelled images and labels, unlabelled images, and how to make views."""

    x_l: torch.Tensor  # uint8 (B, C, H, W)
    y_l: torch.Tensor  # int64 (B,)
    x_u: torch.Tensor  # uint8 (mu*B, C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    g: torch.Generator  # on the images' device, seeded by (seed, step, rank)
    u_index: torch.Tensor | None = None  # (mu*B,) positions of the unlabelled images in the data

    def weak(self, x: torch.Tensor) -> torch.Tensor:
        return weak_view(x, self.mean, self.std, self.g)

    def strong(self, x: torch.Tensor, n_ops: int = 2, cutout: float = 0.5) -> torch.Tensor:
        """FixMatch's strong view: the weak flip and shift, then RandAugment (``n_ops`` ops per
        image, random magnitudes) and Cutout (a square of side up to ``cutout`` of the image), each
        image with its own draw."""
        from replearn.views import ops
        from replearn.views.strong import rand_augment

        base = weak_view(x, self.mean, self.std, self.g, normalize=False)
        return ops.normalize(rand_augment(base, self.g, n_ops=n_ops, cutout_frac=cutout), self.mean, self.std)


class Classifier(nn.Module):
    """backbone -> linear layer: the model a semi-supervised run trains and exports."""

    def __init__(self, backbone: nn.Module, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.out_dim), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class DistributionAlignment(nn.Module):
    """ReMixMatch's distribution alignment as a module: the running mean of the model's class
    probabilities on unlabelled batches (the mean of the last ``window`` batch means, a buffer so
    checkpoints carry it) and the labelled class marginal; ``forward`` aligns a batch of
    probabilities and then records the batch's own (unaligned) mean."""

    def __init__(self, n_classes: int, window: int = 128):
        super().__init__()
        self.register_buffer("history", torch.full((window, n_classes), 1.0 / n_classes))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("label_marginal", torch.full((n_classes,), 1.0 / n_classes))

    def set_label_marginal(self, labels: torch.Tensor) -> None:
        counts = torch.bincount(labels.cpu(), minlength=len(self.label_marginal)).float()
        self.label_marginal.copy_(counts / counts.sum())

    @property
    def model_marginal(self) -> torch.Tensor:
        n = int(min(int(self.seen), len(self.history)))
        return self.history[:n].mean(0) if n > 0 else self.label_marginal

    @torch.no_grad()
    def forward(self, p: torch.Tensor) -> torch.Tensor:
        from replearn.losses.semisup import align_distribution

        aligned = align_distribution(p, self.model_marginal, self.label_marginal)
        self.history[int(self.seen) % len(self.history)] = p.float().mean(0)
        self.seen += 1
        return aligned


class SemiMethod(nn.Module):
    paper: str = ""

    @dataclass
    class Args:
        """Method-specific hyper-parameters (none here)."""

    def __init__(self, backbone: nn.Module, opts: SemiOptions):
        super().__init__()
        name = getattr(type(self), "registered_name", type(self).__name__.lower())
        self.args = parse_args(type(self).Args, opts.args, name)
        self.n_classes, self.ema_momentum = opts.n_classes, opts.ema
        self.net = Classifier(backbone, opts.n_classes)
        self.ema = frozen_copy(self.net)
        self.step, self.total_steps = 0, 1

    def bind_labels(self, labels: torch.Tensor, n_images: int) -> None:
        """Sees the labels of the labelled set and the number of training images once before
        training (class marginals, per-image state)."""

    graph_every: int = 0  # steps between label-spreading refreshes; 0: the method takes none
    graph_k: int = 10  # neighbours of the graph

    def set_graph_scores(self, scores: torch.Tensor) -> None:
        """Receives (N, K) label-spreading scores of every training image (see the module doc)."""

    def set_progress(self, step: int, total_steps: int) -> None:
        self.step, self.total_steps = step, max(1, total_steps)

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.total_steps)

    def training_step(self, batch: SemiBatch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def ema_momentum_now(self) -> float:
        """The EMA momentum after step ``self.step``: min(ema, (1 + step) / (10 + step)), the warm-up
        of TensorFlow's ExponentialMovingAverage with num_updates, so that in a short run the
        evaluated model is not mostly its random initial head."""
        return min(self.ema_momentum, (1 + self.step) / (10 + self.step))

    def after_step(self) -> None:
        ema_update_(self.ema, self.net, self.ema_momentum_now())

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the EMA model in eval mode (what evaluation and ``predict`` use)."""
        was = self.ema.training
        self.ema.eval()
        try:
            return self.ema(x)
        finally:
            self.ema.train(was)

    def forward_all(self, *views: torch.Tensor, features: bool = False):
        """One forward pass of the concatenated views (shared batch-norm statistics, as the papers
        do), split back into the views' logits, in float32; with ``features=True`` also the views'
        backbone features: (logits list, features list)."""
        sizes = [len(v) for v in views]
        f = self.net.backbone(torch.cat(views).contiguous(memory_format=torch.channels_last))
        logits = self.net.head(f).float()
        if features:
            return list(logits.split(sizes)), list(f.float().split(sizes))
        return list(logits.split(sizes))


CLASSIFIER_FORMAT = "replearn-classifier-1"


def save_classifier(path, net: Classifier, spec: dict, classes: list[str]) -> None:
    """Write a classifier's weights plus what rebuilds it (plain types, loadable with weights_only)."""
    from replearn.fileio import atomic_torch_save

    payload = {"format": CLASSIFIER_FORMAT, "spec": dict(spec), "classes": list(classes), "state_dict": net.state_dict()}
    atomic_torch_save(payload, path)


def load_classifier(path, map_location="cpu") -> tuple[Classifier, dict, list[str]]:
    """Rebuild the classifier of a ``replearn semisup`` run (its folder or classifier.pt), in eval
    mode; returns (classifier, spec, class names)."""
    from replearn.nn.backbones import backbone_from_spec, read_weights_file

    payload = read_weights_file(path, "classifier.pt", CLASSIFIER_FORMAT, "classifier", "replearn semisup", map_location)
    spec, classes = payload["spec"], payload["classes"]
    backbone = backbone_from_spec(spec)
    net = Classifier(backbone, len(classes))
    net.load_state_dict(payload["state_dict"])
    net.eval()
    return net, spec, classes
