"""DeepCluster: k-means pseudo-labels of the whole dataset, re-computed each epoch, train a
classifier on the backbone (arXiv:1807.05520)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn.cluster import kmeans, pca_whiten


@METHODS.register("deepcluster")
class DeepCluster(Method):
    """DeepCluster: each epoch k-means the features into pseudo-classes, then classify augmented views into them."""

    views = "simclr"
    n_views = 2  # the paper classifies one crop; two per image give the other methods' view budget
    paper = "Caron et al., Deep Clustering for Unsupervised Learning of Visual Features, ECCV 2018 (arXiv:1807.05520)"
    needs_dataset_features = True

    @dataclass
    class Args:
        n_clusters: int = 200  # pseudo-classes (paper: 10,000 of 1.28M images); 20x the 10 classes
        pca_dim: int = 128  # PCA-whitening to this many dims before the L2 norm (paper: 256 of 4096); 0: none
        kmeans_iters: int = 20  # Lloyd iterations (the paper's faiss setting)

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        self.head = nn.Linear(backbone.out_dim, self.args.n_clusters)  # the classifier, re-drawn each epoch
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))  # pseudo-label of each image
        self.register_buffer("clustered_for", torch.tensor(-1))  # the epoch the labels were made for
        self._reset_head(0)

    def bind_data(self, data) -> None:
        self.labels = torch.zeros(len(data), dtype=torch.long, device=self.labels.device)

    @torch.no_grad()
    def _reset_head(self, epoch: int) -> None:
        # the paper's init, N(0, 0.01) weights and zero bias, seeded by the epoch so resume is exact;
        # written into the same Parameters, so the optimiser keeps updating them
        g = torch.Generator().manual_seed(10_007 + epoch)
        self.head.weight.copy_(0.01 * torch.randn(self.head.weight.shape, generator=g))
        self.head.bias.zero_()

    @torch.no_grad()
    def on_dataset_features(self, features: torch.Tensor) -> None:
        x = pca_whiten(features, self.args.pca_dim) if self.args.pca_dim else features.float().cpu()
        x = F.normalize(x, dim=1)
        _, assign = kmeans(x, self.args.n_clusters, seed=self.epoch, n_iter=self.args.kmeans_iters)
        self.labels = assign.to(self.labels.device)
        self.clustered_for.fill_(self.epoch)
        self._reset_head(self.epoch)  # old classes mean nothing for the new clusters

    def sample_weights(self) -> torch.Tensor | None:
        """Uniform over pseudo-classes (the paper's fix for a few huge clusters): 1 / |cluster of i|."""
        if int(self.clustered_for) < 0:
            return None
        sizes = torch.bincount(self.labels, minlength=self.args.n_clusters)
        return 1.0 / sizes[self.labels].double()

    def fresh_parameters(self):
        return list(self.head.parameters())  # redrawn each epoch: the trainer drops their AdamW moments

    def training_step(self, views, index):
        x = torch.cat(views)  # (V*N, C, H, W)
        h = self.backbone(x)  # (V*N, D)
        logits = self.head(h).float()  # (V*N, n_clusters)
        if int(self.clustered_for) >= 0:
            target = self.labels[index]
        else:  # a bare training_step before any clustering (not the trainer's order): stand-in labels
            target = index % self.args.n_clusters
        loss = F.cross_entropy(logits, target.repeat(len(views)))
        return loss, {"features": h[: len(index)].detach()}
