"""Losses: pure functions of tensors (state such as queues belongs to the method)."""

from replearn.losses.contrastive import nt_xent
from replearn.losses.metric import (
    arcface_loss,
    contrastive_margin_loss,
    margin_logits,
    mine_triplets,
    pairwise_distances,
    ranked_list_loss,
    triplet_loss,
)

__all__ = [
    "arcface_loss",
    "contrastive_margin_loss",
    "margin_logits",
    "mine_triplets",
    "nt_xent",
    "pairwise_distances",
    "ranked_list_loss",
    "triplet_loss",
]
from replearn.losses.clip import clip_loss as clip_loss
