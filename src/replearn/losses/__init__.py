"""Losses: pure functions of tensors (state such as queues belongs to the method)."""

from replearn.losses.contrastive import nt_xent

__all__ = ["nt_xent"]
