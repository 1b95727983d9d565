"""Networks: backbone registry, heads."""

from replearn.nn.backbones import BACKBONES, build_backbone, load_encoder, save_encoder
from replearn.nn.heads import mlp, projection_head

__all__ = ["BACKBONES", "build_backbone", "load_encoder", "mlp", "projection_head", "save_encoder"]
