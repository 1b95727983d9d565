"""Parts of the generative methods: a latent-mean encoder (backbone + head), a deconvolutional
decoder, a hierarchical (ladder) head, and a call of a module with its parameters held fixed."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from replearn.nn.heads import mlp


def decoder_plan(size: int) -> tuple[int, int]:
    """(upsampling stages, side of the first feature map) of a decoder to ``size`` px: stages
    double the side from about 4-7 px (28 -> 7, 14, 28; 32 -> 4, 8, 16, 32; 64 -> 4 ... 64);
    the last map is cropped to ``size`` where it overshoots."""
    stages = max(1, min(4, int(math.floor(math.log2(max(size, 8) / 4)))))
    return stages, math.ceil(size / 2**stages)


class Decoder(nn.Module):
    """z (N, latent) -> per-pixel outputs (N, channels * out_per_pixel, size, size): FC 256 - FC
    (2w x s x s), then 4x4 stride-2 transposed convolutions (2w, w, ... channels), ReLU between;
    the mirror of the ``flatconv`` encoder (Burgess et al.'s beta-VAE architecture, arXiv:1804.03599).
    ``norm``: BatchNorm after every layer but the last (a GAN generator, as DCGAN and InfoGAN)."""

    def __init__(self, latent: int, channels: int, size: int, width: int = 32, out_per_pixel: int = 1,
                 norm: bool = False):
        super().__init__()
        self.size, self.channels = size, channels
        stages, self.side = decoder_plan(size)
        chans = [2 * width] * max(1, stages - 1) + [width]  # (stages) input widths of the deconvolutions
        first = chans[0] * self.side**2

        def act(n: int, d1: bool = True) -> list[nn.Module]:
            return [*([(nn.BatchNorm1d if d1 else nn.BatchNorm2d)(n)] if norm else []), nn.ReLU(inplace=True)]

        self.fc = nn.Sequential(
            nn.Linear(latent, 256, bias=not norm), *act(256), nn.Linear(256, first, bias=not norm), *act(first)
        )
        layers: list[nn.Module] = []
        for i in range(stages):
            last = i + 1 == stages
            cout = channels * out_per_pixel if last else chans[i + 1]
            layers.append(nn.ConvTranspose2d(chans[i], cout, 4, 2, 1, bias=last or not norm))
            if not last:
                layers += act(cout, d1=False)
        self.deconv = nn.Sequential(*layers)
        self.first = chans[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(len(z), self.first, self.side, self.side)
        x = self.deconv(h)
        off = (x.shape[-1] - self.size) // 2
        return x[..., off : off + self.size, off : off + self.size] if off or x.shape[-1] != self.size else x


class LadderMeans(nn.Module):
    """The posterior means of a hierarchical VAE's levels from backbone features: level 1 reads the
    features h1, level l > 1 reads h_l = MLP(h_{l-1}) (VLAE's bottom-up path, arXiv:1702.08396);
    ``forward`` returns [mean_1, ..., mean_L] concatenated, ``levels`` the per-level (h, mean)."""

    def __init__(self, in_dim: int, latents: list[int], hidden: int = 256):
        super().__init__()
        dims = [in_dim] + [hidden] * (len(latents) - 1)
        self.up = nn.ModuleList([nn.Sequential(nn.Linear(dims[i], hidden), nn.ReLU(inplace=True)) for i in range(len(latents) - 1)])
        self.means = nn.ModuleList([nn.Linear(dims[i], k) for i, k in enumerate(latents)])
        self.latents = list(latents)

    def levels(self, h: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for i, mean in enumerate(self.means):
            if i:
                h = self.up[i - 1](h)
            out.append((h, mean(h)))
        return out

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([m for _, m in self.levels(h)], 1)


def build_head(spec: dict) -> nn.Module:
    """A latent head from its plain-type spec: {"kind": "mlp", "dims": [D, ..., K]} (Linear layers,
    BN + ReLU between) or {"kind": "ladder", "in_dim": D, "latents": [k1, ...], "hidden": H}."""
    kind = spec.get("kind")
    if kind == "mlp":
        return mlp(spec["dims"])
    if kind == "ladder":
        return LadderMeans(spec["in_dim"], spec["latents"], spec.get("hidden", 256))
    raise ValueError(f"unknown latent head kind {kind!r}")


class LatentEncoder(nn.Module):
    """The exported encoder of a generative method: ``body`` (any backbone) then a head giving the
    latent code's mean, which is the embedding; ``head_spec`` (plain types) rebuilds it from encoder.pt."""

    def __init__(self, body: nn.Module, head_spec: dict):
        super().__init__()
        self.body, self.head_spec = body, dict(head_spec)
        self.head = build_head(self.head_spec)
        kind = self.head_spec["kind"]
        self.out_dim = int(self.head_spec["dims"][-1] if kind == "mlp" else sum(self.head_spec["latents"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def frozen_call(module: nn.Module, *args):
    """``module(*args)`` with its parameters held fixed (detached) and its running statistics
    (BatchNorm's) left as they were: gradients reach the inputs only (a generator through the
    discriminator it must not train; the FactorVAE encoder through its TC critic)."""
    params = {n: p.detach() for n, p in module.named_parameters()}
    return functional_call(module, (params, _buffer_copies(module)), args)


def stats_free_call(module: nn.Module, *args):
    """``module(*args)`` training its parameters as usual but leaving its running statistics as they
    were, so a discriminator's BatchNorm keeps the statistics of real images, not generated ones."""
    return functional_call(module, (dict(module.named_parameters()), _buffer_copies(module)), args)


def _buffer_copies(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in module.named_buffers()}
