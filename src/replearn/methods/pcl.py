"""PCL: MoCo's instance contrast plus ProtoNCE against k-means prototypes at several granularities
(arXiv:2005.04966)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from replearn.losses.proto import proto_nce
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import projection_head
from replearn.nn.cluster import concentration, kmeans
from replearn.nn.memory import Queue
from replearn.nn.momentum import cosine_momentum, ema_update_, frozen_copy


@METHODS.register("pcl")
class PCL(Method):
    """PCL: MoCo (EMA key encoder, queue) plus ProtoNCE pulling each query to its k-means prototypes, M clusterings."""

    views = "simclr"
    n_views = 2
    paper = "Li et al., Prototypical Contrastive Learning of Unsupervised Representations, ICLR 2021 (arXiv:2005.04966)"
    needs_dataset_features = True

    @dataclass
    class Args:
        n_clusters: list[int] = field(default_factory=lambda: [50, 100, 200])  # paper: 25k, 50k, 100k of 1.28M
        warmup_epochs: int = 1  # instance-only epochs before the prototype term (paper: 20 of 200)
        queue_size: int = 4096  # negative keys (paper: 16384 of 1.28M images; 60k images need fewer)
        momentum: float = 0.99  # key-encoder EMA, cosine to 1 (paper: 0.999 over 200 epochs; 10 need faster)
        alpha: float = 10.0  # concentration smoothing: phi = sum ||v - c|| / (Z log(Z + alpha))
        kmeans_iters: int = 20  # Lloyd iterations (the paper's faiss setting)

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        self.projector = projection_head(backbone.out_dim, opts.proj_hidden, opts.proj_dim)  # PCL v2's MLP
        self.key_backbone, self.key_projector = frozen_copy(backbone), frozen_copy(self.projector)
        self.queue = Queue(self.args.queue_size, opts.proj_dim)
        self.temperature = opts.temperature
        for m, k in enumerate(self.args.n_clusters):
            self.register_buffer(f"prototypes{m}", torch.zeros(k, opts.proj_dim))  # unit-norm centroids
            self.register_buffer(f"concentration{m}", torch.ones(k))  # phi per cluster
            self.register_buffer(f"assign{m}", torch.zeros(0, dtype=torch.long))  # cluster of each image
        self.register_buffer("clustered_for", torch.tensor(-1))  # the epoch the clusters were made for

    def bind_data(self, data) -> None:
        for m in range(len(self.args.n_clusters)):
            setattr(self, f"assign{m}", torch.zeros(len(data), dtype=torch.long, device=self.prototypes0.device))

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projector(self.key_backbone(x)), dim=1)

    @torch.no_grad()
    def dataset_features(self, x):
        return self._keys(x)  # the paper clusters the momentum encoder's embeddings

    @torch.no_grad()
    def on_dataset_features(self, features: torch.Tensor) -> None:
        if self.epoch < self.args.warmup_epochs:
            return  # no prototype term yet: skip the k-means
        for m, k in enumerate(self.args.n_clusters):
            c, assign = kmeans(features, k, seed=1000 * self.epoch + m, n_iter=self.args.kmeans_iters)
            phi = concentration(features, c, assign, self.temperature, self.args.alpha)
            getattr(self, f"prototypes{m}").copy_(F.normalize(c, dim=1))
            getattr(self, f"concentration{m}").copy_(phi)
            setattr(self, f"assign{m}", assign.to(self.prototypes0.device))
        self.clustered_for.fill_(self.epoch)

    def training_step(self, views, index):
        h = self.backbone(torch.cat(views[:2]))  # (2N, D): both views are queries
        q = self.projector(h)  # (2N, P)
        with torch.no_grad():
            k = self._keys(torch.cat(views[1::-1]))  # (2N, P): the other view's key, symmetrised
        use_protos = self.epoch >= self.args.warmup_epochs and int(self.clustered_for) >= 0
        m_range = range(len(self.args.n_clusters)) if use_protos else ()
        loss = proto_nce(
            q, k, self.queue.items, self.temperature,  # MoCo: random unit keys until pushed over
            [getattr(self, f"prototypes{m}") for m in m_range],
            [getattr(self, f"assign{m}")[index].repeat(2) for m in m_range],
            [getattr(self, f"concentration{m}") for m in m_range],
        )  # fmt: skip
        self._new_keys = k[: len(index)]
        return loss, {"features": h[: len(index)].detach()}

    def after_step(self) -> None:
        ema_update_(self.key_backbone, self.backbone, cosine_momentum(self.args.momentum, self.progress))
        ema_update_(self.key_projector, self.projector, cosine_momentum(self.args.momentum, self.progress))
        self.queue.push(self._new_keys)
