"""Backbones by registry name, and the ``encoder.pt`` format that rebuilds one."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import torch
from torch import nn

from replearn.errors import ReplearnError
from replearn.registry import Registry

BACKBONES: Registry = Registry("backbone")
ENCODER_FORMAT = "replearn-encoder/1"


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@BACKBONES.register("convnet")
def convnet(in_channels: int = 3, width: int = 32, **_) -> nn.Module:
    """A small CPU-friendly convnet: four 3x3 conv-BN-ReLU stages (width, 2x, 4x, 8x), max-pool
    between them, global average pooling -> 8*width features. One conv per stage keeps the cost
    at full resolution low (about 10 MMAC per 28x28 image at width 32)."""
    w = width
    net = nn.Sequential(
        *_conv_bn(in_channels, w),
        nn.MaxPool2d(2),
        *_conv_bn(w, 2 * w),
        nn.MaxPool2d(2),
        *_conv_bn(2 * w, 4 * w),
        nn.MaxPool2d(2),
        *_conv_bn(4 * w, 8 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    net.out_dim = 8 * w
    return net


@BACKBONES.register("flatconv")
def flatconv(in_channels: int = 3, width: int = 32, image_size: int = 32, **_) -> nn.Module:
    """Strided 4x4 convolutions (width, width, 2x, 2x, ...) halving the image down to 3-4 px, then
    flatten and FC 256 -> 256 features (Burgess et al.'s beta-VAE encoder, arXiv:1804.03599, with
    BN after all but the first convolution). No global pooling: the features keep where things are,
    which a generative model must reconstruct (position, size)."""
    w, side, cin = width, image_size, in_channels
    layers: list[nn.Module] = []
    i = 0
    while True:
        cout = w if i < 2 else 2 * w
        layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=i == 0))
        if i:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        cin, side, i = cout, side // 2, i + 1
        if side <= 4:
            break
    layers += [nn.Flatten(), nn.Linear(cin * side * side, 256), nn.LeakyReLU(0.2, inplace=True)]
    net = nn.Sequential(*layers)
    net.out_dim = 256
    return net


def _resnet(arch: str, in_channels: int, small_stem: bool) -> nn.Module:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None)
    if small_stem:
        # small images (<= 64 px): a 3x3 stride-1 stem and no max-pool keep spatial detail
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    out_dim = net.fc.in_features
    net.fc = nn.Identity()
    net.out_dim = out_dim
    return net


@BACKBONES.register("resnet18")
def resnet18(in_channels: int = 3, small_stem: bool = True, **_) -> nn.Module:
    return _resnet("resnet18", in_channels, small_stem)


@BACKBONES.register("resnet50")
def resnet50(in_channels: int = 3, small_stem: bool = True, **_) -> nn.Module:
    return _resnet("resnet50", in_channels, small_stem)


def _user_backbone(spec: str, in_channels: int, image_size: int) -> nn.Module:
    mod_name, _, fn_name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ReplearnError(
            f"cannot import backbone {spec!r}: {e}",
            "give package.module:function, importable from this Python (check PYTHONPATH)",
        ) from None
    params = inspect.signature(fn).parameters
    net = fn(in_channels=in_channels) if "in_channels" in params else fn()
    if not isinstance(net, nn.Module):
        raise ReplearnError(f"backbone {spec!r} returned {type(net).__name__}, not a torch.nn.Module")
    if not hasattr(net, "out_dim"):
        with torch.no_grad():
            was = net.training
            net.eval()
            out = net(torch.zeros(2, in_channels, image_size, image_size))
            net.train(was)
        if out.ndim != 2:
            raise ReplearnError(
                f"backbone {spec!r} returns shape {tuple(out.shape)}, expected (batch, features)",
                "end the network with pooling and flatten",
            )
        net.out_dim = out.shape[1]
    return net


def build_backbone(
    name: str, in_channels: int, image_size: int, width: int = 32, small_stem: bool = True
) -> nn.Module:
    """Registry name (``convnet``, ``resnet18``, ``resnet50``) or ``package.module:function``."""
    if ":" in name:
        return _user_backbone(name, in_channels, image_size)
    return BACKBONES.get(name)(in_channels=in_channels, width=width, small_stem=small_stem, image_size=image_size)


def save_encoder(path: str | Path, backbone: nn.Module, spec: dict) -> None:
    """Write backbone weights plus what rebuilds them (plain types, loadable with weights_only=True)."""
    from replearn.fileio import atomic_torch_save

    payload = {"format": ENCODER_FORMAT, "spec": dict(spec), "state_dict": backbone.state_dict()}
    atomic_torch_save(payload, path)


def read_weights_file(path: str | Path, name: str, fmt: str, what: str, made_by: str, map_location="cpu") -> dict:
    """The payload of a weights file ``name`` (or a run folder holding one) written with format
    ``fmt``; a missing or foreign file is a ReplearnError naming ``what`` and the command ``made_by``."""
    p = Path(path)
    if p.is_dir():
        p = p / name
    if not p.exists():
        raise ReplearnError(f"no {what} at {p}", f"pass a run folder made by '{made_by}' or its {name}")
    payload = torch.load(p, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ReplearnError(f"{p} is not a replearn {what} file")
    return payload


def backbone_from_spec(spec: dict) -> nn.Module:
    """The encoder an ``encoder.pt`` spec describes: the backbone, and where the spec has a ``head``
    (the generative methods), the backbone followed by that latent-mean head."""
    net = build_backbone(spec["backbone"], spec["channels"], spec["image_size"], spec["width"], spec["small_stem"])
    if spec.get("head"):
        from replearn.nn.generative import LatentEncoder

        net = LatentEncoder(net, spec["head"])
    return net


def load_encoder(path: str | Path, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild a backbone from ``encoder.pt`` (or a run folder holding one); returns (module, spec)."""
    payload = read_weights_file(path, "encoder.pt", ENCODER_FORMAT, "encoder", "replearn pretrain", map_location)
    spec = payload["spec"]
    net = backbone_from_spec(spec)
    net.load_state_dict(payload["state_dict"])
    net.eval()
    return net, spec
