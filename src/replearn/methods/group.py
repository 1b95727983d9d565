"""Group: multi-positive InfoNCE where every view of every image sharing a group id is a positive (arXiv:2004.11362)."""

from __future__ import annotations

import warnings

import torch

from replearn.losses import nt_xent
from replearn.methods.base import METHODS, Method, MethodOptions
from replearn.nn import projection_head


@METHODS.register("group")
class Group(Method):
    """Group: SimCLR whose positives are all views of images with the same group id (object, clip), NT-Xent.

    Group ids come from the data (``ImageSet.groups``: the image's sub-folder, a groups CSV, or an
    .npz ``groups`` array): several photos of one object, or frames of one clip as in CVRL, attract
    each other, which instance discrimination would push apart. The loss is SupCon's multi-positive
    NT-Xent with group ids in place of class labels: an anchor's positives are its other view and
    both views of every other batch member of its group. An image without a group (-1) is its own
    group; data without any group ids falls back to instance groups, i.e. exactly SimCLR, with a
    warning. Members of a group meet only when they land in the same batch (batches are random).
    """

    views = "simclr"
    n_views = 2
    paper = (
        "Khosla et al., Supervised Contrastive Learning, NeurIPS 2020 (arXiv:2004.11362), with group ids "
        "as positives as in Qian et al., Spatiotemporal Contrastive Video Representation Learning, CVPR 2021 "
        "(arXiv:2008.03800)"
    )

    def __init__(self, backbone, opts: MethodOptions):
        super().__init__(backbone, opts)
        self.projector = projection_head(backbone.out_dim, opts.proj_hidden, opts.proj_dim)
        self.temperature = opts.temperature
        self.register_buffer("groups", torch.empty(0, dtype=torch.long))  # per dataset image; -1: none

    def bind_data(self, data) -> None:
        groups = getattr(data, "groups", None)
        if groups is None or not bool((groups >= 0).any()):
            warnings.warn(
                f"{data.name} has no group ids: the group method falls back to instance groups (SimCLR)",
                stacklevel=2,
            )
            groups = torch.full((len(data),), -1, dtype=torch.long)
        elif data.has_labels and _same_partition(groups, data.labels):
            warnings.warn(
                "the group ids split the images exactly as the class labels do (class sub-folders?): "
                "the group method is then supervised contrastive learning, not self-supervised",
                stacklevel=2,
            )
        self.groups = groups.long().clone()

    def group_ids(self, index: torch.Tensor) -> torch.Tensor:
        """Dataset indices (N,) -> positive ids: the group id (>= 0), or -1 - index for an image
        without a group (a negative id no other image shares)."""
        index = index.to(self.groups.device)
        if len(self.groups) == 0:
            return -1 - index
        g = self.groups[index]
        return torch.where(g >= 0, g, -1 - index)

    def training_step(self, views, index):
        h = self.backbone(torch.cat(views))  # (V*N, D)
        z = self.projector(h)
        loss = nt_xent(z, self.group_ids(index).repeat(len(views)), self.temperature)
        return loss, {"features": h[: len(index)].detach()}


def _same_partition(groups: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether, over images with both, group ids and labels induce the same partition."""
    both = (groups >= 0) & (labels >= 0)
    if int(both.sum()) < 2:
        return False
    g, y = groups[both], labels[both]
    pairs = torch.unique(torch.stack([g, y]), dim=1).shape[1]
    return pairs == len(torch.unique(g)) == len(torch.unique(y))
