"""Second image side of image-image pairs: a tower for the partner image (a fresh copy of the
backbone, then a linear projection), and the ``partner_encoder.pt`` format that rebuilds it."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from replearn.errors import ReplearnError
from replearn.fileio import atomic_torch_save

PARTNER_FORMAT = "replearn-partner/1"


def fresh_copy(module: nn.Module) -> nn.Module:
    """The same architecture with its own initial weights: a deep copy of ``module`` whose
    submodules with ``reset_parameters`` (convolutions, linear layers, norms with their running
    statistics) are re-initialised from the global RNG. PyTorch's default layer init, so a backbone
    built with a custom init (torchvision's ResNets) starts its twin from the default one."""
    twin = copy.deepcopy(module)
    for m in twin.modules():
        if callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
    return twin


class PartnerTower(nn.Module):
    """backbone (a fresh copy of the first image's) -> linear projection into the shared space, as
    CLIP's image tower; the second image of a pair goes through it."""

    def __init__(self, backbone: nn.Module, out_dim: int):
        super().__init__()
        self.backbone = fresh_copy(backbone)
        self.proj = nn.Linear(backbone.out_dim, out_dim, bias=False)

    def forward(self, x):
        return self.proj(self.backbone(x))  # (N, out_dim)


def save_partner_encoder(path: str | Path, backbone: nn.Module, proj: nn.Module, image_proj: nn.Module, spec: dict) -> None:
    """``partner_encoder.pt``: the partner's backbone and projection, and the first image's projection
    (``encoder.pt`` holds its backbone and the rebuild spec both backbones share); with a shared
    tower the partner's are the first image's. ``torch.load(..., weights_only=True)``."""
    payload = {
        "format": PARTNER_FORMAT,
        "spec": dict(spec),
        "backbone": backbone.state_dict(),
        "proj": proj.state_dict(),
        "image_proj": image_proj.state_dict(),
    }
    atomic_torch_save(payload, path)


def load_partner_encoder(path: str | Path, encoder_spec: dict, map_location="cpu") -> tuple[nn.Module, nn.Linear, nn.Linear, dict]:
    """(partner backbone, partner projection, image projection, spec) from ``partner_encoder.pt`` or a
    run folder holding one; ``encoder_spec`` is ``encoder.pt``'s spec, which rebuilds the backbone."""
    from replearn.nn.backbones import backbone_from_spec, read_weights_file

    payload = read_weights_file(path, "partner_encoder.pt", PARTNER_FORMAT, "partner encoder",
                                "replearn pretrain --method clip on image pairs", map_location)
    spec = payload["spec"]
    backbone = backbone_from_spec(encoder_spec)
    proj = nn.Linear(spec["image_dim"], spec["out_dim"], bias=False)
    image_proj = nn.Linear(spec["image_dim"], spec["out_dim"], bias=False)
    try:
        backbone.load_state_dict(payload["backbone"])
        proj.load_state_dict(payload["proj"])
        image_proj.load_state_dict(payload["image_proj"])
    except RuntimeError as e:
        raise ReplearnError(f"{path}: the partner encoder's weights do not fit its spec ({str(e).splitlines()[0]})") from e
    return backbone.eval(), proj.eval(), image_proj.eval(), spec
