"""Self-supervised methods, one file each, registered by their CLI name."""

from replearn.methods import simclr  # noqa: F401  (registers)
from replearn.methods.base import METHODS, Method, MethodOptions

__all__ = ["METHODS", "Method", "MethodOptions"]
